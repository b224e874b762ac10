"""``mnist-infer``: label every digit image in files, folders, globs or stdin paths.

Parses options, builds the library objects, streams results to stdout (or -o),
and puts the summary and progress on stderr. Exit status: 0 every input
succeeded, 1 any input failed (the others are still processed), 2 usage error
(bad option, missing/corrupt model, unavailable provider).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click

# Only light modules here (no numpy, pillow or ONNX Runtime): main() starts the
# worker processes first, and they load those while this process does too
# (where workers are spawned, they also re-import this module).
from mnist_edge.runtime.bundled import list_models_option
from mnist_edge.runtime.command import command
from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.frontend import (
    ModelChoice,
    invert_option,
    max_pixels_option,
    model_errors,
    model_options,
    threads_option,
    top_k_option,
)
from mnist_edge.runtime.output import (
    FORMATS,
    check_output_file,
    open_text_output,
    output_format,
    to_stdout,
)
from mnist_edge.runtime.stream import PipelineConfig

# Exit codes of a run stopped by a signal: 128 + the signal's number, as shells report it.
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: unwind (stop the workers, drop the temp output) and exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame: FrameType | None) -> None:
    for sig in SIGNAL_EXIT:  # one clean unwind: further signals wait until it is done
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` in this (main) thread."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in SIGNAL_EXIT}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


ENGINES = ("local", "ray")


def ray_command_line(args: list[str]) -> list[str] | None:
    """``args`` without ``--engine ray`` when they ask for the Ray engine, else ``None``.

    Options after ``--`` are inputs, not options; ``--engine local`` stays for this command.
    """
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        if arg == "--engine=ray":
            return args[:i] + args[i + 1 :]
        if arg == "--engine" and i + 1 < len(args) and args[i + 1] == "ray":
            return args[:i] + args[i + 2 :]
    return None


class InferCommand(click.Command):
    """``mnist-infer``; with ``--engine ray`` the Ray front end takes the whole command line.

    The Ray engine's options are declared and checked there
    (:mod:`mnist_edge.runtime.scale.cli`), which loads only for such a run.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        ray_args = ray_command_line(argv)
        if ray_args is None:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        from mnist_edge.runtime.scale.cli import PROG, command

        return command.main(ray_args, PROG, complete_var, standalone_mode, **extra)


@command("mnist-infer", extras=("cpu",), cls=InferCommand)
@click.argument("inputs", nargs=-1, required=True)
@model_options("Use")
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
@threads_option(" in the main process")
@invert_option()
@click.option(
    "--format",
    "fmt",
    type=click.Choice((*FORMATS, "parquet")),
    default=None,
    help="Output format (parquet: --engine ray only).  [default: from -o's extension "
    "(.csv, .jsonl, .txt), else table; parquet with --engine ray]",
)
@top_k_option()
@max_pixels_option()
@click.option(
    "-o",
    "--output",
    type=click.Path(allow_dash=True, path_type=str),
    default=None,
    help="Write results to FILE (atomically); - is stdout.  [default: stdout]",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress line on stderr.  [default: when stderr is a terminal]",
)
@click.option("-q", "--quiet", is_flag=True, help="No summary line on stderr.")
@click.option(
    "--list-models",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=list_models_option,
    help="Print the bundled model files (name, precision, input, size, path) and exit.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    expose_value=False,
    help="local: processes on this machine; ray: a Ray cluster (Ray Data, needs the `scale` "
    "extra; `mnist-infer --engine ray --help` lists its options).",
)
def main(
    inputs: tuple[str, ...],
    model: Path | None,
    int8: bool,
    provider: str,
    batch_size: int,
    workers: int | None,
    threads: int | None,
    invert: str,
    fmt: str | None,
    top_k: int | None,
    max_pixels: int,
    output: str | None,
    progress: bool | None,
    quiet: bool,
) -> None:
    """Label each digit image in INPUTS: files, folders (recursive), globs, or - for paths on stdin.

    Pictures of any kind (PNG, JPEG, BMP, GIF, TIFF, WebP; photos, scans,
    drawings) and size up to --max-pixels are made MNIST-style first; .npy and
    IDX files give one result per image in them. -o - writes to stdout. Ctrl-C or SIGTERM stops the run cleanly: no
    partial -o file, no worker processes left, exit 130 or 143.
    """
    choice = ModelChoice(model, int8)
    out = _output(fmt, output)
    fmt = output_format(fmt, output)  # _output has refused what it cannot write
    config = PipelineConfig(
        batch_size=batch_size,
        workers=workers,
        top_k=top_k or 0,
        invert=invert,
        max_pixels=max_pixels,
    )
    try:
        with _signals_interrupt():
            run = _run(inputs, choice, config, provider, threads, fmt, out, progress)
    except Interrupted as exc:
        kept = f"; {out} was not written" if out is not None else ""
        click.echo(f"mnist-infer: stopped by {exc}{kept}", err=True)
        sys.exit(SIGNAL_EXIT[signal.Signals(exc.signum)])
    if run.reader_left:  # `mnist-infer ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit flush
    elif not quiet:
        click.echo(run.summary, err=True)
    if run.failures:
        sys.exit(1)


