"""Scale-out batch inference on Ray Data: the local guarantees, on a cluster.

:func:`classify_dataset` turns input files (local paths, folders, globs, or
pyarrow-filesystem URIs such as ``s3://bucket/scans/``), or a Ray Dataset of
bytes, into a lazy Ray Dataset of result rows. The plan, executed in a stream
by Ray Data when the caller consumes or writes it::

    blocks of file names (RayConfig.block_size each, listed here, read nowhere yet)
      -> map_batches(ClassifyFiles)      one step per block where Ray runs it: read,
                                         decode + MNIST-style preprocessing, classify
                                         (Ray tasks on CPU, each worker process keeping
                                         its model; an actor pool on GPUs or when asked)
      -> union(error rows for inputs that were never readable)

Reading, decoding and classifying in one step keeps the blocks that cross the
object store small (file names in, result rows out) and needs one Ray task per
block instead of one per file.

:func:`plan_job` returns the same Dataset as a :class:`RayJob`, whose
:meth:`~RayJob.warm_up` starts the worker processes (the model open in each)
and Ray Data's services before the job runs, so that the job's time is its own
work; ``mnist-infer --engine ray`` reports the two apart.

Every input gives exactly one row (see :data:`RESULT_COLUMNS`): a prediction, or
an error. A worker that dies (a task's process, an actor, a whole node) has its
block run again elsewhere: Ray Data retries tasks and restarts actors by
default, which this module relies on and the tests check.

Ray is imported lazily: this package (and the rest of :mod:`mnist_edge.runtime`)
imports without it; the functions that need it raise
:class:`~mnist_edge.runtime.errors.MissingExtraError` naming the ``scale`` extra.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from mnist_edge.runtime.classifier import check_top_k
from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.images import ImageOptions
from mnist_edge.runtime.inputs import Source
from mnist_edge.runtime.scale import stages
from mnist_edge.runtime.scale.config import RayConfig, RayEngineError, import_ray
from mnist_edge.runtime.scale.inputs import InputPlan, plan_inputs
from mnist_edge.runtime.scale.stages import RESULT_COLUMNS, error_table
from mnist_edge.runtime.scale.warmup import WarmUp, warm_up
from mnist_edge.runtime.session import SessionConfig

if TYPE_CHECKING:
    import pyarrow as pa
    from ray.data import Dataset

    from mnist_edge.runtime.classifier import Classifier

BYTES_BLOCK = 1024  # rows per block of a Dataset of bytes given without files_per_task

__all__ = [
    "RESULT_COLUMNS",
    "RayConfig",
    "RayEngineError",
    "RayJob",
    "WarmUp",
    "classify_dataset",
    "load_model",
    "plan_job",
]


def file_blocks(plan: InputPlan, block: int) -> tuple[list[pa.Table], tuple[stages.Remote, ...]]:
    """The readable files of ``plan`` as tables of ``block`` rows ``{path, source}``, and the
    filesystems that ``source`` 1, 2, ... name."""
    import pyarrow as pa

    remotes = tuple(stages.Remote(r.scheme, r.filesystem) for r in plan.remote)
    groups = [(stages.LOCAL, plan.local)]
    groups += [(k, r.paths) for k, r in enumerate(plan.remote, start=1)]
    tables = []
    for source, paths in groups:
        for start in range(0, len(paths), block):
            part = paths[start : start + block]
            tables.append(
                pa.table(
                    {
                        "path": pa.array(part, pa.string()),
                        "source": pa.array(np.full(len(part), source, np.int16)),
                    }
                )
            )
    return tables, remotes


def load_model(model: str | os.PathLike[str]) -> Classifier:
    """Open ``model`` here (CPU, one thread) to check it and read its metadata before any job starts.

    Raises:
        ModelError: missing or unusable model file, or a pixels-in model.
    """
    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.session import ModelError

    classifier = Classifier(model, config=SessionConfig(provider="cpu", threads=1))
    if classifier.pixels_in:
        raise ModelError(
            f"{model} is a pixels-in model (one picture per call); classify_dataset takes "
            "the model without .pixels in its name"
        )
    return classifier


def classify_dataset(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Dataset,
    model: str | os.PathLike[str],
    config: RayConfig | None = None,
    *,
    stdin: TextIO | None = None,
    classifier: Classifier | None = None,
) -> Dataset:
    """Classify digit images on Ray Data; returns a lazy Dataset of result rows.

    Nothing runs until the Dataset is consumed (``write_parquet``, ``iter_batches``,
    ...); it streams, so neither the pictures nor the results are gathered anywhere
    (only the list of file names passes through this process).
    Rows come in no particular order; every input gives exactly one (see
    :data:`RESULT_COLUMNS`), and results equal the local CLI's on the same files.
    ``plan_job(...).dataset`` is the same Dataset, with :meth:`RayJob.warm_up` beside it.

    Args:
        inputs: local files, folders (recursive), globs, ``-`` (paths on ``stdin``),
            URIs that pyarrow's filesystems read (``s3://bucket/dir``, ``gs://...``,
            ``file:///...``), or a ``ray.data.Dataset`` with ``bytes`` and ``path`` columns
            (e.g. from ``read_binary_files(..., include_paths=True)``).
        model: the ``.onnx`` file (read here and shipped to the workers as bytes).
        config: the job's settings (default :class:`RayConfig`); a provider of ``auto`` is
            resolved here, once, for every worker (:meth:`RayConfig.resolved`).
        stdin: where ``-`` reads paths from.
        classifier: ``model`` already opened by :func:`load_model` (saves opening it twice).

    Returns:
        A ``ray.data.Dataset`` with columns :data:`RESULT_COLUMNS`.

    Raises:
        MissingExtraError: Ray is not installed.
        ConfigError: no node can hold a worker as configured (``field`` names the setting).
        ProviderError: an unknown provider, or ``auto`` finds none usable here.
        ModelError: the model file is missing or unusable.
    """
    return plan_job(inputs, model, config, stdin=stdin, classifier=classifier).dataset


@dataclass(frozen=True)
class RayJob:
    """A classification job, planned: inputs listed, settings and model checked; nothing ran yet.

    Attributes:
        dataset: the lazy Dataset of result rows (see :func:`classify_dataset`).
        job: what every worker of the job gets.
        config: the job's settings, the provider resolved (never ``auto``).
        blocks: blocks of files the job has (``None`` for a Dataset of bytes).
    """

    dataset: Dataset
    job: stages.Job
    config: RayConfig
    blocks: int | None

    def warm_up(self) -> WarmUp:
        """Start a worker per free CPU with the model open, and Ray Data's services, before
        the job runs, so that the job times its own work (see :mod:`.warmup`)."""
        return warm_up(self.job, self.config, self.blocks)


def plan_job(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Dataset,
    model: str | os.PathLike[str],
    config: RayConfig | None = None,
    *,
    stdin: TextIO | None = None,
    classifier: Classifier | None = None,
) -> RayJob:
    """List the inputs and check the job (see :func:`classify_dataset` for the arguments).

    Starts a local Ray if none is connected (as Ray Data would: ``RAY_ADDRESS``, else
    one on this machine). Nothing is read or classified until ``dataset`` is consumed.

    Raises:
        MissingExtraError: Ray is not installed.
        ConfigError: no node can hold a worker as configured (``field`` names the setting).
        ProviderError: an unknown provider, or ``auto`` finds none usable here.
        ModelError: the model file is missing or unusable.
    """
    ray = import_ray()
    classifier = classifier or load_model(model)
    config = (config or RayConfig()).resolved(classifier.metadata.precision)
    check_top_k(config.top_k, len(classifier.classes))
    if not ray.is_initialized():
        ray.init()
    check_resources(ray, config)
    options = ImageOptions(
        preprocessing=classifier.metadata.preprocessing,
        invert=config.invert,
        max_pixels=config.max_pixels,
    )
    errors: list[Source] = []
    remotes: tuple[stages.Remote, ...] = ()
    block = config.files_per_task or BYTES_BLOCK
    blocks: int | None = None
    if isinstance(inputs, ray.data.Dataset):
        files: Dataset | None = inputs
    else:
        specs = [os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike)) else inputs
        plan = plan_inputs([os.fspath(s) for s in specs], stdin)
        errors = plan.errors
        listed = len(plan.local) + sum(len(r.paths) for r in plan.remote)
        block = config.block_size(listed, ray.cluster_resources().get("CPU", 1.0))
        tables, remotes = file_blocks(plan, block)
        del plan  # the names now live in the blocks
        blocks = len(tables)
        # from_blocks, not from_arrow: from_arrow waits here for a remote task that
        # reads each table's metadata (a worker start-up before the job even begins)
        files = ray.data.from_blocks(tables) if tables else None
    job = stages.Job(
        model=stages.ModelBlob.read(classifier.path),
        session=SessionConfig(provider=config.provider_name, threads=1),
        options=options,
        top_k=config.top_k,
        images_per_call=config.images_per_call,
        remotes=remotes,
    )
    failed = (
        ray.data.from_blocks(
            [error_table([s.path for s in errors], [s.error or "" for s in errors])]
        )
        if errors
        else None
    )
    if files is None:
        empty = failed if failed is not None else ray.data.from_blocks([error_table([], [])])
        return RayJob(empty, job, config, 0)
    stage = stages.ClassifyFiles  # looked up at call time (tests swap in one that dies)
    results = (
        _on_actors(ray, files, stage, job, config, block)
        if config.uses_actors
        else files.map_batches(
            functools.partial(stages.classify_block, job=job, stage=stage, run=uuid.uuid4().hex),
            batch_size=block,
            num_cpus=1,
            # Ray Data retries a task whose worker or node died (max_retries=-1).
        )
    )
    results = results.union(failed) if failed is not None else results
    if not config.uses_actors:
        # One operator does all the work: Ray Data's per-operator reservation (half
        # the CPUs) only keeps CPUs idle, so the tasks may use all of them.
        results.context.op_resource_reservation_enabled = False
    return RayJob(results, job, config, blocks)


def _on_actors(
    ray: Any,
    files: Dataset,
    stage: type[stages.ClassifyFiles],
    job: stages.Job,
    config: RayConfig,
    block: int,
) -> Dataset:
    from ray.data import ActorPoolStrategy

    # min_size 1: a small input need not feed every actor (Ray warns when it cannot)
    most = config.actors if config.actors is not None else _max_actors(ray, config)
    pool = ActorPoolStrategy(min_size=1, max_size=most, initial_size=config.actors or 1)
    return files.map_batches(
        stage,
        fn_constructor_kwargs={"job": job},
        batch_size=block,
        compute=pool,
        num_cpus=config.cpus_per_actor,
        num_gpus=config.gpus,
        # No max_restarts/max_task_retries: Ray Data's defaults for actor pools (-1, -1)
        # restart a dead actor and retry its batch on the replacement, and passing
        # them (as ray_remote_args) is deprecated.
    )


def check_resources(ray: Any, config: RayConfig) -> None:
    """Refuse a job whose workers fit nowhere in the cluster (Ray would wait for them forever).

    Raises:
        ConfigError: no node has the CPUs or GPUs one worker asks for (``field`` says which).
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus = config.cpus_per_actor if config.uses_actors else 1.0
    asks = (("CPU", cpus, "cpus_per_actor"), ("GPU", config.gpus, "gpus_per_actor"))
    for name, amount, field in asks:
        if amount > 0 and not any(r.get(name, 0) >= amount for r in nodes):
            most = max((r.get(name, 0) for r in nodes), default=0)
            who = "actor" if config.uses_actors else "task"
            raise ConfigError(
                f"each {who} asks for {amount:g} {name}, but no node of the cluster has that "
                f"many (the most is {most:g}); ask for less per actor, or add such nodes",
                field,
            )


def _max_actors(ray: Any, config: RayConfig) -> int:
    """The most actors the cluster holds now (at least 1), leaving a CPU for read tasks."""
    resources = ray.cluster_resources()
    if config.gpus > 0:
        return max(1, int(resources.get("GPU", 0) / config.gpus))
    return max(1, int((resources.get("CPU", 1) - 1) / config.cpus_per_actor))
