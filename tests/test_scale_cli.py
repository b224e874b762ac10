"""``mnist-infer --engine ray``: its output, its options, and one ``Error:`` line for bad input.

Runs the command in this process (``CliRunner``) on a local Ray started here;
results are checked against the local engine's on the same files.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from helpers.models import digit, linear_model
from helpers.scale import check_same, local_records
from helpers.scale import local_ray as start_local_ray
from PIL import Image

from mnist_edge.runtime.output import FORMATS

ray = pytest.importorskip("ray", reason="Ray is not installed: `make venv` (the scale extra)")

from mnist_edge.runtime.scale import stages  # noqa: E402  (after the skip: needs ray to run)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def local_ray():
    with start_local_ray():
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return linear_model(tmp_path_factory.mktemp("model") / "mnist.onnx")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """400 digit PNGs in two folders, plus files that must become error rows."""
    root = tmp_path_factory.mktemp("inputs")
    noise = np.random.default_rng(5).integers(0, 40, (400, 28, 28), dtype=np.uint8)
    for sub in ("a", "b"):
        (root / sub).mkdir()
    for i in range(400):
        pixels = np.maximum(digit(i % 53), noise[i])
        Image.fromarray(pixels).save(root / ("a", "b")[i % 2] / f"{i:05d}.png")
    (root / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def _invoke(*args: str) -> Result:
    from mnist_edge.runtime.cli import main

    return CliRunner().invoke(main, ["--engine", "ray", *args], catch_exceptions=False)


def _one_error(result: Result, exit_code: int) -> str:
    """The one ``Error:`` line of a refused command (no traceback), after checking its exit code."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _blames(error: str, option: str) -> bool:
    """Whether an ``Error:`` line names ``option`` as the one at fault."""
    return re.search(rf"Invalid value for '?{re.escape(option)}'?:", error) is not None


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
    check_same(table.to_pylist(), local_records(good, model))

    bad = [*good[:5], str(inputs / "a" / "corrupt.png"), str(inputs / "missing.png")]
    result = _invoke(*bad, "--model", str(model), "-o", str(out))  # replaces the earlier run
    assert result.exit_code == 1, result.output
    assert "7 images, 2 failed" in result.stderr
    check_same(pq.read_table(out).to_pylist(), local_records(bad, model))

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
    dash = _invoke(*specs, "--model", str(model), "--format", fmt, "--top-k", "2", "-o", "-")
    assert dash.exit_code == 1, dash.output
    assert sorted(dash.stdout.splitlines()) == sorted(theirs)  # -o -: standard output
    assert not Path("-").exists()


def _logs_workers(monkeypatch, log: Path) -> None:
    """Swap in a stage whose workers write, per model call, their provider and the call's size.

    The classes are made here, so that they travel to the workers by value."""

    class Counting:
        def __init__(self, classifier) -> None:
            self.classifier = classifier

        def __getattr__(self, name):
            return getattr(self.classifier, name)

        def predict(self, images):
            with open(log / str(id(self)), "a") as f:
                f.write(f"{self.classifier.provider} {len(images)}\n")
            return self.classifier.predict(images)

    class LogsCalls(stages.ClassifyFiles):
        def __init__(self, job):
            super().__init__(job)
            self.classifier = Counting(self.classifier)

    monkeypatch.setattr(stages, "ClassifyFiles", LogsCalls)


