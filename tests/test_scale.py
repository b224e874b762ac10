"""Scale-out on Ray Data (runtime/scale/), on a local Ray started here.

The guarantees of the local engine, checked against its Pipeline on the same
inputs: every input exactly once, in a result row or an error row (``.npy``
files: one row per image); labels identical, confidences within 1e-6; a file
deleted after listing gives an error row; a worker (task process or actor) that
dies mid-run is replaced and its block run again; after a warm-up, the job's
tasks find the model open in a worker process per CPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.models import digit, linear_model
from helpers.ray_dirs import remove_ray_dir
from PIL import Image

from mnist_edge.runtime.output import FORMATS
from mnist_edge.runtime.session import SessionConfig
from mnist_edge.runtime.stream import Pipeline, PipelineConfig

ray = pytest.importorskip("ray", reason="Ray is not installed: `make venv` (the scale extra)")

from mnist_edge.runtime.scale import stages  # noqa: E402  (after the skip: needs ray to run)
from mnist_edge.runtime.scale.engine import RayConfig, classify_dataset, plan_job  # noqa: E402

# A hung Ray job (e.g. actors starving the read tasks, ray-project/ray#44687) fails, never blocks.
pytestmark = pytest.mark.timeout(180)

IMAGES = 5000
CONFIG = RayConfig(batch_size=512)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray on the cores this machine has, no dashboard, a small object store."""
    # Ray's socket paths must stay short: a temp dir of its own, not the deep pytest one
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        _temp_dir=str(temp),
        logging_level="WARNING",
        log_to_driver=False,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    yield
    ray.shutdown()
    remove_ray_dir(temp)


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


def _local(specs: list[str], model: Path, top_k: int = 0) -> dict[str, dict]:
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


def _check_same(rows: list[dict], expected: dict[str, dict]) -> None:
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


def test_every_input_once_and_equal_to_local(local_ray, model, inputs):
    specs = [str(inputs / "a"), str(inputs / "b" / "*.png"), str(inputs / "nothing"),
             str(inputs / "missing.png"), str(inputs / "b" / "*.jpg")]  # fmt: skip
    rows = classify_dataset(specs, model, RayConfig(batch_size=512, top_k=3)).take_all()
    expected = _local(specs, model, top_k=3)
    # 3 bad files, 2 images in stack.npy; empty folder, missing, glob without match
    assert len(rows) == IMAGES + 3 + 2 + 3
    _check_same(rows, expected)
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
    _check_same(rows, _local(files, model))

    stack = str(inputs / "a" / "stack.npy")
    uris = [f"file://{inputs}/b/000*.png", f"file://{inputs}/nothing", f"file://{inputs}/nope"]
    rows = classify_dataset([*uris, f"file://{stack}"], model, CONFIG).take_all()
    expected = {f"file://{k}": v for k, v in _local([*files, stack], model).items()}
    expected[uris[1]] = {"error": "empty directory (no files in it)"}
    expected[uris[2]] = {"error": "no such file or directory"}
    assert f"file://{stack}[1]" in expected  # an array file behind a URI: a row per image
    _check_same(rows, expected)

    wrong = ray.data.from_items([{"data": b"x"}])
    with pytest.raises(Exception, match="no bytes or path column"):
        classify_dataset(wrong, model, CONFIG).take_all()


