"""Train the reference convnet: the Keras recipe, resumable, with its outputs.

``train(TrainConfig())`` is the whole stage: check the options, load the data
(or take a given :class:`~mnist_edge.train.data.Dataset`), fit with Adam on
cross-entropy over logits, hold out the *last* ``val_split`` of the training
set (as Keras's ``validation_split``), write a resume point after every epoch,
then ``model.pt``, ``metrics.json`` and the report.

Speed: the whole dataset lives on the device as two tensors and each batch is an
index slice of them (no per-item DataLoader); per-step loss/accuracy are summed
on the device, so nothing forces a host sync except the progress bar's few
redraws a second.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnist_edge.runtime.layout import Artifacts
from mnist_edge.train.checkpoint import build_payload, save_checkpoint
from mnist_edge.train.config import TrainConfig, TrainError, check_output_dir, resolve_device
from mnist_edge.train.fit import EpochStats, Evaluation, evaluate, train_epoch
from mnist_edge.train.mirror import Log, quiet
from mnist_edge.train.model import ConvNet, count_parameters, summary
from mnist_edge.train.progress import ProgressBar
from mnist_edge.train.resume import load_resume_point, restore, resume_state


@dataclass
class TrainResult:
    """What a finished run produced."""

    checkpoint: Path
    metrics: Path
    report: Path
    history: list[EpochStats]
    test_loss: float
    test_accuracy: float
    seconds_per_epoch: float
    device: str
    parameters: int
    confusion: list[list[int]] = field(repr=False)


def split_validation(n: int, val_split: float) -> int:
    """Index where validation starts: Keras keeps ``floor(n * (1 - val_split))`` for training."""
    return math.floor(n * (1.0 - val_split))


@dataclass(frozen=True)
class Splits:
    """The dataset cut into train/validation/test tensors on the training device."""

    train_images: torch.Tensor  # (N_train, 1, 28, 28)
    train_labels: torch.Tensor  # (N_train,)
    val_images: torch.Tensor  # (N_val, 1, 28, 28), N_val may be 0
    val_labels: torch.Tensor  # (N_val,)
    test_images: torch.Tensor  # (N_test, 1, 28, 28)
    test_labels: torch.Tensor  # (N_test,)

    def sizes(self) -> dict[str, int]:
        return {
            "train_size": len(self.train_labels),
            "val_size": len(self.val_labels),
            "test_size": len(self.test_labels),
        }


def make_splits(dataset: Any, config: TrainConfig, device: torch.device) -> Splits:
    """Apply the limits, hold out the last ``val_split`` of train, move everything to ``device``.

    Raises:
        TrainError: the limits leave no training example.
    """
    train_x, train_y = (
        dataset.train_images[: config.train_limit],
        dataset.train_labels[: config.train_limit],
    )
    test_x, test_y = (
        dataset.test_images[: config.test_limit],
        dataset.test_labels[: config.test_limit],
    )
    cut = split_validation(len(train_y), config.val_split)
    if cut < 1:
        raise TrainError(
            f"val_split {config.val_split} leaves no training images out of {len(train_y)}",
            "val_split",
        )
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format

    def put(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device, non_blocking=True)
        return t.contiguous(memory_format=fmt) if t.dim() == 4 else t.contiguous()

    return Splits(
        put(train_x[:cut]),
        put(train_y[:cut]),
        put(train_x[cut:]),
        put(train_y[cut:]),
        put(test_x),
        put(test_y),
    )


def keep_freed_memory() -> bool:
    """Stop glibc handing freed activation buffers back to the OS after every step.

    A CPU training step frees and reallocates tens of MB of activations. With
    glibc's default (dynamic) thresholds the freed top of the heap is trimmed
    and the next step page-faults it back in (zero-filling max-pool's gradient
    then dominates it). Raising the mmap and trim thresholds keeps that memory
    in the process. Process-wide and harmless elsewhere (it only delays
    returning up to 256 MiB of free heap); a no-op off glibc.

    Returns:
        Whether the thresholds were set.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(mallopt(m_mmap_threshold, 64 << 20) and mallopt(m_trim_threshold, 256 << 20))


def _load_dataset(config: TrainConfig, log: Log) -> Any:
    from mnist_edge.train.data import DataConfig, load_dataset

    return load_dataset(DataConfig(dataset=config.dataset, data_dir=Path(config.data_dir)), log)


