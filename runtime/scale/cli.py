"""``mnist-infer --engine ray``: the Ray engine's own command (options, checks, output).

``mnist-infer`` hands its whole command line here when it holds ``--engine ray``
(see :mod:`mnist_edge.runtime.cli`), so the Ray settings are declared and
checked in this module only, and :class:`RayConfig` is built once from them.
Ray itself loads when the command runs, not when it is parsed.

Exit status as for the local engine: 0 every input succeeded, 1 any input
failed (the others are still written) or the job failed, 2 usage error (bad
option, missing/corrupt model, unreachable cluster).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from mnist_edge.runtime.errors import ConfigError, first_line
from mnist_edge.runtime.frontend import (
    ModelChoice,
    check_top_k,
    config_error,
    invert_option,
    model_errors,
    model_options,
    top_k_option,
)
from mnist_edge.runtime.output import FORMATS, open_text_output, output_format, plural
from mnist_edge.runtime.scale.config import (
    BLOCK_MAX,
    BLOCK_MIN,
    RayConfig,
    RayEngineError,
    import_ray,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from ray.data import Dataset

    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.output import RunStats

PARQUET = "parquet"
RAY_FORMATS = (PARQUET, *FORMATS)
"""Formats of ``--engine ray``: a Parquet folder (the default), or the local engine's."""
PROG = "mnist-infer --engine ray"
_CONFIG_FIELDS = {f.name for f in fields(RayConfig)}


@dataclass(frozen=True)
class Output:
    """Where and how the results go.

    Attributes:
        target: ``-o``: a folder or URI for Parquet, a file for the others; ``None`` = stdout.
        fmt: one of :data:`RAY_FORMATS`.
    """

    target: str | None
    fmt: str

    def check(self) -> None:
        """Refuse an output the run could not write, before any cluster work.

        Raises:
            click.UsageError, click.BadParameter: the target does not suit the format.
        """
        if self.fmt == PARQUET and self.target is None:
            raise click.UsageError(
                "--engine ray writes a Parquet folder: give -o FOLDER (or --format jsonl|csv|table "
                "for standard output)"
            )
        remote = self.target is not None and "://" in self.target
        if self.fmt == PARQUET and self.target is not None and not remote:
            _check_parquet_target(Path(self.target))
        if self.fmt != PARQUET and remote:
            raise click.BadParameter(
                f"{self.target}: --format {self.fmt} writes a local file; "
                "use --format parquet for URIs",
                param_hint="-o",
            )


def config_from(params: dict[str, Any]) -> RayConfig:
    """The :class:`RayConfig` of parsed options named as its fields (``None`` = its default).

    Raises:
        click.BadParameter: a value the config refuses, blamed on its option.
    """
    given = {k: v for k, v in params.items() if k in _CONFIG_FIELDS and v is not None}
    provider = str(given.get("provider", "auto")).strip().lower()
    if provider == "auto":  # a GPU share was asked for: CUDA, else the CPU
        given["provider"] = "cuda" if given.get("gpus_per_actor") else "cpu"
    try:
        config = RayConfig(**given)
    except ConfigError as exc:
        raise config_error(exc, default="--provider") from None
    return config


@click.command(PROG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True)
@model_options("Use")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1 << 20),
    default=None,
    help="Inputs per Ray task: each reads, decodes and classifies its block of files.  "
    f"[default: about 4 blocks per CPU of the cluster, {BLOCK_MIN} to {BLOCK_MAX} inputs each]",
)
@invert_option()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(RAY_FORMATS),
    default=None,
    help="Output format: a Parquet folder (written by the cluster), or rows through this "
    "process.  [default: from -o's extension (.csv, .jsonl, .txt), else parquet]",
)
@top_k_option()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=str),
    default=None,
    help="A folder or URI for Parquet (replaced whole), a file for the other formats.",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDRESS",
    help="The cluster: auto (one started with `ray start --head`), HOST:6379 or "
    "ray://HOST:10001.  [default: $RAY_ADDRESS, else a Ray started on this machine for the run]",
)
@click.option(
    "--actors",
    type=click.IntRange(1, None),
    default=None,
    help="Run the model in a pool of N Ray actors.  [default: Ray tasks on CPU (one CPU "
    "each), an autoscaled pool on GPUs]",
)
@click.option(
    "--cpus-per-actor",
    type=click.FloatRange(0, None, min_open=True),
    default=RayConfig.cpus_per_actor,
    show_default=True,
    help="CPUs each model actor reserves; fractions leave CPUs for the other tasks.",
)
@click.option(
    "--gpus-per-actor",
    type=click.FloatRange(0, None),
    default=None,
    help="GPUs each model actor reserves.  [default: 1 with --provider cuda, else 0]",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Ray Data's progress bars on stderr.  [default: when stderr is a terminal]",
)
@click.option("-q", "--quiet", is_flag=True, help="No summary line on stderr.")
@click.pass_context
def command(ctx: click.Context, **params: Any) -> None:
    """Label each digit image in INPUTS on a Ray cluster (Ray Data).

    INPUTS: files, folders (recursive), globs, - for paths on stdin, or URIs that
    pyarrow reads (s3://bucket/scans/, gs://..., file:///...). Every input gives
    one row (a label or an error); .npy and IDX files one per image in them.
    """
    from mnist_edge.runtime.scale.engine import load_model

    try:
        fmt = output_format(params["fmt"], params["output"], default=PARQUET)
    except ConfigError as exc:
        raise config_error(exc, default="--format") from None
    output = Output(params["output"], fmt)
    output.check()
    config = config_from(params)
    choice = ModelChoice(params["model"], params["int8"])
    with model_errors(choice):  # a bad model is a usage error before any cluster work
        classifier = load_model(choice.path)
    check_top_k(config.top_k, classifier.classes)
    stdin = sys.stdin if "-" in params["inputs"] else None
    stats, started = _run(params, config, classifier, output, stdin)
    if not params["quiet"]:
        provider = f"{config.provider} (ray, {_pool(config)}; {started})"
        model = f"{choice.path} ({classifier.metadata.precision})"
        click.echo(stats.summary(provider, model), err=True)
    ctx.exit(1 if stats.failures else 0)


