"""``mnist-infer``: label every digit image in files, folders, globs or stdin paths.

Parses options, builds the library objects, streams results to stdout (or -o),
and puts the summary and progress on stderr. Exit status: 0 every input
succeeded, 1 any input failed (the others are still processed), 2 usage error
(bad option, missing/corrupt model, unavailable provider).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click

# Only light modules here (no numpy, pillow or ONNX Runtime): main() starts the
# worker processes first, and they load those while this process does too
# (where workers are spawned, they also re-import this module).
from mnist_edge.runtime import __version__
from mnist_edge.runtime.atomic import atomic_path
from mnist_edge.runtime.output import FORMATS
from mnist_edge.runtime.pipeline import PipelineConfig

if TYPE_CHECKING:
    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.images import ImageOptions

# images.INVERT_MODES, spelt out so that numpy and pillow load after the workers
# start (tests check the two agree)
INVERT_MODES = ("auto", "always", "never")
DEFAULT_MODEL = Path("artifacts/mnist.onnx")
DEFAULT_INT8_MODEL = Path("artifacts/mnist.int8.onnx")


def _model_path(model: Path | None, int8: bool) -> Path:
    if model is None:
        return DEFAULT_INT8_MODEL if int8 else DEFAULT_MODEL
    if int8:  # the quantized file beside the given one: mnist.onnx -> mnist.int8.onnx
        return model.with_name(model.name.removesuffix(".onnx") + ".int8.onnx")
    return model


@contextlib.contextmanager
def _open_output(output: Path | None):
    if output is None:
        yield sys.stdout
        return
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as stream:
        yield stream


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--model",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"ONNX model file.  [default: {DEFAULT_MODEL}]",
)
@click.option(
    "--int8",
    is_flag=True,
    help=f"Use the quantized model ({DEFAULT_INT8_MODEL}, or NAME.int8.onnx beside --model).",
)
@click.option(
    "--provider",
    default="auto",
    show_default=True,
    help="Execution provider: auto, cpu, cuda, tensorrt, ... (auto picks the best available).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1 << 16),
    default=PipelineConfig.batch_size,
    show_default=True,
    help="Images per inference call.",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 512),
    default=None,
    help="Worker processes that decode images (and on CPU run the model, one thread each); 0: all in this process.  [default: usable cores, started past "
    f"{PipelineConfig.inline_limit} files]",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=None,
    help="ONNX Runtime CPU threads in the main process.  [default: usable cores]",
)
@click.option(
    "--invert",
    type=click.Choice(INVERT_MODES),
    default="auto",
    show_default=True,
    help="Invert pictures to white-on-black: auto (when the background is light), always, never.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--top-k",
    type=click.IntRange(1, None),
    default=None,
    help="Also report the K most probable labels.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write results to FILE (atomically) instead of stdout.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress line on stderr.  [default: when stderr is a terminal]",
)
@click.option("-q", "--quiet", is_flag=True, help="No summary line on stderr.")
@click.version_option(__version__, prog_name="mnist-infer")
def main(
    inputs: tuple[str, ...],
    model: Path | None,
    int8: bool,
    provider: str,
    batch_size: int,
    workers: int | None,
    threads: int | None,
    invert: str,
    fmt: str,
    top_k: int | None,
    output: Path | None,
    progress: bool | None,
    quiet: bool,
) -> None:
    """Label each digit image in INPUTS: files, folders (recursive), globs, or - for paths on stdin.

    Pictures of any size and kind (PNG, JPEG, BMP, GIF, TIFF, WebP; photos,
    scans, drawings) are made MNIST-style first; .npy and IDX files give one
    result per image in them.
    """
    from mnist_edge.runtime.output import Progress, ResultWriter, RunStats
    from mnist_edge.runtime.pipeline import Pipeline
    from mnist_edge.runtime.workers import DecoderError

    err = sys.stderr
    path = _model_path(model, int8)
    config = PipelineConfig(batch_size=batch_size, workers=workers, top_k=top_k or 0)
    stdin = sys.stdin if "-" in inputs else None
    # Worker processes (which load ONNX Runtime themselves) start now, while this one loads it.
    prestart = path.is_file() and provider.strip().lower() in ("auto", "cpu")
    with Pipeline(inputs, path, config, stdin, prestart=prestart) as pipeline:
        classifier, options = _load_model(path, model, int8, provider, threads, invert)
        if top_k is not None and top_k > len(classifier.classes):
            raise click.BadParameter(
                f"{top_k} is more than the model's {len(classifier.classes)} classes",
                param_hint="--top-k",
            )
        stats = RunStats()
        bar = Progress(err) if (progress if progress is not None else err.isatty()) else None
        try:
            with _open_output(output) as stream:
                writer = ResultWriter(stream, fmt, top_k or 0)
                for result in pipeline.run(classifier, options):
                    writer.write(result)
                    stats.add(result)
                    if bar is not None:
                        bar.update(stats)
        except DecoderError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:  # `mnist-infer ... | head`: the reader left; stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit flush
            sys.exit(1 if stats.failures else 0)
        finally:
            if bar is not None:
                bar.close()
    if not quiet:
        from mnist_edge.runtime.session import short_name

        chosen = short_name(classifier.provider)
        chosen += " (auto)" if provider.strip().lower() == "auto" else ""
        click.echo(stats.summary(chosen, f"{path} ({classifier.metadata.precision})"), err=True)
    if stats.failures:
        sys.exit(1)


def _load_model(
    path: Path, model: Path | None, int8: bool, provider: str, threads: int | None, invert: str
) -> tuple[Classifier, ImageOptions]:
    """The classifier and image options, or click errors naming the bad option."""
    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.images import ImageOptions
    from mnist_edge.runtime.session import ModelError, ProviderError, SessionConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            classifier = Classifier(path, config=SessionConfig(provider=provider, threads=threads))
        except ProviderError as exc:
            raise click.BadParameter(str(exc), param_hint="--provider") from None
        except ModelError as exc:
            raise click.BadParameter(
                str(exc), param_hint="--int8" if int8 and model is None else "--model"
            ) from None
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    try:
        options = ImageOptions(preprocessing=classifier.metadata.preprocessing, invert=invert)
    except ValueError as exc:
        raise click.BadParameter(
            f"{path}: {exc}; upgrade mnist-edge", param_hint="--model"
        ) from None
    return classifier, options
