"""The torch-free runtime on aarch64 gives x86's answers (run by ``make test-arm64``).

``tests/arm64/run.sh`` makes the case on the x86 host (``prepare.py``: digits, pictures,
the four bundled ONNX files, two ``.ort`` twins, and what x86's ONNX Runtime answers
through each front end) and runs this file inside an arm64 Debian root under
qemu-user-static, with ``MNIST_EDGE_ARM64_CASE`` naming the case folder. Without it
(``make test`` on the host) there is nothing to compare with and the module skips.

Labels must be equal. Probabilities may differ by ``PROB_ATOL``: ONNX Runtime's CPU
kernels are different code on the two machines (NEON vs AVX2/AVX-512 in MLAS), which
sums in another order and rounds the last bits differently; the pixels-in files also
round the resized picture to uint8, where a last-bit difference can move one pixel by 1.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CASE = Path(os.environ["MNIST_EDGE_ARM64_CASE"]) if "MNIST_EDGE_ARM64_CASE" in os.environ else None
EXPECTED: dict[str, Any] = (
    json.loads((CASE / "expected.json").read_text()) if CASE else {"models": [], "served": {}}
)
PROB_ATOL = 1e-4

pytestmark = [
    pytest.mark.skipif(CASE is None, reason="run by make test-arm64 (needs the x86 answers)"),
    pytest.mark.timeout(600),  # everything runs under emulation
]


def inputs() -> list[str]:
    return ["digits.npy", *EXPECTED["pictures"]]


@pytest.fixture(scope="module")
def measured() -> Iterator[dict[str, float]]:
    """The largest |dp| per check, written to the case's ``measured.json`` for run.sh's summary."""
    from mnist_edge.runtime.atomic import atomic_write_text

    worst: dict[str, float] = {}
    yield worst
    if CASE is not None and worst:
        atomic_write_text(
            CASE / "measured.json", json.dumps(worst, indent=1, sort_keys=True) + "\n"
        )


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> float:
    """Same paths and labels in the same order; each of the ten probabilities within PROB_ATOL.

    Returns the largest |dp|.
    """
    assert [(r["path"], r.get("label"), r.get("error")) for r in got] == [
        (r["path"], r.get("label"), r.get("error")) for r in want
    ]
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        gp = {t["label"]: t["confidence"] for t in g["top_k"]}
        wp = {t["label"]: t["confidence"] for t in w["top_k"]}
        assert gp.keys() == wp.keys(), g["path"]
        worst = max(worst, *(abs(gp[k] - wp[k]) for k in wp))
    assert worst <= PROB_ATOL, f"max |dp| {worst:.2e} > {PROB_ATOL:.0e}"
    return worst


def test_runs_on_aarch64() -> None:
    assert platform.machine() == "aarch64"
    assert EXPECTED["machine"] != "aarch64", "the expected answers must come from another machine"


@pytest.mark.parametrize("name", EXPECTED["models"])
def test_mnist_infer(name: str, measured: dict[str, float]) -> None:
    """``mnist-infer`` end to end: the .npy digits and the pictures, jsonl with all ten probabilities."""
    assert CASE is not None
    mnist_infer = str(Path(sys.executable).with_name("mnist-infer"))  # the venv's console script
    cmd = [mnist_infer, "--model", f"models/{name}", "--format", "jsonl", "--top-k", "10"]
    out = subprocess.run(
        [*cmd, "--provider", "cpu", "--quiet", *inputs()],
        cwd=CASE,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    measured[f"mnist-infer {name}"] = assert_same(got, EXPECTED["infer"][name])


@pytest.mark.parametrize("name", EXPECTED["models"])
def test_python_api(name: str, monkeypatch: pytest.MonkeyPatch, measured: dict[str, float]) -> None:
    """``mnist_edge.runtime.classify`` in this process gives the same records."""
    from mnist_edge.runtime import classify

    assert CASE is not None
    monkeypatch.chdir(CASE)
    got = classify(inputs(), model=Path("models") / name, top_k=10, provider="cpu")
    measured[f"classify {name}"] = assert_same(got, EXPECTED["infer"][name])


@pytest.fixture(scope="module", params=sorted(EXPECTED["served"]))
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from helpers.serve_process import start_server

    assert CASE is not None
    log = tmp_path_factory.mktemp("serve") / "server.log"
    proc = start_server(CASE / "models" / request.param, log, startup_timeout=300)
    yield request.param, proc
    assert proc.terminate() == 0, log.read_text()


def digits():
    import numpy as np

    assert CASE is not None
    return np.load(CASE / "digits.npy")[:, None].astype(np.float32) / 255.0  # (N, 1, 28, 28)


def assert_served(name: str, probabilities: Any) -> float:
    """The served model's labels equal x86's and its probabilities are within PROB_ATOL; returns max |dp|."""
    import numpy as np

    want = np.asarray(EXPECTED["served"][name], dtype=np.float32)
    got = np.asarray(probabilities, dtype=np.float32).reshape(want.shape)
    assert got.argmax(1).tolist() == want.argmax(1).tolist()
    np.testing.assert_allclose(got, want, rtol=0, atol=PROB_ATOL)
    return float(np.abs(got - want).max())


def test_serve_http(server: Any, measured: dict[str, float]) -> None:
    """``POST /v2/models/mnist/infer`` with a JSON tensor (the Open Inference Protocol's REST form)."""
    name, proc = server
    x = digits()
    body = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=120)
    try:
        conn.request("POST", "/v2/models/mnist/infer", json.dumps(body),
                     {"Content-Type": "application/json"})  # fmt: skip
        reply = conn.getresponse()
        data = json.loads(reply.read())
    finally:
        conn.close()
    assert reply.status == 200, data
    (output,) = [o for o in data["outputs"] if o["name"] == "probabilities"]
    measured[f"mnist-serve HTTP {name}"] = assert_served(name, output["data"])


def test_serve_grpc(server: Any, measured: dict[str, float]) -> None:
    """``ModelInfer`` over gRPC with tritonclient (tensors as raw bytes, its default)."""
    import tritonclient.grpc as tgrpc

    name, proc = server
    x = digits()
    client = tgrpc.InferenceServerClient(proc.grpc_url)
    try:
        tensor = tgrpc.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("mnist", [tensor], client_timeout=120)
    finally:
        client.close()
    measured[f"mnist-serve gRPC {name}"] = assert_served(name, result.as_numpy("probabilities"))
