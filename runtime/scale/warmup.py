"""The Ray engine's warm-up: worker processes with the model open, before a job runs.

A fresh driver's first tasks wait for Ray to start worker processes (each
imports the runtime and opens the model) and its first Ray Data job for Ray
Data's services (actors that outlive the job). :func:`warm_up` pays both
before the job, in a small Ray Data job of one step per free CPU, so that the
job's time is its own work and its tasks find the model open.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnist_edge.runtime.scale.config import RayConfig, import_ray
from mnist_edge.runtime.scale.stages import Job, ModelBlob, open_model
from mnist_edge.runtime.session import SessionConfig

WARM_UP_PATIENCE = 10.0  # seconds a warm-up step waits for the others to start
WARM_UP_NAMESPACE = "mnist-edge-warm-up"
"""Where warm-up steps meet: Ray's key-value store (the GCS), one key per step's worker."""


def warm_worker(
    batch: dict[str, np.ndarray],
    model: ModelBlob,
    session: SessionConfig,
    run: str,
    steps: int,
    deadline: float,
) -> dict:
    """A warm-up step (a Ray task): open ``model`` in this worker process, where the job's
    tasks will find it open, then hold the worker until all ``steps`` steps of ``run`` hold
    one (or until ``deadline``, a ``time.time()``): a step that ended at once would leave
    its process to the next step, and a CPU without a ready worker. Returns one row
    naming the process and its node (``pid``, ``node``)."""
    import ray

    open_model(model, session)
    node = ray.get_runtime_context().get_node_id()
    kv = _key_value_store()
    if kv is not None:
        kv._internal_kv_put(
            f"{run}/{ray.get_runtime_context().get_worker_id()}", b"", namespace=WARM_UP_NAMESPACE
        )
        while time.time() < deadline:
            if len(kv._internal_kv_list(f"{run}/", namespace=WARM_UP_NAMESPACE)) >= steps:
                break
            time.sleep(0.02)
    return {"pid": np.array([os.getpid()], np.int64), "node": np.array([node])}


def _key_value_store() -> Any:
    """Ray's key-value store API (``ray.experimental``), or ``None`` where a Ray lacks it:
    the steps then run without meeting (fewer CPUs may get a worker ready)."""
    try:
        from ray.experimental import internal_kv
    except ImportError:
        return None
    return internal_kv if hasattr(internal_kv, "_internal_kv_list") else None


def process_id(batch: dict[str, np.ndarray]) -> dict:
    """A step that only names its process (``pid``): a job that starts Ray Data's services."""
    return {"pid": np.array([os.getpid()], np.int64)}


@dataclass(frozen=True)
class WarmUp:
    """What :meth:`RayJob.warm_up` started.

    Attributes:
        workers: worker processes that hold the model open (0 with an actor pool).
        nodes: the nodes they run on.
        seconds: how long it took.
    """

    workers: int
    nodes: int
    seconds: float


def warm_up(job: Job, config: RayConfig, blocks: int | None) -> WarmUp:
    """Start a worker process per free CPU (at most ``blocks``) with ``job``'s model open,
    and Ray Data's services; with an actor pool (``config``) only the services; nothing
    for a job of no blocks."""
    if blocks == 0:  # every input failed before reading: no task will run
        return WarmUp(0, 0, 0.0)
    ray = import_ray()
    start = time.perf_counter()
    run = uuid.uuid4().hex
    if config.uses_actors:
        steps, step = 1, process_id
    else:
        free = int(ray.available_resources().get("CPU", 1))  # CPUs other jobs leave
        steps = max(1, min(free, blocks if blocks is not None else free))
        step = functools.partial(
            warm_worker,
            model=job.model,
            session=job.session,
            run=run,
            steps=steps,
            deadline=time.time() + WARM_UP_PATIENCE,
        )
    warm = ray.data.range(steps, override_num_blocks=steps).map_batches(
        step, batch_size=1, num_cpus=1
    )
    warm.context.op_resource_reservation_enabled = False  # a step per CPU, all at once
    workers: set[tuple[str, int]] = set()
    try:
        for batch in warm.iter_batches(batch_format="numpy", batch_size=None):
            if "node" in batch:  # the model-opening steps, not the services-only one
                workers.update(zip(map(str, batch["node"]), map(int, batch["pid"]), strict=True))
    finally:
        kv = _key_value_store()
        if kv is not None and not config.uses_actors:
            kv._internal_kv_del(f"{run}/", del_by_prefix=True, namespace=WARM_UP_NAMESPACE)
    nodes = {node for node, _ in workers}
    return WarmUp(len(workers), len(nodes), time.perf_counter() - start)
