"""``mnist-infer --engine ray``: the Ray engine's own command (options, checks, summary).

``mnist-infer`` hands its whole command line here when it holds ``--engine ray``
(see :mod:`mnist_edge.runtime.cli`), so the Ray settings are declared and
checked in this module only, and :class:`RayConfig` is built once from them.
Ray itself loads when the command runs, not when it is parsed; where the
``scale`` extra is missing the command says so in one line (exit 1).

Exit status as for the local engine: 0 every input succeeded, 1 any input
failed (the others are still written) or the job failed, 2 usage error (bad
option, missing/corrupt model, unknown provider, unreachable cluster).
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import click

from mnist_edge.runtime.command import command as console_command
from mnist_edge.runtime.frontend import (
    ModelChoice,
    check_top_k,
    invert_option,
    max_pixels_option,
    model_errors,
    model_options,
    top_k_option,
)
from mnist_edge.runtime.output import output_format, plural
from mnist_edge.runtime.scale.config import BLOCK_MAX, BLOCK_MIN, RayConfig
from mnist_edge.runtime.scale.writers import PARQUET, RAY_FORMATS, Output
from mnist_edge.runtime.session import short_name
from mnist_edge.runtime.stream import PipelineConfig
from mnist_edge.runtime.workers import WORKER_BATCH

if TYPE_CHECKING:
    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.output import RunStats

PROG = "mnist-infer --engine ray"
_CONFIG_FIELDS = {f.name for f in fields(RayConfig)}


def config_from(params: dict[str, Any]) -> RayConfig:
    """The :class:`RayConfig` of parsed options named as its fields (``None`` = its default).

    Raises:
        ConfigError: a value the config refuses (``field`` names its option).
    """
    return RayConfig(**{k: v for k, v in params.items() if k in _CONFIG_FIELDS and v is not None})


@console_command(PROG, extras=("scale", "cpu"))
@click.argument("inputs", nargs=-1, required=True)
@model_options("Use")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1 << 16),
    default=PipelineConfig.batch_size,
    show_default=True,
    help="Images per inference call, as in the local engine (a worker on a CPU provider, "
    f"one thread, calls at most {WORKER_BATCH} at a time).",
)
@click.option(
    "--files-per-task",
    type=click.IntRange(1, 1 << 20),
    default=None,
    help="Input files per Ray task (or actor call): each reads, decodes and classifies its "
    f"block of files.  [default: about 4 blocks per CPU of the cluster, {BLOCK_MIN} to "
    f"{BLOCK_MAX} files each]",
)
@invert_option()
@max_pixels_option()
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
    help="A folder or URI for Parquet (replaced whole), a file for the other formats "
    "(- or none: standard output).",
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
    --provider auto is resolved here, once, and every worker gets the provider it picked.
    """
    from mnist_edge.runtime.scale.engine import load_model

    output = Output.of(params["output"], output_format(params["fmt"], params["output"], PARQUET))
    requested = config_from(params)
    choice = ModelChoice(params["model"], params["int8"])
    with model_errors(choice):  # a bad model or provider is a usage error before any cluster work
        classifier = load_model(choice.path)
        config = requested.resolved(classifier.metadata.precision)
    check_top_k(config.top_k, classifier.classes)
    stdin = sys.stdin if "-" in params["inputs"] else None
    stats, started = _run(params, config, classifier, output, stdin)
    if not params["quiet"]:
        provider = short_name(config.provider_name) + (" (auto)" if requested.auto else "")
        pool = f"{provider} (ray, {_pool(config)}; {started})"
        model = f"{choice.path} ({classifier.metadata.precision})"
        click.echo(stats.summary(pool, model), err=True)
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
    from mnist_edge.runtime.scale.cluster import job_failure, ray_session
    from mnist_edge.runtime.scale.writers import write_parquet, write_rows

    begun = time.perf_counter()
    with ray_session(params["ray_address"], params["progress"]) as ray:
        started = time.perf_counter() - begun
        stats = RunStats()
        try:
            job = ray_engine.plan_job(
                params["inputs"], classifier.path, config, stdin=stdin, classifier=classifier
            )
            warm = job.warm_up()
            stats.leave_out(warm.seconds)  # start-up, reported apart
            if output.fmt == PARQUET and output.target is not None:  # checked by Output.check
                write_parquet(job.dataset, output.target, config.rows_per_file, stats)
            else:
                write_rows(job.dataset, output.target, output.fmt, config.top_k, stats)
            stats.stop()  # before Ray shuts down
        except ray.exceptions.RayError as exc:
            raise click.ClickException(f"the Ray job failed: {job_failure(exc)}") from None
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
