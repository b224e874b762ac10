"""``mnist-infer --engine ray``: the click options and the handler the CLI calls.

Importing this module costs only click (Ray loads inside :func:`run_ray`). The
CLI adds the options with :func:`ray_options` and, for ``--engine ray``, hands
its parsed values to :func:`run_ray` as a :class:`RayRun`.

Exit status as for the local engine: 0 every input succeeded, 1 any input
failed (the others are still written) or the job failed, 2 usage error (bad
option, missing/corrupt model, unreachable cluster).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, cast

import click

from mnist_edge.runtime.errors import first_line
from mnist_edge.runtime.output import FORMATS, open_text_output

if TYPE_CHECKING:
    import pyarrow as pa
    from ray.data import Dataset

    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.output import RunStats
    from mnist_edge.runtime.scale.config import RayConfig

ENGINES = ("local", "ray")
PARQUET = "parquet"
RAY_FORMATS = (PARQUET, *FORMATS)
"""Formats of ``--engine ray``: a Parquet folder (the default), or the local engine's."""
DEFAULT_CPUS_PER_ACTOR = 0.5  # RayConfig.cpus_per_actor (spelt out: no numpy at CLI import)

F = TypeVar("F", bound=Callable[..., Any])


def ray_options(f: F) -> F:
    """Add ``--engine``, ``--ray-address``, ``--actors``, ``--cpus-per-actor`` and
    ``--gpus-per-actor`` to a click command."""
    options = [
        click.option(
            "--engine",
            type=click.Choice(ENGINES),
            default="local",
            show_default=True,
            help="local: processes on this machine; ray: a Ray cluster (Ray Data, "
            "writes a Parquet folder by default; needs the `scale` extra).",
        ),
        click.option(
            "--ray-address",
            default=None,
            metavar="ADDRESS",
            help="(--engine ray) the cluster: auto (one started with `ray start --head`), "
            "HOST:6379 or ray://HOST:10001.  [default: $RAY_ADDRESS, else a Ray started "
            "on this machine for the run]",
        ),
        click.option(
            "--actors",
            type=click.IntRange(1, None),
            default=None,
            help="(--engine ray) model actors.  [default: autoscale with the cluster]",
        ),
        click.option(
            "--cpus-per-actor",
            type=click.FloatRange(0, None, min_open=True),
            default=DEFAULT_CPUS_PER_ACTOR,
            show_default=True,
            help="(--engine ray) CPUs each model actor reserves; fractions leave CPUs "
            "for reading and decoding.",
        ),
        click.option(
            "--gpus-per-actor",
            type=click.FloatRange(0, None),
            default=None,
            help="(--engine ray) GPUs each model actor reserves.  [default: 1 with "
            "--provider cuda, else 0]",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@dataclass(frozen=True)
class RayRun:
    """What ``mnist-infer --engine ray`` was asked to do (the CLI's parsed options).

    Attributes:
        inputs: files, folders, globs, ``-`` or URIs.
        model: the ONNX file (``--model``/``--int8`` already resolved).
        model_hint: the option to blame for a bad model (``--model`` or ``--int8``).
        output: ``-o``: a folder or URI for Parquet, a file for the others; ``None`` = stdout.
        fmt: one of :data:`RAY_FORMATS`; ``None`` = Parquet.
        provider: ``auto`` (cuda with ``gpus_per_actor``, else cpu), ``cpu``, ``cuda``, ...
        batch_size, invert, top_k: as for the local engine.
        address: ``--ray-address``.
        actors, cpus_per_actor, gpus_per_actor: the actor pool.
        progress: Ray Data's progress bars on stderr (``None`` = when it is a terminal).
        quiet: no summary line.
    """

    inputs: tuple[str, ...]
    model: Path
    model_hint: str = "--model"
    output: str | None = None
    fmt: str | None = None
    provider: str = "auto"
    batch_size: int = 256
    invert: str = "auto"
    top_k: int = 0
    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR
    gpus_per_actor: float | None = None
    progress: bool | None = None
    quiet: bool = False


def run_ray(run: RayRun, stdin: TextIO | None = None) -> int:
    """Run ``mnist-infer --engine ray``; returns the exit status (0 or 1).

    Raises:
        click.UsageError, click.BadParameter: bad options, model or cluster (exit 2).
        click.ClickException: the job failed (exit 1).
    """
    fmt = run.fmt or PARQUET
    if fmt not in RAY_FORMATS:
        raise click.BadParameter(f"choose one of {', '.join(RAY_FORMATS)}", param_hint="--format")
    if fmt == PARQUET and run.output is None:
        raise click.UsageError(
            "--engine ray writes a Parquet folder: give -o FOLDER (or --format jsonl|csv|table "
            "for standard output)"
        )
    if fmt == PARQUET and run.output is not None and "://" not in run.output:
        _check_parquet_target(Path(run.output))
    if fmt != PARQUET and run.output is not None and "://" in run.output:
        raise click.BadParameter(
            f"{run.output}: --format {fmt} writes a local file; use --format parquet for URIs",
            param_hint="-o",
        )
    from mnist_edge.runtime.output import RunStats
    from mnist_edge.runtime.scale import engine as ray_engine

    config = _config(run)
    classifier = _load(run)
    if run.top_k > len(classifier.classes):
        raise click.BadParameter(
            f"{run.top_k} is more than the model's {len(classifier.classes)} classes",
            param_hint="--top-k",
        )
    with _ray_session(run) as ray:
        stats = RunStats()
        try:
            results = ray_engine.classify_dataset(
                run.inputs, run.model, config, stdin=stdin, classifier=classifier
            )
            if fmt == PARQUET and run.output is not None:  # no output was refused above
                _write_parquet(results, run.output, config.rows_per_file, stats)
            else:
                _write_rows(results, run.output, fmt, run.top_k, stats)
        except ray_engine.RayEngineError as exc:
            hint = "--gpus-per-actor" if "GPU" in str(exc) else "--cpus-per-actor"
            raise click.BadParameter(str(exc), param_hint=hint) from None
        except ray.exceptions.RayError as exc:
            raise click.ClickException(f"the Ray job failed: {_reason(exc)}") from None
    if not run.quiet:
        provider = f"{config.provider} (ray, {_pool(config)})"
        model = f"{run.model} ({classifier.metadata.precision})"
        click.echo(stats.summary(provider, model), err=True)
    return 1 if stats.failures else 0


def _config(run: RayRun) -> RayConfig:
    from mnist_edge.runtime.scale.config import RayConfig

    provider = run.provider.strip().lower()
    if provider == "auto":
        provider = "cuda" if run.gpus_per_actor else "cpu"
    try:
        return RayConfig(
            provider=provider,
            batch_size=run.batch_size,
            actors=run.actors,
            cpus_per_actor=run.cpus_per_actor,
            gpus_per_actor=run.gpus_per_actor,
            invert=run.invert,
            top_k=run.top_k,
        )
    except ValueError as exc:
        hint = "--gpus-per-actor" if "gpus_per_actor" in str(exc) else "--provider"
        raise click.BadParameter(str(exc), param_hint=hint) from None


def _pool(config: RayConfig) -> str:
    actors = f"{config.actors} actors" if config.actors else "autoscaled actors"
    return f"{actors}, {config.cpus_per_actor:g} CPU" + (
        f" + {config.gpus:g} GPU" if config.gpus else ""
    )


def _load(run: RayRun) -> Classifier:
    """Open the model here first: a bad file is a usage error before any cluster work."""
    from mnist_edge.runtime.scale.engine import load_model
    from mnist_edge.runtime.session import ModelError, ProviderError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            classifier = load_model(run.model)
        except (ModelError, ProviderError) as exc:
            raise click.BadParameter(str(exc), param_hint=run.model_hint) from None
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    return classifier


@contextlib.contextmanager
def _ray_session(run: RayRun) -> Iterator[Any]:
    """Connect to (or start) Ray for this run; a Ray the caller started is used and left running."""
    from mnist_edge.runtime.scale.config import RayEngineError, import_ray

    try:
        ray = import_ray()
    except RayEngineError as exc:
        raise click.UsageError(str(exc)) from None
    show = run.progress if run.progress is not None else sys.stderr.isatty()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = show
    context.print_on_execution_start = show
    if not show:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    started = False
    if not ray.is_initialized():
        try:
            ray.init(
                address=run.address,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=show,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = run.address or os.environ.get("RAY_ADDRESS") or "a local Ray"
            raise click.BadParameter(
                f"cannot connect to {where}: {first_line(exc)}", param_hint="--ray-address"
            ) from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _reason(exc: BaseException) -> str:
    """The last line of a Ray error that says what went wrong (Ray wraps the cause in tracebacks)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("File ", "Traceback", "^", "~"))]
    return (useful or lines or [type(exc).__name__])[-1][:500]


def _check_parquet_target(target: Path) -> None:
    """A Parquet run may create ``target``, or replace a folder of an earlier run (only Parquet files)."""
    if not target.exists():
        if not target.parent.is_dir():
            raise click.BadParameter(f"{target.parent} is not a folder", param_hint="-o")
        return
    if not target.is_dir():
        raise click.BadParameter(
            f"{target} exists and is not a folder; --engine ray writes a Parquet folder there",
            param_hint="-o",
        )
    others = [p.name for p in target.iterdir() if p.suffix != ".parquet"]
    if others:
        raise click.BadParameter(
            f"{target} holds files other than Parquet ({others[0]}, ...); "
            "choose a new or empty folder",
            param_hint="-o",
        )


def _write_parquet(results: Dataset, output: str, rows_per_file: int, stats: RunStats) -> None:
    """Write the results as a Parquet folder (swapped in whole when local), then count them."""
    if "://" in output:
        results.write_parquet(output, min_rows_per_file=rows_per_file)
        _count(output, stats)
        return
    target = Path(output)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        results.write_parquet(str(tmp), min_rows_per_file=rows_per_file)
        _count(str(tmp), stats)
        old = None
        if target.exists():  # an earlier run's folder (checked): swap, then delete it
            old = tmp.with_name(tmp.name + ".old")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _count(folder: str, stats: RunStats) -> None:
    """Rows and error rows of a written Parquet folder (reads only the ``error`` column)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    data = pads.dataset(folder, format="parquet")
    stats.images = data.count_rows()
    stats.failures = data.count_rows(filter=pc.field("error").is_valid())


def _write_rows(
    results: Dataset, output: str | None, fmt: str, top_k: int, stats: RunStats
) -> None:
    """Stream result rows through this process into a jsonl/csv/table writer (never all at once)."""
    from mnist_edge.runtime.messages import Result
    from mnist_edge.runtime.output import ResultWriter

    with open_text_output(output) as stream:
        writer = ResultWriter(stream, fmt, top_k)
        for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in cast("pa.Table", batch).to_pylist():
                alts = tuple((a["label"], a["confidence"]) for a in row["top_k"] or ())
                result = Result(
                    row["path"],
                    error=row["error"],
                    label=row["label"],
                    confidence=row["confidence"],
                    top_k=alts,
                )
                writer.write(result)
                stats.add(result)