def test_a_file_deleted_after_listing_is_an_error_row(local_ray, model, tmp_path):
    folder = tmp_path / "vanishing"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(digit(i)).save(folder / f"{i:02d}.png")
    np.save(folder / "gone.npy", np.stack([digit(1), digit(2)]))
    results = classify_dataset([str(folder)], model, RayConfig(batch_size=8))  # listed, lazy
    (folder / "03.png").unlink()
    (folder / "gone.npy").unlink()
    rows = results.take_all()
    assert len(rows) == 21
    gone = ("03.png", "gone.npy")
    _check_same([r for r in rows if Path(r["path"]).name not in gone], _local([str(folder)], model))
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
    config = RayConfig(actors=actors, batch_size=100)
    rows = classify_dataset(files, model, config).take_all()
    assert marker.exists(), "no worker died: the test did not test anything"
    _check_same(rows, _local(files, model))


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
    job = plan_job(files, tmp_path / "fresh.onnx", RayConfig(batch_size=250))
    warm = job.warm_up()
    assert warm.workers == 2, "the local Ray has 2 CPUs: a worker process each"
    _check_same(job.dataset.take_all(), _local(files, tmp_path / "fresh.onnx"))
    seen = [line for path in log.iterdir() for line in path.read_text().split()]
    assert seen and set(seen) == {"open"}, seen


def _invoke(*args: str):
    from mnist_edge.runtime.cli import main

    return CliRunner().invoke(main, ["--engine", "ray", *args], catch_exceptions=False)


def test_cli_parquet_folder_and_exit_codes(local_ray, model, inputs, tmp_path):
    import pyarrow.parquet as pq

    good = sorted(str(p) for p in (inputs / "b").glob("001*.png"))
    out = tmp_path / "results"
    result = _invoke(*good, "--model", str(model), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"{len(good)} images, 0 failed" in result.stderr
    # one block of files: one worker warmed up for it
    assert re.search(r"Ray started in [\d.]+ s, 1 worker in [\d.]+ s\)", result.stderr)
    table = pq.read_table(out)
    assert table.column_names == list(stages.RESULT_COLUMNS)
    _check_same(table.to_pylist(), _local(good, model))

    bad = [*good[:5], str(inputs / "a" / "corrupt.png"), str(inputs / "missing.png")]
    result = _invoke(*bad, "--model", str(model), "-o", str(out))  # replaces the earlier run
    assert result.exit_code == 1, result.output
    assert "7 images, 2 failed" in result.stderr
    _check_same(pq.read_table(out).to_pylist(), _local(bad, model))

    missing = [str(inputs / "missing.png")]  # nothing to read: no worker is started for it
    result = _invoke(*missing, "--model", str(model), "--format", "jsonl")
    assert result.exit_code == 1, result.output
    assert "1 image, 1 failed" in result.stderr and "worker" not in result.stderr
    assert json.loads(result.stdout)["error"] == "no such file or directory"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_cli_text_formats_match_the_local_cli(local_ray, model, inputs, tmp_path, fmt):
    from mnist_edge.runtime.cli import main as local_main

    assert fmt in FORMATS
    specs = [
        *sorted(str(p) for p in (inputs / "a").glob("002*.png")),
        str(inputs / "a" / "notes.txt"),
    ]
    ours = tmp_path / f"ray.{fmt}"
    result = _invoke(
        *specs, "--model", str(model), "--format", fmt, "--top-k", "2", "-o", str(ours)
    )
    assert result.exit_code == 1, result.output
    local = CliRunner().invoke(
        local_main,
        [*specs, "--model", str(model), "--format", fmt, "--top-k", "2", "--workers", "0"],
    )
    assert local.exit_code == 1
    mine, theirs = ours.read_text().splitlines(), local.stdout.splitlines()
    assert mine[0] == theirs[0]  # the csv header / a first record
    assert sorted(mine) == sorted(theirs)  # same records, in Ray's order
    if fmt == "jsonl":
        assert {json.loads(line)["path"] for line in mine} == set(specs)


def test_cli_usage_errors_exit_2(local_ray, model, inputs, tmp_path):
    png = str(inputs / "a" / "00000.png")
    result = _invoke(png, "--model", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "o"))
    assert result.exit_code == 2 and "not found" in result.output
    assert _invoke(png, "--model", str(model)).exit_code == 2  # Parquet needs -o
    (tmp_path / "file").write_text("x")
    result = _invoke(png, "--model", str(model), "-o", str(tmp_path / "file"))
    assert result.exit_code == 2 and "not a folder" in result.output
    result = _invoke(png, "--model", str(model), "--top-k", "11", "--format", "jsonl")
    assert result.exit_code == 2 and "--top-k" in result.output
    result = _invoke(png, "--model", str(model), "--gpus-per-actor", "1", "--format", "jsonl")
    assert result.exit_code == 2 and "--gpus-per-actor" in result.output
    assert "no node of the cluster has that many" in result.output
    pixels = Path("artifacts/mnist.pixels.onnx")
    if pixels.is_file():  # made by `make export`
        result = _invoke(png, "--model", str(pixels), "--format", "jsonl")
        assert result.exit_code == 2 and "is a pixels-in model" in result.output
    result = _invoke(png, "--model", str(model), "--workers", "2", "--format", "jsonl")
    assert result.exit_code == 2 and "No such option '--workers'" in result.output


