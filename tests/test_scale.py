"""Scale-out on Ray Data (runtime/scale/), on a local Ray started here.

The guarantees of the local engine, checked against its Pipeline on the same
inputs: every input exactly once, in a result row or an error row (``.npy``
files: one row per image); labels identical, confidences within 1e-6; a file
deleted after listing gives an error row; a worker (task process or actor) that
dies mid-run is replaced and its block run again; after a warm-up, the job's
tasks find the model open in a worker process per CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.models import digit, linear_model
from helpers.scale import check_same, local_records
from helpers.scale import local_ray as start_local_ray
from PIL import Image

from mnist_edge.runtime.stream import PipelineConfig

ray = pytest.importorskip("ray", reason="Ray is not installed: `make venv` (the scale extra)")

from mnist_edge.runtime.scale import stages  # noqa: E402  (after the skip: needs ray to run)
from mnist_edge.runtime.scale.engine import RayConfig, classify_dataset, plan_job  # noqa: E402

# A hung Ray job (e.g. actors starving the read tasks, ray-project/ray#44687) fails, never blocks.
pytestmark = pytest.mark.timeout(180)

IMAGES = 5000
CONFIG = RayConfig(files_per_task=512)


@pytest.fixture(scope="module")
def local_ray():
    with start_local_ray():
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return linear_model(tmp_path_factory.mktemp("model") / "mnist.onnx")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """5,000 digit PNGs in two folders, plus files that must become error rows."""
    root = tmp_path_factory.mktemp("inputs")
    digits = np.stack([digit(seed) for seed in range(97)])  # (97, 28, 28)
    noise = np.random.default_rng(7).integers(0, 40, (IMAGES, 28, 28), dtype=np.uint8)
    for sub in ("a", "b"):
        (root / sub).mkdir()
    for i in range(IMAGES):  # every picture differs (noise), as do their predictions
        pixels = np.maximum(digits[i % 97], noise[i])
        Image.fromarray(pixels).save(root / ("a", "b")[i % 2] / f"{i:05d}.png")
    (root / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / ".hidden.png").write_bytes(b"skipped like the local CLI")
    np.save(root / "a" / "stack.npy", np.stack([digit(1), digit(2)]))
    (root / "nothing").mkdir()
    return root


def test_runtime_imports_without_ray():
    """The runtime (and its Ray modules) import without loading Ray: only a run loads it."""
    code = (
        "import pkgutil, importlib, sys\n"
        "import mnist_edge.runtime as rt\n"
        "names = [m.name for m in pkgutil.walk_packages(rt.__path__, 'mnist_edge.runtime.')]\n"
        "assert 'mnist_edge.runtime.scale.engine' in names, names\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(n for n in sys.modules if n == 'ray' or n.startswith('ray.'))\n"
        "print(names, bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_input_once_and_equal_tolocal_records(local_ray, model, inputs):
    specs = [str(inputs / "a"), str(inputs / "b" / "*.png"), str(inputs / "nothing"),
             str(inputs / "missing.png"), str(inputs / "b" / "*.jpg")]  # fmt: skip
    rows = classify_dataset(specs, model, RayConfig(files_per_task=512, top_k=3)).take_all()
    expected = local_records(specs, model, top_k=3)
    # 3 bad files, 2 images in stack.npy; empty folder, missing, glob without match
    assert len(rows) == IMAGES + 3 + 2 + 3
    check_same(rows, expected)
    assert {f"{inputs}/a/stack.npy[{i}]" for i in (0, 1)} <= {r["path"] for r in rows}
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert errors["empty.png"] == "empty file (0 bytes)"
    assert errors["nothing"] == "empty directory (no files in it)"
    assert errors["*.jpg"] == "no file matches this pattern"


def test_dataset_of_bytes_and_uris(local_ray, model, inputs):
    """Ray users pass their own Dataset of bytes; URIs go through pyarrow's filesystems."""
    files = sorted(str(p) for p in (inputs / "b").glob("000*.png"))
    ds = ray.data.read_binary_files(files, include_paths=True)
    rows = classify_dataset(ds, model, CONFIG).take_all()
    check_same(rows, local_records(files, model))

    stack = str(inputs / "a" / "stack.npy")
    uris = [f"file://{inputs}/b/000*.png", f"file://{inputs}/nothing", f"file://{inputs}/nope"]
    rows = classify_dataset([*uris, f"file://{stack}"], model, CONFIG).take_all()
    expected = {f"file://{k}": v for k, v in local_records([*files, stack], model).items()}
    expected[uris[1]] = {"error": "empty directory (no files in it)"}
    expected[uris[2]] = {"error": "no such file or directory"}
    assert f"file://{stack}[1]" in expected  # an array file behind a URI: a row per image
    check_same(rows, expected)

    wrong = ray.data.from_items([{"data": b"x"}])
    with pytest.raises(Exception, match="no bytes or path column"):
        classify_dataset(wrong, model, CONFIG).take_all()