def train(
    config: TrainConfig, *, dataset: Any | None = None, log: Log | None = None
) -> TrainResult:
    """Run the recipe in ``config`` and write its outputs into ``config.out_dir``.

    Every option is checked (device, output folder, resume point) before the
    data is loaded. After each epoch ``last.pt`` is rewritten atomically, so an
    interrupted run loses at most the epoch in progress; ``resume=True``
    continues from it and, on CPU, ends with the same weights as an
    uninterrupted run.

    Args:
        config: the run.
        dataset: an already-loaded :class:`~mnist_edge.train.data.Dataset`
            (tests); loaded from ``config.data_dir`` when ``None``.
        log: receives the summary table, one line per epoch and the results.

    Returns:
        Paths of the outputs and the key figures.
    Raises:
        TrainError: a bad option (see :meth:`TrainConfig.validate`).
        CheckpointError: ``resume`` with a corrupt resume point.
        DataError: the dataset cannot be prepared.
    """
    log = log or quiet
    device = resolve_device(config.device)
    out_dir = Path(config.out_dir)
    check_output_dir(out_dir)
    resume_raw = load_resume_point(config) if config.resume else None
    if dataset is None:
        dataset = _load_dataset(config, log)
    splits = make_splits(dataset, config, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_memory()

    torch.manual_seed(config.seed)
    model = ConvNet()
    log(summary(model))
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device=device).to(memory_format=fmt)
    # Fused Adam is one kernel per step on CUDA; on CPU the default (foreach) is as fast.
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, fused=device.type == "cuda" or None
    )
    generator = torch.Generator().manual_seed(config.seed)
    history: list[EpochStats] = []
    if resume_raw is not None:
        history = [
            EpochStats(**h) for h in restore(resume_raw, model, optimizer, generator, device)
        ]
    step_fn = torch.compile(model) if config.compile else model
    sizes = splits.sizes()
    data_info = {"name": dataset.name, "classes": list(dataset.classes), **sizes}
    resuming = f"; resuming after epoch {len(history)}" if history else ""
    log(
        f"Training on {device} ({sizes['train_size']} train, {sizes['val_size']} validation, "
        f"{sizes['test_size']} test images){resuming}"
    )

    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        steps = math.ceil(sizes["train_size"] / config.batch_size)
        bar = ProgressBar(steps, f"Epoch {epoch}/{config.epochs}") if config.progress else None
        loss, acc = train_epoch(
            model,
            step_fn,
            optimizer,
            splits.train_images,
            splits.train_labels,
            batch_size=config.batch_size,
            generator=generator,
            amp=config.amp,
            bar=bar,
        )
        val_loss = val_acc = None
        if sizes["val_size"]:
            val = evaluate(
                model, splits.val_images, splits.val_labels, config.eval_batch_size, amp=config.amp
            )
            val_loss, val_acc = val.loss, val.accuracy
        history.append(EpochStats(epoch, loss, acc, val_loss, val_acc, time.perf_counter() - start))
        log(history[-1].line(config.epochs))
        resume = resume_state(optimizer, generator, device, [asdict(h) for h in history])
        payload = build_payload(
            model,
            recipe=config.recipe(),
            dataset=data_info,
            device=str(device),
            metrics={"history": resume["history"]},
            complete=False,
            epoch=epoch,
            resume=resume,
        )
        save_checkpoint(Artifacts(out_dir).resume, payload)

    test = evaluate(
        model, splits.test_images, splits.test_labels, config.eval_batch_size, amp=config.amp
    )
    log(f"Test loss: {test.loss:.4f} - test accuracy: {test.accuracy:.4f}")
    result = _finish(model, config, history, test, splits.test_labels, data_info, device)
    log(f"Wrote {result.checkpoint}, {result.metrics}, {result.report}")
    return result


def confusion_matrix(
    labels: torch.Tensor, predictions: torch.Tensor, classes: int
) -> list[list[int]]:
    """``matrix[true][predicted]`` counts for (N,) label and prediction tensors."""
    pairs = labels * classes + predictions  # (N,)
    return torch.bincount(pairs, minlength=classes * classes).reshape(classes, classes).tolist()


def _finish(
    model: ConvNet,
    config: TrainConfig,
    history: list[EpochStats],
    test: Evaluation,
    test_labels: torch.Tensor,
    data_info: dict[str, Any],
    device: torch.device,
) -> TrainResult:
    """Write model.pt, metrics.json and the report for a finished run."""
    from mnist_edge.train import report

    confusion = confusion_matrix(test_labels, test.predictions, len(data_info["classes"]))
    seconds = [h.seconds for h in history]
    metrics = {
        "dataset": data_info,
        "device": str(device),
        "parameters": count_parameters(model),
        "recipe": config.recipe(),
        "history": [asdict(h) for h in history],
        "test_loss": test.loss,
        "test_accuracy": test.accuracy,
        "seconds_per_epoch": sum(seconds) / len(seconds),
        "seconds_total": sum(seconds),
        "confusion_matrix": confusion,
    }
    model = model.to(memory_format=torch.contiguous_format)
    payload = build_payload(
        model,
        recipe=config.recipe(),
        dataset=data_info,
        metrics=metrics,
        device=str(device),
        complete=True,
        epoch=len(history),
    )
    checkpoint = save_checkpoint(Artifacts(Path(config.out_dir)).checkpoint, payload)
    paths = report.write_outputs(Path(config.out_dir), metrics)
    return TrainResult(
        checkpoint=checkpoint,
        metrics=paths.metrics,
        report=paths.report,
        history=history,
        test_loss=test.loss,
        test_accuracy=test.accuracy,
        seconds_per_epoch=sum(seconds) / len(seconds),
        device=str(device),
        parameters=count_parameters(model),
        confusion=confusion,
    )


__all__ = [
    "Splits",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "confusion_matrix",
    "load_resume_point",
    "make_splits",
    "resolve_device",
    "train",
]