def _output(fmt: str | None, output: str | None) -> Path | None:
    """The file ``-o`` names (``None``: stdout), once it is known that this engine can write it.

    Raises:
        click.BadParameter: naming ``--format`` or ``-o`` (exit 2), before any work.
    """
    try:
        chosen = output_format(fmt, output)
    except ConfigError as exc:
        raise click.BadParameter(
            str(exc), param_hint="-o" if exc.field == "output" else "--format"
        ) from None
    if chosen not in FORMATS:  # parquet: from --format, or implied by -o's name
        if fmt is None:
            raise click.BadParameter(
                f"{output} names a {chosen} file, which only --engine ray writes; add --engine "
                f"ray, or pass --format {'|'.join(FORMATS)}, or name the file .csv, .jsonl or .txt",
                param_hint="-o",
            )
        raise click.BadParameter(
            f"{chosen} is written by --engine ray only; add --engine ray, or pick one of "
            f"{', '.join(FORMATS)}",
            param_hint="--format",
        )
    if output is None or to_stdout(output):  # every local format streams (check_streams)
        return None
    check_output_file(output)  # OutputPathError: errors_to_exit names -o
    return Path(output)


@dataclass(frozen=True)
class _Run:
    """How a run ended: the summary line, failed inputs, and whether stdout's reader left early."""

    summary: str
    failures: int
    reader_left: bool = False


def _run(
    inputs: tuple[str, ...],
    choice: ModelChoice,
    config: PipelineConfig,
    provider: str,
    threads: int | None,
    fmt: str,
    output: Path | None,
    progress: bool | None,
) -> _Run:
    """Open the pipeline and stream the results out; library errors become click errors."""
    from mnist_edge.runtime.output import Progress, ResultWriter, RunStats
    from mnist_edge.runtime.session import SessionConfig, short_name
    from mnist_edge.runtime.stream import Pipeline
    from mnist_edge.runtime.workers import DecoderError

    err = sys.stderr
    stdin = sys.stdin if "-" in inputs else None
    path = choice.path
    session = SessionConfig(provider=provider, threads=threads)
    with model_errors(choice):
        try:
            pipeline = Pipeline(path, inputs, config, session, stdin)
        except DecoderError as exc:
            raise click.ClickException(f"{exc}; rerun with --workers 0") from None
    with pipeline:
        stats = RunStats()
        bar = Progress(err) if (progress if progress is not None else err.isatty()) else None
        try:
            with open_text_output(output) as stream:
                writer = ResultWriter(stream, fmt, config.top_k)
                for result in pipeline:
                    writer.write(result)
                    stats.add(result)
                    if bar is not None:
                        bar.update(stats)
            stats.stop()  # before the pipeline closes
        except DecoderError as exc:
            raise click.ClickException(f"{exc}; rerun with --workers 0") from None
        except BrokenPipeError:
            return _Run("", stats.failures, reader_left=True)
        finally:
            if bar is not None:
                bar.close()
    chosen = short_name(pipeline.classifier.provider)
    chosen += " (auto)" if session.auto else ""
    model = f"{path} ({pipeline.classifier.metadata.precision})"
    return _Run(stats.summary(chosen, model), stats.failures)