def test_a_file_deleted_after_listing_is_an_error_row(local_ray, model, tmp_path):
    folder = tmp_path / "vanishing"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(digit(i)).save(folder / f"{i:02d}.png")
    np.save(folder / "gone.npy", np.stack([digit(1), digit(2)]))
    results = classify_dataset([str(folder)], model, RayConfig(files_per_task=8))  # listed, lazy
    (folder / "03.png").unlink()
    (folder / "gone.npy").unlink()
    rows = results.take_all()
    assert len(rows) == 21
    gone = ("03.png", "gone.npy")
    check_same(
        [r for r in rows if Path(r["path"]).name not in gone], local_records([str(folder)], model)
    )
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert errors == {
        "03.png": "cannot read image: No such file or directory",
        "gone.npy": "cannot read array file: No such file or directory",
    }


@pytest.mark.parametrize("actors", [None, 2], ids=["tasks", "actors"])
def test_a_killed_worker_is_replaced_and_its_block_run_again(
    local_ray, model, inputs, monkeypatch, actors
):
    marker = inputs.parent / f"killed-{os.getpid()}-{actors}"

    class DiesOnce(stages.ClassifyFiles):
        """Exits hard (like an OOM kill) on its third block, the first time in the run."""

        def __call__(self, batch):
            self.calls = getattr(self, "calls", 0) + 1  # per worker (the class travels by value)
            if self.calls == 3 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    monkeypatch.setattr(stages, "ClassifyFiles", DiesOnce)
    files = sorted(str(p) for p in (inputs / "a").glob("0*.png"))[:1500]
    config = RayConfig(actors=actors, files_per_task=100)
    rows = classify_dataset(files, model, config).take_all()
    assert marker.exists(), "no worker died: the test did not test anything"
    check_same(rows, local_records(files, model))


def test_warm_up_opens_the_model_in_a_worker_per_cpu_for_the_job(
    local_ray, model, inputs, tmp_path, monkeypatch
):
    import onnx

    fresh = onnx.load(model)  # bytes no worker of this module has opened yet
    fresh.doc_string = f"warm-up test {tmp_path.name}"
    onnx.save(fresh, tmp_path / "fresh.onnx")
    log = tmp_path / "opens"
    log.mkdir()

    class LogsOpen(stages.ClassifyFiles):
        """Writes, per stage made in a task, whether its process had the model open already."""

        def __init__(self, job):
            before = stages._OPEN.get("key")
            super().__init__(job)
            with open(log / str(os.getpid()), "a") as f:
                f.write("open\n" if before == stages._OPEN["key"] else "opened-in-job\n")

    monkeypatch.setattr(stages, "ClassifyFiles", LogsOpen)
    files = sorted(str(p) for p in (inputs / "b").glob("0*.png"))[:2000]
    job = plan_job(files, tmp_path / "fresh.onnx", RayConfig(files_per_task=250))
    warm = job.warm_up()
    assert warm.workers == 2, "the local Ray has 2 CPUs: a worker process each"
    check_same(job.dataset.take_all(), local_records(files, tmp_path / "fresh.onnx"))
    seen = [line for path in log.iterdir() for line in path.read_text().split()]
    assert seen and set(seen) == {"open"}, seen


