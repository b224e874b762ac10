"""Hostile requests against a real ``mnist-serve``: each gets a 4xx (never a 5xx), and the next good request is answered.

Bodies the JSON parser must not see (deep nesting, floods of values), numbers
the model must not see (NaN, Infinity), and request heads over the size limit.
The rules themselves are unit-tested without a server in test_serve_protocol.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers.models import linear_model
from helpers.serve_process import ServerProcess, serving

from mnist_edge.runtime.serve.headers import MAX_HEAD_BYTES

pytestmark = pytest.mark.timeout(120)
INFER = "/v2/models/mnist/infer"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return linear_model(tmp_path_factory.mktemp("hostile") / "linear.onnx")


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(model, tmp_path_factory.mktemp("hostile-log"), "--no-grpc") as proc:
        yield proc
    assert "Traceback" not in proc.log.read_text()  # after the shutdown, too


def good_body(seed: int = 0) -> tuple[bytes, np.ndarray]:
    x = np.random.default_rng(seed).random((1, 1, 28, 28), dtype=np.float32)
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 1, 28, 28],
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()
    return body, x


def post(
    server: ServerProcess, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    conn = server.connection()
    try:
        conn.request("POST", INFER, body, headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def assert_still_serving(server: ServerProcess, model: Path) -> None:
    body, x = good_body(7)
    status, payload = post(server, body)
    assert status == 200, payload
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"image": x}
    )[0]
    np.testing.assert_array_equal(
        np.array(payload["outputs"][0]["data"], np.float32), expected.ravel()
    )


def _tensor(data: str) -> bytes:
    return (
        '{"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": '
        + data
        + "}]}"
    ).encode()


HOSTILE = {
    "100k nested lists": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nests deeper than 32 levels"),
    "100k nested objects": (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, 400, "nests deeper than 32 levels"),
    "unclosed nesting": (b"[" * 500_000, 400, "nests deeper than 32 levels"),
    "a flood of values": (_tensor("[" + "0," * 1_000_000 + "0]"), 413, "more than the model's input allows"),
    "NaN literal": (_tensor("[NaN" + ", 0.0" * 783 + "]"), 400, "NaN is not a number a request may carry"),
    "Infinity literal": (_tensor("[-Infinity" + ", 0.0" * 783 + "]"), 400, "-Infinity is not a number"),
    "a number over float32": (_tensor("[1e39" + ", 0.0" * 783 + "]"), 400, "NaN or infinite values"),
    "a number over float64": (_tensor("[1e999" + ", 0.0" * 783 + "]"), 400, "NaN or infinite values"),
    "a 10k-digit integer": (_tensor("[" + "9" * 10_000 + ", 0.0" * 783 + "]"), 400, "not valid JSON"),
}  # fmt: skip


@pytest.mark.parametrize("body, status, message", HOSTILE.values(), ids=list(HOSTILE))
def test_hostile_bodies_are_4xx_and_the_next_request_is_served(
    server: ServerProcess, model: Path, body: bytes, status: int, message: str
) -> None:
    got, payload = post(server, body)
    assert (got, "\n" in payload["error"]) == (status, False), payload
    assert message in payload["error"]
    assert_still_serving(server, model)


def test_binary_nan_is_refused(server: ServerProcess, model: Path) -> None:
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 14, 14] = np.inf
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}]}
    ).encode()  # fmt: skip
    status, payload = post(
        server, header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 400 and "NaN or infinite values" in payload["error"]
    assert_still_serving(server, model)


def _raw_exchange(server: ServerProcess, chunks: list[bytes]) -> bytes:
    """Send ``chunks`` on a fresh connection; what the server answered before closing it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after answering
        reply = b""
        try:
            while data := sock.recv(65536):
                reply += data
        except ConnectionResetError:
            pass
        return reply


@pytest.mark.parametrize("streamed", [False, True], ids=["one chunk", "a head that never ends"])
def test_request_heads_over_the_limit_get_431(
    server: ServerProcess, model: Path, streamed: bool
) -> None:
    big = b"X-Flood: " + b"a" * (2 * MAX_HEAD_BYTES)
    if streamed:
        chunks = [b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"] + [
            big[i : i + 4096] for i in range(0, len(big), 4096)
        ]
    else:
        chunks = [b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n\r\n"]  # fmt: skip
    reply = _raw_exchange(server, chunks)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b"over the limit of" in reply
    assert_still_serving(server, model)


def test_many_small_headers_are_bounded_too(server: ServerProcess, model: Path) -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEAD_BYTES // 8))
    reply = _raw_exchange(
        server, [b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"]
    )
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert_still_serving(server, model)


def test_normal_heads_and_keep_alive_requests_pass(server: ServerProcess) -> None:
    """Requests whose bodies are larger than the head limit, back to back on one connection."""
    conn = server.connection()
    body, _ = good_body()
    big = body + b" " * (2 * MAX_HEAD_BYTES)  # trailing whitespace: still valid JSON
    for _ in range(3):
        conn.request("POST", INFER, big, {"X-Small": "a" * 1000})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
    conn.close()
