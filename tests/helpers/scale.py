"""The Ray engine's tests: a local Ray for a test module, and the local engine as their oracle."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from helpers.ray_dirs import remove_ray_dir
from mnist_edge.runtime.session import SessionConfig
from mnist_edge.runtime.stream import Pipeline, PipelineConfig


@contextlib.contextmanager
def local_ray(num_cpus: int = 2, store_mib: int = 256) -> Iterator[None]:
    """``ray.init`` here (quiet, no progress bars), then ``ray.shutdown`` and its temp dir removed."""
    import ray

    # Ray's socket paths must stay short: a temp dir of its own, not the deep pytest one
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=store_mib * 1024 * 1024,
        _temp_dir=str(temp),
        logging_level="WARNING",
        log_to_driver=False,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        yield
    finally:
        ray.shutdown()
        remove_ray_dir(temp)


def local_records(specs: list[str], model: Path, top_k: int = 0) -> dict[str, dict]:
    """What the local engine gives (its Pipeline, in this process), as records by path."""
    config = PipelineConfig(workers=0, top_k=top_k)
    records: dict[str, dict] = {}
    with Pipeline(model, specs, config, SessionConfig(provider="cpu", threads=1)) as pipeline:
        for result in pipeline:
            assert result.path not in records
            if result.error is not None:
                records[result.path] = {"error": result.error}
            else:
                records[result.path] = {
                    "label": result.label,
                    "confidence": result.confidence,
                    "top_k": [label for label, _ in result.top_k],
                }
    return records


def check_same(rows: list[dict], expected: dict[str, dict]) -> None:
    """Ray's result rows are the local engine's records: each input once, same labels and errors."""
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "an input came back more than once"
    assert set(paths) == set(expected), "inputs lost or invented"
    for row in rows:
        want = expected[row["path"]]
        if "error" in want:
            assert row["error"] == want["error"], row["path"]
            assert row.get("label") is None
        else:
            assert row["error"] is None, row
            assert row["label"] == want["label"], row["path"]
            assert abs(row["confidence"] - want["confidence"]) <= 1e-6
            assert [t["label"] for t in row["top_k"] or []] == want["top_k"]