def test_config_errors_name_their_field():
    from mnist_edge.runtime.errors import ConfigError

    for kwargs, field in [
        ({"batch_size": 0}, "batch_size"),
        ({"files_per_task": 0}, "files_per_task"),
        ({"actors": 0}, "actors"),
        ({"provider": "cuda", "gpus_per_actor": 0}, "gpus_per_actor"),
        ({"provider": "cpu", "gpus_per_actor": 1}, "gpus_per_actor"),
        ({"invert": "sometimes"}, "invert"),
        ({"batch_size": 32, "model_batch": 16}, "batch_size"),
    ]:
        with pytest.raises(ConfigError) as caught:
            RayConfig(**kwargs)
        assert caught.value.field == field, kwargs
    with pytest.raises(ConfigError) as caught:  # workers must agree: auto is resolved first
        _ = RayConfig(provider="auto").provider_name
    assert caught.value.field == "provider"


def test_fields_are_named_like_their_options_and_the_old_name_still_works():
    from dataclasses import fields

    from mnist_edge.runtime.scale.cli import command

    options = {p.name for p in command.params}
    config = {f.name for f in fields(RayConfig)}
    assert {"batch_size", "files_per_task", "provider", "top_k", "invert"} <= options & config
    assert RayConfig(model_batch=16).batch_size == 16  # the old field name, hidden
    assert "model_batch" not in repr(RayConfig(model_batch=16))


def test_auto_is_resolved_once_by_the_local_rule_and_a_named_provider_stays(monkeypatch):
    from mnist_edge.runtime import session
    from mnist_edge.runtime.errors import ConfigError, ProviderError

    cpu = RayConfig().resolved("fp32")
    assert (cpu.provider, cpu.gpus, cpu.uses_actors) == ("cpu", 0.0, False)
    monkeypatch.setattr(  # as on a driver with a CUDA build of ONNX Runtime
        session.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", session.CPU]
    )
    gpu = RayConfig().resolved("fp32")
    assert (gpu.provider, gpu.gpus, gpu.uses_actors) == ("cuda", 1.0, True)
    assert RayConfig().resolved("int8").provider == "cpu"  # int8 files skip the GPU, as locally
    monkeypatch.setattr(session.ort, "get_available_providers", lambda: [session.CPU])
    # named providers are sent as named, even where this machine lacks them
    assert RayConfig(provider="cuda").resolved("fp32").provider == "cuda"
    assert RayConfig(provider="openvino").resolved("int8").provider == "openvino"
    with pytest.raises(ProviderError, match="unknown provider 'nope'"):
        RayConfig(provider="nope").resolved("fp32")
    with pytest.raises(ConfigError, match="auto picks cpu on this machine") as caught:
        RayConfig(gpus_per_actor=1).resolved("fp32")
    assert caught.value.field == "provider"


def test_batch_size_is_images_per_call_as_in_the_local_engine():
    from mnist_edge.runtime.workers import WORKER_BATCH

    assert RayConfig().batch_size == PipelineConfig.batch_size
    assert RayConfig(provider="cpu", batch_size=16).images_per_call == 16
    # one thread per CPU worker: at most the local engine's worker processes' batch
    assert RayConfig(provider="cpu").images_per_call == WORKER_BATCH
    assert RayConfig(provider="cuda").images_per_call == PipelineConfig.batch_size


def test_block_size_follows_the_input_and_the_cluster():
    config = RayConfig()
    assert config.block_size(10_000, 2) == 1250  # four blocks per CPU
    assert config.block_size(100, 2) == 256  # never tiny tasks
    assert config.block_size(10_000_000, 2) == 4096  # never huge blocks
    assert config.block_size(100_000, 64) == 391
    assert RayConfig(files_per_task=100).block_size(10_000, 2) == 100
    assert RayConfig(batch_size=100).block_size(10_000, 2) == 1250  # images per call: not this
