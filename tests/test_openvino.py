"""The OpenVINO execution provider, for real: parity with the CPU provider, `auto`, mnist-infer.

onnxruntime-openvino replaces the stock onnxruntime, so these run in a second
venv: ``make test-openvino`` (part of ``make test``) makes ``.venv-openvino``,
has ``.venv`` train and export small models into ``build/openvino-models``, and
runs this file there with ``MNIST_EDGE_OPENVINO_MODELS`` pointing at them. In
``.venv`` the whole file skips with one line; the selection logic and the
missing-provider error are tested there (tests/test_provider_choice.py).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers.serve_process import start_server
from PIL import Image

from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.idx import read_idx
from mnist_edge.runtime.session import (
    CPU,
    OPENVINO,
    OpenVINOConfig,
    ProviderError,
    SessionConfig,
)

REPO = Path(__file__).resolve().parents[1]
MODELS_ENV = "MNIST_EDGE_OPENVINO_MODELS"
RAW = REPO / "data" / "MNIST" / "raw"

if OPENVINO not in ort.get_available_providers():
    pytest.skip(
        "this onnxruntime has no OpenVINO provider; `make test-openvino` runs these in .venv-openvino",
        allow_module_level=True,
    )
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    """``{"fp32": mnist.onnx, "int8": mnist.int8.onnx}`` from $MNIST_EDGE_OPENVINO_MODELS.

    Under make the folder must hold them (a missing file fails); run by hand
    without the variable, the tests skip unless build/openvino-models has them.
    """
    folder = Path(os.environ.get(MODELS_ENV, REPO / "build" / "openvino-models"))
    files = {"fp32": folder / "mnist.onnx", "int8": folder / "mnist.int8.onnx"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing and MODELS_ENV in os.environ:
        pytest.fail(f"{MODELS_ENV}={folder} lacks {', '.join(missing)}")
    if missing:
        pytest.skip(f"no models in {folder}; `make test-openvino` makes them")
    return files


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    """The 10k MNIST test digits uint8 (N, 28, 28) and labels (N,)."""
    images = read_idx(next(RAW.glob("t10k-images-idx3-ubyte*")))
    labels = read_idx(next(RAW.glob("t10k-labels-idx1-ubyte*")))
    return images, labels.astype(np.int64)


def _probabilities(model: Path, provider: str, images: np.ndarray) -> tuple[str, np.ndarray]:
    clf = Classifier(model, config=SessionConfig(provider=provider))
    return clf.provider, clf.predict(images).probabilities  # (N, 10)


def test_int8_on_openvino_matches_the_cpu_provider(models, test_set) -> None:
    images, labels = test_set
    got, ov = _probabilities(models["int8"], "openvino", images)
    _, cpu = _probabilities(models["int8"], "cpu", images)
    assert got == OPENVINO
    same = np.mean(ov.argmax(1) == cpu.argmax(1))
    gap = abs(np.mean(ov.argmax(1) == labels) - np.mean(cpu.argmax(1) == labels))
    assert same >= 0.999, f"labels equal on {same:.4%} of {len(labels)}"
    assert gap <= 0.001, f"accuracy differs by {gap * 100:.2f} points"


def test_fp32_on_openvino_matches_the_cpu_provider(models, test_set) -> None:
    images, _ = test_set
    got, ov = _probabilities(models["fp32"], "openvino", images)
    _, cpu = _probabilities(models["fp32"], "cpu", images)
    assert got == OPENVINO
    assert np.abs(ov - cpu).max() <= 1e-4  # the default f32 precision hint keeps fp32 numerics


def test_auto_runs_int8_on_openvino_and_fp32_on_cpu(models) -> None:
    assert Classifier(models["int8"]).provider == OPENVINO
    assert Classifier(models["fp32"]).provider == CPU


def test_settings_reach_openvino(models, test_set) -> None:
    """Threads and the precision hint are accepted by the provider; an absent device is an error."""
    images, _ = test_set
    config = SessionConfig(
        provider="openvino", threads=1, openvino=OpenVINOConfig(precision="bf16")
    )
    probs = Classifier(models["fp32"], config=config).predict(images[:256]).probabilities
    assert probs.shape == (256, 10) and np.allclose(probs.sum(1), 1, atol=1e-2)
    absent = SessionConfig(provider="openvino", openvino=OpenVINOConfig(device="GPU.7"))
    with pytest.raises(ProviderError, match="openvino could not run") as info:
        Classifier(models["int8"], config=absent)
    assert "\n" not in str(info.value)


def _mnist_infer(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("mnist-infer")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("provider", ["openvino", "auto"])
def test_mnist_infer_on_openvino_end_to_end(models, test_set, tmp_path, provider) -> None:
    images, labels = test_set
    count = 300
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(count):
        Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    runs = {}
    for asked in ("cpu", provider):
        out = tmp_path / f"{asked}.csv"
        run = _mnist_infer(
            str(folder), "--model", str(models["int8"]), "--provider", asked,
            "--format", "csv", "-o", str(out),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        rows = sorted(csv.DictReader(io.StringIO(out.read_text())), key=lambda r: r["path"])
        assert len(rows) == count and all(r["error"] == "" for r in rows)
        runs[asked] = (run.stderr, np.array([int(r["label"]) for r in rows]))
    summary, got = runs[provider]
    want = "openvino (auto)" if provider == "auto" else "openvino,"
    assert f"provider {want}" in summary, summary
    assert np.mean(got == runs["cpu"][1]) >= 0.99  # the same pipeline on the CPU provider
    assert np.mean(got == labels[:count]) >= 0.9


def test_auto_through_the_workers_is_explicit_openvino_bit_for_bit(models, test_set, tmp_path):
    """`auto` is resolved once, where the model opens: the worker path runs what the summary says."""
    images, _ = test_set
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(300):
        Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    runs = {}
    for asked in ("auto", "openvino", "cpu"):
        run = _mnist_infer(
            str(folder), "--model", str(models["int8"]), "--provider", asked, "--workers", "2",
            "--top-k", "10", "--format", "jsonl",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        runs[asked] = (run.stderr, sorted(run.stdout.splitlines()))
    assert "provider openvino (auto)" in runs["auto"][0], runs["auto"][0]
    assert runs["auto"][1] == runs["openvino"][1]  # every probability, bit for bit
    assert runs["openvino"][1] != runs["cpu"][1]  # the two providers are told apart here


def test_mnist_serve_on_openvino(models, test_set, tmp_path) -> None:
    images, _ = test_set
    x = images[:8].astype(np.float32)[:, None] / np.float32(255)  # (8, 1, 28, 28)
    server = start_server(models["int8"], tmp_path / "serve.log", "--provider", "openvino")
    try:
        body = {
            "inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
        }  # fmt: skip
        conn = server.connection()
        conn.request("POST", "/v2/models/mnist/infer", json.dumps(body).encode(),
                     {"Content-Type": "application/json"})  # fmt: skip
        reply = conn.getresponse()
        assert reply.status == 200, reply.read()
        (output,) = json.loads(reply.read())["outputs"]
        conn.close()
    finally:
        server.stop()
    assert "(int8, openvino)" in server.log.read_text()
    got = np.array(output["data"], np.float32).reshape(8, 10)
    _, cpu = _probabilities(models["int8"], "cpu", images[:8])
    assert list(got.argmax(1)) == list(cpu.argmax(1))
