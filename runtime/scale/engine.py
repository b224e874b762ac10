"""Scale-out batch inference on Ray Data: the local guarantees, on a cluster.

:func:`classify_dataset` turns input files (local paths, folders, globs, or
pyarrow-filesystem URIs such as ``s3://bucket/scans/``), or a Ray Dataset of
bytes, into a lazy Ray Dataset of result rows. The plan, executed in a stream
by Ray Data when the caller consumes or writes it::

    read_binary_files(include_paths=True)       read tasks, where the data is
      -> map_batches(decode_batch)               our decode + MNIST-style preprocessing
      -> map_batches(ClassifyBatch, compute=ActorPoolStrategy(...))
                                                 one Classifier per actor (1 ORT thread on CPU,
                                                 num_gpus + CUDA on GPU nodes)
      -> union(error rows for inputs that were never readable)

Every input gives exactly one row (see :data:`RESULT_COLUMNS`): a prediction, or
an error. An actor that dies is restarted and its batch retried (Ray Data's
actor-pool defaults, which this module relies on and the tests check).

Ray is imported lazily: this package (and the rest of :mod:`mnist_edge.runtime`)
imports without it; the functions that need it raise :class:`RayEngineError`
naming the ``scale`` extra.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from mnist_edge.runtime.images import ImageOptions
from mnist_edge.runtime.inputs import Source
from mnist_edge.runtime.scale import stages
from mnist_edge.runtime.scale.config import RayConfig, RayEngineError, import_ray
from mnist_edge.runtime.scale.inputs import InputPlan, plan_inputs
from mnist_edge.runtime.scale.stages import RESULT_COLUMNS, decode_batch, error_table
from mnist_edge.runtime.session import SessionConfig

if TYPE_CHECKING:
    from ray.data import Dataset

    from mnist_edge.runtime.classifier import Classifier

__all__ = ["RESULT_COLUMNS", "RayConfig", "RayEngineError", "classify_dataset", "load_model"]


def _add_scheme(batch: dict[str, np.ndarray], scheme: str) -> dict[str, np.ndarray]:
    batch["path"] = np.asarray([scheme + str(p) for p in batch["path"]], dtype=object)
    return batch


def _remember_missing_http_filesystem() -> None:
    """Make a failing ``import fsspec.implementations.http`` fail fast from now on.

    Ray 2.60 tries that import once per path it resolves; where fsspec (which
    ``ray[data]`` requires) is installed without aiohttp, each try re-runs the
    module until it fails: 2-4 ms per path, 20 s for 5,000 files on a loaded
    2-core machine. A ``None`` entry in ``sys.modules`` makes the retries
    immediate ``ImportError`` s, which Ray takes as "no HTTP filesystem".
    """
    try:
        import fsspec.implementations.http  # noqa: F401
    except ImportError:
        sys.modules.setdefault("fsspec.implementations.http", None)  # type: ignore[arg-type]


def read_inputs(plan: InputPlan, ray: Any) -> Dataset | None:
    """The readable files of ``plan`` as one Dataset of ``{bytes, path}`` (``None`` if there are none)."""
    _remember_missing_http_filesystem()
    parts: list[Dataset] = []
    if plan.local:
        parts.append(ray.data.read_binary_files(plan.local, include_paths=True))
    for remote in plan.remote:
        ds = ray.data.read_binary_files(
            remote.paths, include_paths=True, filesystem=remote.filesystem
        )
        parts.append(ds.map_batches(functools.partial(_add_scheme, scheme=remote.scheme)))
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def load_model(model: str | os.PathLike[str]) -> Classifier:
    """Open ``model`` here (CPU, one thread) to check it and read its metadata before any job starts.

    Raises:
        ModelError: missing or unusable model file.
    """
    from mnist_edge.runtime.classifier import Classifier

    return Classifier(model, config=SessionConfig(provider="cpu", threads=1))


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
    ...); it streams, so neither the inputs nor the results are gathered anywhere.
    Rows come in no particular order; every input gives exactly one (see
    :data:`RESULT_COLUMNS`), and results equal the local CLI's on the same files.

    Args:
        inputs: local files, folders (recursive), globs, ``-`` (paths on ``stdin``),
            URIs that pyarrow's filesystems read (``s3://bucket/dir``, ``gs://...``,
            ``file:///...``), or a ``ray.data.Dataset`` with ``bytes`` and ``path`` columns
            (e.g. from ``read_binary_files(..., include_paths=True)``).
        model: the ``.onnx`` file (read here and shipped to the actors as bytes).
        config: the job's settings (default :class:`RayConfig`).
        stdin: where ``-`` reads paths from.
        classifier: ``model`` already opened by :func:`load_model` (saves opening it twice).

    Returns:
        A ``ray.data.Dataset`` with columns :data:`RESULT_COLUMNS`.

    Raises:
        RayEngineError: Ray is not installed, or no node can hold an actor.
        ModelError: the model file is missing or unusable.
    """
    config = config or RayConfig()
    ray = import_ray()
    from ray.data import ActorPoolStrategy

    if not ray.is_initialized():
        ray.init()  # as Ray Data would: RAY_ADDRESS, else a local Ray
    check_resources(ray, config)
    classifier = classifier or load_model(model)
    options = ImageOptions(
        preprocessing=classifier.metadata.preprocessing,
        invert=config.invert,
        max_pixels=config.max_pixels,
    )
    errors: list[Source] = []
    if isinstance(inputs, ray.data.Dataset):
        files: Dataset | None = inputs
    else:
        specs = [os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike)) else inputs
        plan = plan_inputs([os.fspath(s) for s in specs], stdin)
        files, errors = read_inputs(plan, ray), plan.errors
    failed = (
        ray.data.from_arrow(error_table([s.path for s in errors], [s.error or "" for s in errors]))
        if errors
        else None
    )
    if files is None:
        return failed if failed is not None else ray.data.from_arrow(error_table([], []))
    decoded = files.map_batches(
        functools.partial(decode_batch, options=options), batch_size=config.batch_size
    )
    session = SessionConfig(provider=config.provider_name, threads=1)
    # min_size 1: a small input need not feed every actor (Ray warns when it cannot)
    most = config.actors if config.actors is not None else _max_actors(ray, config)
    pool = ActorPoolStrategy(min_size=1, max_size=most, initial_size=config.actors or 1)
    results = decoded.map_batches(
        stages.ClassifyBatch,  # looked up at call time (tests swap in one that dies)
        fn_constructor_kwargs={
            "model": classifier.path.read_bytes(),
            "name": classifier.path.name,
            "session": session,
            "top_k": config.top_k,
            "model_batch": config.model_batch,
        },
        batch_size=config.batch_size,
        compute=pool,
        num_cpus=config.cpus_per_actor,
        num_gpus=config.gpus,
        # No max_restarts/max_task_retries: Ray Data's defaults for actor pools (-1, -1)
        # restart a dead actor and retry its batch on the replacement, and passing
        # them (as ray_remote_args) is deprecated in Ray 2.60.
    )
    return results.union(failed) if failed is not None else results


def check_resources(ray: Any, config: RayConfig) -> None:
    """Refuse a job whose actors fit nowhere in the cluster (Ray would wait for them forever).

    Raises:
        RayEngineError: no node has the CPUs or GPUs one actor asks for.
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for name, amount in (("CPU", config.cpus_per_actor), ("GPU", config.gpus)):
        if amount > 0 and not any(r.get(name, 0) >= amount for r in nodes):
            most = max((r.get(name, 0) for r in nodes), default=0)
            raise RayEngineError(
                f"each actor asks for {amount:g} {name}, but no node of the cluster has that "
                f"many (the most is {most:g}); ask for less per actor, or add such nodes"
            )


def _max_actors(ray: Any, config: RayConfig) -> int:
    """The most actors the cluster holds now (at least 1), leaving a CPU for read tasks."""
    resources = ray.cluster_resources()
    if config.gpus > 0:
        return max(1, int(resources.get("GPU", 0) / config.gpus))
    return max(1, int((resources.get("CPU", 1) - 1) / config.cpus_per_actor))