def _run(
    params: dict[str, Any],
    config: RayConfig,
    classifier: Classifier,
    output: Output,
    stdin: Any,
) -> tuple[RunStats, str]:
    """Start (or join) Ray, run the job and write its rows; returns the counts and the start-up."""
    from mnist_edge.runtime.output import RunStats
    from mnist_edge.runtime.scale import engine as ray_engine

    begun = time.perf_counter()
    with _ray_session(params["ray_address"], params["progress"]) as ray:
        started = time.perf_counter() - begun
        stats = RunStats()
        try:
            job = ray_engine.plan_job(
                params["inputs"], classifier.path, config, stdin=stdin, classifier=classifier
            )
            warm = job.warm_up()
            stats.leave_out(warm.seconds)  # start-up, reported apart
            if output.fmt == PARQUET and output.target is not None:  # checked by Output.check
                _write_parquet(job.dataset, output.target, config.rows_per_file, stats)
            else:
                _write_rows(job.dataset, output.target, output.fmt, config.top_k, stats)
            stats.stop()  # before Ray shuts down
        except ConfigError as exc:
            raise config_error(exc, default="--actors") from None
        except ray.exceptions.RayError as exc:
            raise click.ClickException(f"the Ray job failed: {_reason(exc)}") from None
    startup = f"Ray started in {started:.1f} s"
    if warm.workers:
        nodes = f" on {warm.nodes} nodes" if warm.nodes > 1 else ""
        startup += f", {plural(warm.workers, 'worker')}{nodes} in {warm.seconds:.1f} s"
    elif config.uses_actors:
        startup += f", Ray Data in {warm.seconds:.1f} s"
    return stats, startup


def _pool(config: RayConfig) -> str:
    if not config.uses_actors:
        return "tasks, 1 CPU"
    actors = f"{config.actors} actors" if config.actors else "autoscaled actors"
    return f"{actors}, {config.cpus_per_actor:g} CPU" + (
        f" + {config.gpus:g} GPU" if config.gpus else ""
    )


@contextlib.contextmanager
def _ray_session(address: str | None, progress: bool | None) -> Iterator[Any]:
    """Connect to (or start) Ray for this run; a Ray the caller started is used and left running."""
    try:
        ray = import_ray()
    except RayEngineError as exc:
        raise click.UsageError(str(exc)) from None
    show = progress if progress is not None else sys.stderr.isatty()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = show
    context.print_on_execution_start = show
    if not show:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    started = False
    if not ray.is_initialized():
        _check_reachable(address or os.environ.get("RAY_ADDRESS"))
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=show,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
            raise click.BadParameter(
                f"cannot connect to {where}: {first_line(exc)}", param_hint="--ray-address"
            ) from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) where nothing listens, in seconds:
    Ray itself keeps retrying such an address for minutes.

    Raises:
        click.BadParameter: nothing accepts a connection there.
    """
    if not address or address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if "://" in hostport or not host or not port.isdigit():
        return  # not a form we can probe; Ray says what it makes of it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise click.BadParameter(
            f"cannot connect to {address}: nothing answers there ({why}); start the cluster "
            "(`ray start --head`) or check the address",
            param_hint="--ray-address",
        ) from None


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
            table = cast("pa.Table", batch)
            columns = [
                table.column(c).to_pylist() for c in ("path", "error", "label", "confidence")
            ]
            alternatives = table.column("top_k").to_pylist() if top_k else [None] * len(table)
            for path, error, label, confidence, alts in zip(*columns, alternatives, strict=True):
                top = tuple((a["label"], a["confidence"]) for a in alts or ())
                writer.write(Result(path, error, label, confidence, top))
            stats.images += len(table)
            stats.failures += len(table) - table.column("error").null_count
