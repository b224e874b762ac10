"""``mnist-train``: parse options, call :func:`mnist_edge.train.loop.train`, print.

torch loads only after the options parse, so ``--help`` and option errors are quick.
Every failure is one ``Error: ...`` line on stderr and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mnist_edge.runtime.command import command
from mnist_edge.runtime.frontend import AliasedOption
from mnist_edge.runtime.layout import Artifacts
from mnist_edge.train.config import DATASETS, TrainConfig

_D = TrainConfig()  # the reference recipe: the options' defaults come from the config


def _err(message: str) -> None:
    click.echo(message, err=True)


@command("mnist-train", extras=("train",))
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    default=_D.dataset,
    show_default=True,
    help="The dataset to train on.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=_D.data_dir,
    show_default=True,
    help="Where the dataset is (or is prepared).",
)
@click.option(
    "--out-dir",
    cls=AliasedOption,
    aliases=("--out",),
    type=click.Path(path_type=Path, file_okay=False),
    default=_D.out_dir,
    show_default=True,
    help="Output folder: model.pt, last.pt, metrics.json, report.",
)
@click.option(
    "--epochs",
    type=int,
    default=_D.epochs,
    show_default=True,
    help="Epochs (with --resume: the new total).",
)
@click.option(
    "--batch-size", type=int, default=_D.batch_size, show_default=True, help="Training batch size."
)
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="Adam learning rate.")
@click.option(
    "--val-split",
    type=float,
    default=_D.val_split,
    show_default=True,
    help="Fraction held out for validation, taken from the end of the training set.",
)
@click.option(
    "--seed",
    type=int,
    default=_D.seed,
    show_default=True,
    help="Seeds init, dropout and shuffling.",
)
@click.option(
    "--device",
    default=_D.device,
    show_default=True,
    help="auto (CUDA when present), cpu, cuda or cuda:N.",
)
@click.option(
    "--resume", is_flag=True, help="Continue the interrupted run in --out-dir (its last.pt)."
)
@click.option("--train-limit", type=int, default=None, help="Use only the first N training images.")
@click.option("--test-limit", type=int, default=None, help="Use only the first N test images.")
@click.option(
    "--channels-last/--no-channels-last",
    default=_D.channels_last,
    show_default=True,
    help="NHWC memory format (faster on CPU).",
)
@click.option("--amp", is_flag=True, help="bfloat16 autocast (CUDA, or CPUs with AVX512-BF16/AMX).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model for training.")
@click.option(
    "--prepare-only", is_flag=True, help="Only prepare the dataset in --data-dir, then exit."
)
@click.option("-q", "--quiet", is_flag=True, help="No summary, progress bar or per-epoch lines.")
def main(
    dataset: str,
    data_dir: Path,
    out_dir: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    val_split: float,
    seed: int,
    device: str,
    resume: bool,
    train_limit: int | None,
    test_limit: int | None,
    channels_last: bool,
    amp: bool,
    compile_: bool,
    prepare_only: bool,
    quiet: bool,
) -> None:
    """Train the reference MNIST convnet (Keras "Simple MNIST convnet" recipe).

    Writes OUT_DIR/model.pt (weights + recipe), OUT_DIR/metrics.json and a report
    (report.md, training.png, confusion.png). An interrupted run resumes with --resume.
    """
    # OpenMP threads sleep instead of spinning between parallel regions: spinning
    # threads starve whatever else shares the cores (docs/benchmarks.md). Set
    # before torch loads; an OMP_WAIT_POLICY the user exported wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from mnist_edge.train.data import DataConfig, prepare_dataset

    log = (lambda _: None) if quiet else _err
    try:
        if prepare_only:
            raw = prepare_dataset(DataConfig(dataset=dataset, data_dir=data_dir), log=_err)
            click.echo(f"{dataset} is ready in {raw}")
            return
        config = TrainConfig(
            dataset=dataset,
            data_dir=data_dir,
            out_dir=out_dir,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            val_split=val_split,
            seed=seed,
            device=device,
            train_limit=train_limit,
            test_limit=test_limit,
            resume=resume,
            progress=not quiet and sys.stderr.isatty(),
            channels_last=channels_last,
            amp=amp,
            compile=compile_,
        )
        from mnist_edge.train.loop import train

        result = train(config, log=log)
    except KeyboardInterrupt:
        if sys.stderr.isatty():
            _err("")  # leave the progress bar's line
        if prepare_only:
            _err(
                "Interrupted; nothing half-written was kept: run `mnist-train --prepare-only` again"
            )
        else:
            _err(
                f"Interrupted; {Artifacts(out_dir).resume} keeps the last completed epoch: "
                "run the same command with --resume (e.g. mnist-train --resume)"
            )
        sys.exit(130)
    click.echo(
        f"test_accuracy={result.test_accuracy:.4f} test_loss={result.test_loss:.4f} "
        f"seconds_per_epoch={result.seconds_per_epoch:.1f} device={result.device} "
        f"model={result.checkpoint} report={result.report}"
    )


if __name__ == "__main__":
    main()
