"""``mnist-serve`` batching and shutdown, on servers started for each test.

Both servers hold a lone request for up to 2 s (``--max-wait-ms 2000``) so that
concurrent requests surely meet in one batch, and a request is surely still in
flight when SIGTERM arrives.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from click.testing import CliRunner
from helpers.models import linear_model
from helpers.serve_process import start_server

from mnist_edge.runtime.serve.cli import main as mnist_serve

HOLD_MS = "2000"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return linear_model(tmp_path / "linear.onnx")


def _infer(url: str, x: np.ndarray) -> np.ndarray:
    client = triton.InferenceServerClient(url, network_timeout=60.0)
    try:
        tensor = triton.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("mnist", [tensor]).as_numpy("probabilities")
    finally:
        client.close()


def _execution_count(url: str) -> int:
    client = triton.InferenceServerClient(url)
    try:
        return int(client.get_inference_statistics("mnist")["model_stats"][0]["execution_count"])
    finally:
        client.close()


def test_concurrent_requests_run_in_fewer_model_calls(model: Path, tmp_path: Path) -> None:
    server = start_server(model, tmp_path / "log", "--max-batch", "64", "--max-wait-ms", HOLD_MS)
    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        xs = [
            np.random.default_rng(i).random((1 + i % 3, 1, 28, 28), np.float32) for i in range(12)
        ]
        results: list[np.ndarray | None] = [None] * len(xs)
        start = threading.Barrier(len(xs))

        def client(i: int) -> None:
            start.wait()
            results[i] = _infer(server.url, xs[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        calls = _execution_count(server.url)
        assert calls < len(xs), f"{len(xs)} concurrent requests took {calls} model calls"
        for x, got in zip(xs, results, strict=True):
            np.testing.assert_array_equal(got, session.run(None, {"image": x})[0])
    finally:
        server.stop()


def test_sigterm_finishes_the_request_in_flight_and_exits_0(model: Path, tmp_path: Path) -> None:
    server = start_server(model, tmp_path / "log", "--max-wait-ms", HOLD_MS)
    x = np.random.default_rng(7).random((2, 1, 28, 28), np.float32)
    answer: dict[str, object] = {}

    def client() -> None:
        try:
            answer["probabilities"] = _infer(server.url, x)
        except Exception as exc:  # reported by the assertion below
            answer["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.5)  # the request is now waiting in the batcher (up to 2 s)
    sent = time.monotonic()
    server.proc.terminate()  # SIGTERM
    refused = False
    while time.monotonic() - sent < 1.2 and not refused:  # stops accepting at once
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            time.sleep(0.05)
        except OSError:
            refused = True
    thread.join(60)
    code = server.proc.wait(60)
    log = server.log.read_text()
    assert "error" not in answer, f"{answer.get('error')}\n{log}"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(answer["probabilities"], session.run(None, {"image": x})[0])
    assert refused, "new connections were still accepted after SIGTERM"
    assert code == 0, log
    assert "Application shutdown complete" in log


def test_missing_model_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(mnist_serve, ["--model", str(tmp_path / "none.onnx")])
    assert result.exit_code == 2
    assert "none.onnx not found" in result.output and "--model" in result.output


def test_busy_port_is_a_usage_error(model: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(mnist_serve, ["--model", str(model), "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