def test_cli_refuses_an_address_where_no_cluster_listens(model, inputs, monkeypatch):
    """Ray would retry such an address for minutes; the command says so at once, exit 2."""
    import socket

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("mnist-infer")  # a process of its own: no Ray yet
    png = str(inputs / "a" / "00000.png")
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        args = [png, "--model", str(model), "--ray-address", address, "--format", "jsonl"]
        proc = subprocess.run(
            [str(exe), "--engine", "ray", *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2, proc.stderr
        assert f"cannot connect to {address}: nothing answers there" in proc.stderr


def test_ray_options_belong_to_the_ray_command(model, inputs):
    """`--engine ray` hands the command line to the Ray front end; its options are its own."""
    from mnist_edge.runtime.cli import main, ray_command_line

    assert ray_command_line(["x", "--engine", "ray", "-q"]) == ["x", "-q"]
    assert ray_command_line(["--engine=ray", "x"]) == ["x"]
    assert ray_command_line(["x", "--engine", "local"]) is None
    assert ray_command_line(["--", "--engine", "ray"]) is None
    ray_help = CliRunner().invoke(main, ["--engine", "ray", "--help"])
    assert ray_help.exit_code == 0
    assert "mnist-infer --engine ray [OPTIONS] INPUTS" in ray_help.output
    assert "--cpus-per-actor" in ray_help.output and "--workers" not in ray_help.output
    local_help = CliRunner().invoke(main, ["--help"])
    assert "--engine" in local_help.output and "--actors" not in local_help.output
    png = str(inputs / "a" / "00000.png")
    local = CliRunner().invoke(main, [png, "--model", str(model), "--actors", "2"])
    assert local.exit_code == 2 and "No such option '--actors'" in local.output
    parquet = CliRunner().invoke(main, [png, "--model", str(model), "--format", "parquet"])
    assert parquet.exit_code == 2 and "needs --engine ray" in parquet.output


def test_config_errors_name_their_field():
    from mnist_edge.runtime.errors import ConfigError

    for kwargs, field in [
        ({"batch_size": 0}, "batch_size"),
        ({"actors": 0}, "actors"),
        ({"provider": "cuda", "gpus_per_actor": 0}, "gpus_per_actor"),
        ({"gpus_per_actor": 1}, "gpus_per_actor"),
        ({"invert": "sometimes"}, "invert"),
        ({"provider": "auto"}, "provider"),
    ]:
        with pytest.raises(ConfigError) as caught:
            RayConfig(**kwargs)
        assert caught.value.field == field, kwargs


def test_block_size_follows_the_input_and_the_cluster():
    config = RayConfig()
    assert config.block_size(10_000, 2) == 1250  # four blocks per CPU
    assert config.block_size(100, 2) == 256  # never tiny tasks
    assert config.block_size(10_000_000, 2) == 4096  # never huge blocks
    assert config.block_size(100_000, 64) == 391
    assert RayConfig(batch_size=100).block_size(10_000, 2) == 100