@pytest.mark.parametrize(
    ("provider", "pool", "shown"),
    [("auto", ["--actors", "1"], "cpu (auto) (ray, 1 actors"), ("cpu", [], "cpu (ray, tasks")],
    ids=["auto-actors", "named-tasks"],
)
def test_the_summary_and_the_workers_report_one_provider_and_batch_size(
    local_ray, model, inputs, tmp_path, monkeypatch, provider, pool, shown
):
    log = tmp_path / "calls"
    log.mkdir()
    _logs_workers(monkeypatch, log)
    files = sorted(str(p) for p in (inputs / "a").glob("00*.png"))[:120]
    result = _invoke(
        *files, "--model", str(model), "--provider", provider, *pool,
        "--batch-size", "16", "--files-per-task", "40", "--format", "jsonl", "-o", "-",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"provider {shown}" in result.stderr
    labels = {r["path"]: r["label"] for r in map(json.loads, result.stdout.splitlines())}
    assert labels == {k: v["label"] for k, v in local_records(files, model).items()}
    calls = [line.split() for path in log.iterdir() for line in path.read_text().splitlines()]
    assert {p for p, _ in calls} == {"CPUExecutionProvider"}  # what the summary named
    sizes = sorted(int(n) for _, n in calls)
    assert sum(sizes) == len(files) and sizes[-1] == 16  # --batch-size: images per model call


def test_bad_input_gives_one_error_line(local_ray, model, inputs, tmp_path):
    png = str(inputs / "a" / "00000.png")
    out = ["-o", str(tmp_path / "o")]
    error = _one_error(_invoke(png, "--model", str(tmp_path / "none.onnx"), *out), 2)
    assert _blames(error, "--model") and "not found" in error
    error = _one_error(_invoke(png, "--model", str(model), "--batch-size", "0", *out), 2)
    assert _blames(error, "--batch-size")
    error = _one_error(_invoke(png, "--model", str(model), "--files-per-task", "0", *out), 2)
    assert _blames(error, "--files-per-task")
    error = _one_error(_invoke(png, "--model", str(model), "-o", "-"), 2)  # Parquet: a folder
    assert _blames(error, "--format") and "standard output" in error  # output.check_streams
    assert not Path("-").exists()
    error = _one_error(_invoke(png, "--model", str(model), "--provider", "nope", *out), 2)
    assert _blames(error, "--provider") and "unknown provider 'nope'" in error
    error = _one_error(_invoke(png, "--model", str(model)), 2)
    assert _blames(error, "-o") and "Parquet folder" in error  # needs -o
    (tmp_path / "file").write_text("x")
    error = _one_error(_invoke(png, "--model", str(model), "-o", str(tmp_path / "file")), 2)
    assert _blames(error, "-o") and "not a folder" in error
    error = _one_error(_invoke(png, "--model", str(model), "-o", str(tmp_path)), 2)
    assert _blames(error, "-o") and "holds files other than Parquet" in error  # only Parquet
    error = _one_error(
        _invoke(png, "--model", str(model), "--format", "csv", "-o", str(tmp_path)), 2
    )
    assert _blames(error, "-o") and "is a folder; name a file" in error  # as the local engine
    error = _one_error(
        _invoke(png, "--model", str(model), "-o", str(tmp_path / "x.csv" / "y.csv")), 2
    )
    assert _blames(error, "-o") and "x.csv does not exist" in error  # output.check_output_file
    error = _one_error(_invoke(png, "--model", str(model), "--top-k", "11", "--format", "jsonl"), 2)
    assert _blames(error, "--top-k")
    args = ["--provider", "cuda", "--gpus-per-actor", "1", "--format", "jsonl"]
    error = _one_error(_invoke(png, "--model", str(model), *args), 2)  # named: stays cuda
    assert _blames(error, "--gpus-per-actor") and "no node of the cluster has that many" in error
    error = _one_error(
        _invoke(png, "--model", str(model), "--gpus-per-actor", "1", "--format", "jsonl"), 2
    )
    assert _blames(error, "--provider") and "auto picks cpu" in error
    pixels = Path("artifacts/mnist.pixels.onnx")
    if pixels.is_file():  # made by `make export`
        error = _one_error(_invoke(png, "--model", str(pixels), "--format", "jsonl"), 2)
        assert "is a pixels-in model" in error
    error = _one_error(
        _invoke(png, "--model", str(model), "--workers", "2", "--format", "jsonl"), 2
    )
    assert "No such option '--workers'" in error


def test_without_ray_one_line_names_the_extra(model, inputs, monkeypatch):
    """As mnist-serve, -train and -export: exit 1, the pip command for a checkout, no usage block."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, find_spec finds nothing
    png = str(inputs / "a" / "00000.png")
    result = _invoke(png, "--model", str(model), "--format", "jsonl")
    error = _one_error(result, 1)
    assert "Usage:" not in result.output
    assert error == (
        "Error: mnist-infer --engine ray needs ray, which are not installed; install mnist-edge "
        "with the scale extra (from a clone: pip install '.[scale]')"
    )


def test_cli_refuses_an_address_where_no_cluster_listens(model, inputs, monkeypatch):
    """Ray would retry such an address for minutes; the command says so at once, exit 2."""
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
        assert "Traceback" not in proc.stderr
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
    assert "--files-per-task" in ray_help.output
    local_help = CliRunner().invoke(main, ["--help"])
    assert "--engine" in local_help.output and "--actors" not in local_help.output
    png = str(inputs / "a" / "00000.png")
    local = CliRunner().invoke(main, [png, "--model", str(model), "--actors", "2"])
    assert local.exit_code == 2 and "No such option '--actors'" in local.output
    parquet = CliRunner().invoke(main, [png, "--model", str(model), "--format", "parquet"])
    assert parquet.exit_code == 2 and "written by --engine ray only" in parquet.output
