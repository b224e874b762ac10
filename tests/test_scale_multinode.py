"""The Ray engine on a real multi-node cluster: three Ray nodes started on this machine.

``ray.cluster_utils.Cluster`` runs a head and two worker nodes, each its own
raylet and object store with its own CPU count. On one machine this proves
scheduling and failure handling, not speed: work lands on more than one node,
and a node removed mid-run loses and duplicates no input.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.models import digit, linear_model
from helpers.ray_dirs import remove_ray_dir
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray is not installed: `make venv` (the scale extra)")

from ray.cluster_utils import Cluster  # noqa: E402

from mnist_edge.runtime.scale import stages  # noqa: E402
from mnist_edge.runtime.scale.engine import RayConfig, classify_dataset, plan_job  # noqa: E402

pytestmark = pytest.mark.timeout(300)

FILES = 1200
STORE = 80 * 1024 * 1024  # each node's object store: small, the rows are tiny


@pytest.fixture(scope="module")
def cluster():
    """A head node (1 CPU, where the driver and its blocks live) and two worker nodes (1 and 2 CPUs)."""
    temp = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))  # socket paths must stay short
    (temp / "ray").mkdir()
    common = {"object_store_memory": STORE, "temp_dir": str(temp / "ray")}
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(temp)  # where Cluster notes the address: not /tmp/ray
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "include_dashboard": False, **common},
        )
        workers = [cluster.add_node(num_cpus=n, **common) for n in (1, 2)]
        cluster.wait_for_nodes(timeout=120)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        yield cluster, workers
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before
        remove_ray_dir(temp)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return linear_model(tmp_path_factory.mktemp("model") / "mnist.onnx")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("digits")
    noise = np.random.default_rng(3).integers(0, 40, (FILES, 28, 28), dtype=np.uint8)
    paths = []
    for i in range(FILES):
        path = root / f"{i:05d}.png"
        Image.fromarray(np.maximum(digit(i % 31), noise[i])).save(path)
        paths.append(str(path))
    return paths


def _expected(files: list[str], model: Path) -> dict[str, str]:
    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.images import load_batch

    classifier = Classifier(model, provider="cpu")
    images, errors = load_batch(files)
    assert not any(errors)
    return dict(zip(files, classifier.predict(images).labels, strict=True))


def _logging_stage(log: Path) -> type[stages.ClassifyFiles]:
    class LogsNode(stages.ClassifyFiles):
        """Appends ``node-id pid`` for every block it classifies (one file per process)."""

        def __call__(self, batch):
            node = ray.get_runtime_context().get_node_id()
            with open(log / f"{os.getpid()}.log", "a") as f:
                f.write(f"{node} {len(batch['path'])}\n")
            return super().__call__(batch)

    return LogsNode


def _nodes(log: Path) -> dict[str, int]:
    """Rows classified per node id, from the stage's logs."""
    rows: dict[str, int] = {}
    for path in log.glob("*.log"):
        for line in path.read_text().splitlines():
            node, count = line.split()
            rows[node] = rows.get(node, 0) + int(count)
    return rows


@pytest.mark.parametrize("actors", [None, 3], ids=["tasks", "actors"])
def test_work_lands_on_more_than_one_node(cluster, model, files, tmp_path, monkeypatch, actors):
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setattr(stages, "ClassifyFiles", _logging_stage(log))
    config = RayConfig(files_per_task=50, actors=actors, cpus_per_actor=0.5)
    job = plan_job(files, model, config)
    warm = job.warm_up()
    if actors is None:  # a worker per free CPU, on every node that has one
        assert warm.nodes > 1 and warm.workers >= warm.nodes, warm
    rows = job.dataset.take_all()
    expected = _expected(files, model)
    assert sorted(r["path"] for r in rows) == sorted(expected)
    assert all(r["label"] == expected[r["path"]] for r in rows)
    per_node = _nodes(log)
    assert len(per_node) > 1, per_node
    assert set(per_node) <= {n["NodeID"] for n in ray.nodes()}


def test_a_node_removed_mid_run_loses_and_duplicates_nothing(
    cluster, model, files, tmp_path, monkeypatch
):
    nodes, workers = cluster
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setattr(stages, "ClassifyFiles", _logging_stage(log))
    victim = workers[1]  # the 2-CPU worker node: most blocks run there
    results = classify_dataset(files, model, RayConfig(files_per_task=40))
    seen: list[str] = []
    removed = False
    for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        seen += batch.column("path").to_pylist()
        assert batch.column("error").null_count == batch.num_rows
        if not removed and len(seen) < len(files) // 2 and victim.node_id in _nodes(log):
            nodes.remove_node(victim, allow_graceful=False)
            removed = True
    assert removed, "the node was not removed mid-run: the test tested nothing"
    assert len(seen) == len(set(seen)), "an input came back twice"
    assert sorted(seen) == sorted(files), "inputs were lost"
    # The GCS marks a node dead after its health checks fail: allow it a bounded while.
    deadline = time.monotonic() + 30
    while victim.node_id in _alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert victim.node_id not in _alive()


def _alive() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}
