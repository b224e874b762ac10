"""``mnist-serve`` end to end: a real server on a free loopback port, the real client (tritonclient).

One server for the module (the tiny linear model from helpers/models.py, a 1 MiB
body limit so the limit is cheap to hit). Every bad request is followed by a
good one on the same connection: the server answers it and stays up.
"""

from __future__ import annotations

import http.client
import io
import json
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from click.testing import CliRunner
from helpers.models import digit, linear_model
from helpers.serve_process import ServerProcess, serving
from PIL import Image
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from mnist_edge.runtime.cli import main as mnist_infer

BODY_LIMIT_MB = 1


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return linear_model(tmp_path_factory.mktemp("serve") / "linear.onnx")


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(
        model, tmp_path_factory.mktemp("serve-log"), "--max-body-mb", str(BODY_LIMIT_MB)
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def session(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.url, network_timeout=60.0)
    yield c
    c.close()


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 28, 28), dtype=np.float32)


def infer(client: triton.InferenceServerClient, x: np.ndarray, binary: bool = True) -> np.ndarray:
    tensor = triton.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("probabilities", binary_data=binary)
    return client.infer("mnist", [tensor], outputs=[out]).as_numpy("probabilities")


def binary_request(x: np.ndarray, name: str = "image") -> tuple[bytes, dict[str, str]]:
    """An infer body in the binary tensor data extension, built by hand."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + x.astype("<f4").tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def read_probabilities(response: http.client.HTTPResponse) -> np.ndarray:
    body = response.read()
    size = response.getheader("Inference-Header-Content-Length")
    return triton.InferResult.from_response_body(
        body, header_length=int(size) if size else None
    ).as_numpy("probabilities")


def multipart(files: list[tuple[str, bytes]], field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part per picture."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode=mode).save(out, format="PNG")
    return out.getvalue()


# ---------------------------------------------------------------- the protocol with tritonclient


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mnist")
    assert not client.is_model_ready("mnist", model_version="2")
    meta = client.get_model_metadata("mnist")
    parameters = meta.pop("parameters")
    assert meta == {
        "name": "mnist",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    # the model described from its file's metadata, in the protocol's scalar parameters
    assert parameters["kind"] == "digits"
    assert json.loads(parameters["labels"]) == [str(i) for i in range(10)]
    assert json.loads(parameters["preprocessing"])["where"] == "server"
    assert json.loads(parameters["preprocessing"])["size"] == 28
    assert (parameters["precision"], parameters["provider"]) == ("fp32", "cpu")
    assert all(isinstance(v, (str, int, float, bool)) for v in parameters.values())
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    with pytest.raises(InferenceServerException, match="unknown model 'resnet'"):
        client.get_model_metadata("resnet")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("rows", [1, 7, 40])
def test_infer_matches_onnxruntime_exactly(
    client: triton.InferenceServerClient, session: ort.InferenceSession, binary: bool, rows: int
) -> None:
    x = images(rows, seed=rows)
    expected = session.run(None, {"image": x})[0]
    got = infer(client, x, binary)
    assert got.dtype == np.float32 and got.shape == (rows, 10)
    np.testing.assert_array_equal(got, expected)


def test_infer_with_default_outputs_and_a_version(
    client: triton.InferenceServerClient, session: ort.InferenceSession
) -> None:
    x = images(2, seed=5)
    tensor = triton.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("mnist", [tensor], model_version="1", request_id="r1")
    np.testing.assert_array_equal(
        result.as_numpy("probabilities"), session.run(None, {"image": x})[0]
    )
    assert result.get_response()["id"] == "r1"


# ---------------------------------------------------------------- /v1/classify


def test_classify_returns_mnist_infer_records(
    server: ServerProcess, model: Path, tmp_path: Path
) -> None:
    pictures = {
        "mnist.png": png(digit(1)),  # already 28x28: taken as prepared
        "paper.png": png(
            np.kron(255 - digit(2), np.ones((4, 3), np.uint8))
        ),  # dark on light, 112x84
        "photo.png": png(np.stack([digit(3)] * 3, axis=-1)),  # RGB
    }
    for name, data in pictures.items():
        (tmp_path / name).write_bytes(data)
    cli = CliRunner().invoke(
        mnist_infer,
        ["--model", str(model), "--format", "jsonl", "--top-k", "3", "--workers", "0", "-q",
         *(str(tmp_path / n) for n in pictures)],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    expected = [json.loads(line) for line in cli.output.splitlines()]
    for record in expected:
        record["path"] = Path(record["path"]).name

    body, ctype = multipart(list(pictures.items()))
    conn = server.connection()
    conn.request("POST", "/v1/classify?top_k=3", body, {"Content-Type": ctype})
    response = conn.getresponse()
    payload = json.loads(response.read())
    assert response.status == 200, payload
    assert payload["results"] == expected
    conn.close()


# ---------------------------------------------------------------- bad input never takes it down


def _bomb() -> bytes:
    """A 16000x16000 black PNG of a few dozen KiB: 256 M pixels, over the default limit."""
    side = 16_000
    rows = zlib.compressobj(9)
    idat = b"".join(rows.compress(b"\0" * (1 + side // 8) * 1000) for _ in range(side // 1000))
    idat += rows.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BAD = {
    "malformed JSON": ("/v2/models/mnist/infer", {}, b'{"inputs": [{"name": ', 400, "not valid JSON"),
    "wrong tensor name": ("/v2/models/mnist/infer", *binary_request(images(1), "pixels"), 400, "unknown input 'pixels'"),
    "wrong shape": (
        "/v2/models/mnist/infer", *binary_request(np.zeros((1, 28, 28), np.float32)), 400, "has shape [1, 28, 28]",
    ),
    "wrong dtype": (
        "/v2/models/mnist/infer", {},
        json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "INT32", "data": [0] * 784}]}).encode(),
        400, "datatype 'INT32'; the model takes FP32",
    ),
    "body over the limit": (
        "/v2/models/mnist/infer", *binary_request(images(400)), 413, f"over the limit of {BODY_LIMIT_MB * 1024 * 1024} bytes",
    ),
    "unknown model": ("/v2/models/resnet/infer", *binary_request(images(1)), 404, "unknown model 'resnet'"),
    "unknown route": ("/v2/nowhere", {}, b"x" * 10_000, 404, "Not Found"),
    "corrupt picture": (
        "/v1/classify", *reversed(multipart([("broken.png", png(digit(0))[:60])])), 422, "broken.png: cannot read image",
    ),
    "decompression bomb": (
        "/v1/classify", *reversed(multipart([("bomb.png", _bomb())])), 422, "possible decompression bomb",
    ),
    "not a file upload": ("/v1/classify", {"Content-Type": "application/json"}, b"{}", 415, "multipart/form-data"),
    "top_k too big": (
        "/v1/classify?top_k=11", *reversed(multipart([("a.png", png(digit(0)))])), 400, "top_k must be 0 (none) to 10 (the model's classes), not 11",
    ),
    "deeply nested JSON": (
        "/v2/models/mnist/infer", {}, b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nests deeper than 32 levels",
    ),
    "NaN in FP32 data": (
        "/v2/models/mnist/infer", {},
        json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [float("nan")] * 784}]}).encode(),
        400, "NaN is not a number a request may carry",
    ),
}  # fmt: skip


def _fix(case: tuple) -> tuple[str, dict[str, str], bytes, int, str]:
    """(path, headers, body, status, message) from a BAD entry (headers: a dict or a content type)."""
    path, a, b, status, message = case
    body = a if isinstance(a, bytes) else b
    headers = b if isinstance(a, bytes) else a
    if isinstance(headers, str):
        headers = {"Content-Type": headers}
    return path, headers, body, status, message


@pytest.mark.parametrize("case", [_fix(c) for c in BAD.values()], ids=list(BAD))
def test_bad_request_gets_4xx_and_the_next_request_is_served(
    server: ServerProcess, session: ort.InferenceSession, case: tuple
) -> None:
    path, headers, body, status, message = case
    conn = server.connection()
    conn.request("POST", path, body, headers)
    response = conn.getresponse()
    payload = json.loads(response.read())
    assert response.status == status
    assert message in payload["error"]
    # the same connection (kept alive, not closed and reopened) serves the next request
    sock = conn.sock
    assert sock is not None and response.getheader("Connection", "").lower() != "close"
    x = images(3, seed=11)
    good, good_headers = binary_request(x)
    conn.request("POST", "/v2/models/mnist/infer", good, good_headers)
    response = conn.getresponse()
    assert response.status == 200 and conn.sock is sock
    np.testing.assert_array_equal(read_probabilities(response), session.run(None, {"image": x})[0])
    conn.close()


def test_chunked_body_over_the_limit_is_413(server: ServerProcess) -> None:
    conn = server.connection()
    chunks = (b"\0" * 65536 for _ in range(BODY_LIMIT_MB * 16 + 4))  # no Content-Length
    conn.request("POST", "/v2/models/mnist/infer", chunks, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and "over the limit" in json.loads(response.read())["error"]
    conn.close()


def test_tritonclient_reads_the_errors(
    client: triton.InferenceServerClient, session: ort.InferenceSession
) -> None:
    with pytest.raises(InferenceServerException, match="over the limit") as info:
        infer(client, images(400))  # 1.25 MB of tensor data
    assert info.value.status() == "413"
    with pytest.raises(InferenceServerException, match="unknown input 'img'"):
        bad = triton.InferInput("img", [1, 1, 28, 28], "FP32")
        bad.set_data_from_numpy(images(1))
        client.infer("mnist", [bad])
    x = images(2, seed=3)
    np.testing.assert_array_equal(infer(client, x), session.run(None, {"image": x})[0])


# ---------------------------------------------------------------- bounded load, memory flat


def _good_or_bad(i: int, x: np.ndarray) -> tuple[str, bytes, dict[str, str], bool]:
    """Request i of the load: 1 in 4 is bad (malformed, wrong name, corrupt picture);
    paths ``grpc:`` go over gRPC (the body a serialized ``ModelInferRequest``), as a
    ``ModelInfer`` call or, for ``grpc-stream:``, as the one request of a stream."""
    kind = i % 12
    if kind == 5:
        return "/v2/models/mnist/infer", b'{"inputs": [', {}, False
    if kind == 7:
        body, headers = binary_request(x, "nope")
        return "/v2/models/mnist/infer", body, headers, False
    if kind == 11:
        body, ctype = multipart([("bad.png", b"\x89PNG\r\n\x1a\n-garbage-")])
        return "/v1/classify", body, {"Content-Type": ctype}, False
    if kind in (1, 3, 9):  # gRPC: raw contents (good), or an input the model does not have
        request = pb.ModelInferRequest(model_name="mnist")
        request.inputs.add(
            name="nope" if kind == 9 else "image", datatype="FP32", shape=list(x.shape)
        )
        request.raw_input_contents.append(x.astype("<f4").tobytes())
        stream = kind == 3 or (kind == 9 and i % 24 == 21)
        return "grpc-stream:" if stream else "grpc:", request.SerializeToString(), {}, kind != 9
    if kind % 2 == 0:
        body, headers = binary_request(x)
        return "/v2/models/mnist/infer", body, headers, True
    entry = {
        "name": "image",
        "shape": list(x.shape),
        "datatype": "FP32",
        "data": x.ravel().tolist(),
    }
    return "/v2/models/mnist/infer", json.dumps({"inputs": [entry]}).encode(), {}, True


def _grpc_answer(stub: service_pb2_grpc.GRPCInferenceServiceStub, body: bytes, good: bool,
                 expected: np.ndarray, stream: bool) -> bool:  # fmt: skip
    """Whether the gRPC answer to ``body`` is right: the probabilities, or INVALID_ARGUMENT
    (on a stream: an error message)."""
    request = pb.ModelInferRequest.FromString(body)
    try:
        if stream:
            (answer,) = stub.ModelStreamInfer(iter([request]), timeout=30)
            if answer.error_message:
                return not good and "unknown input 'nope'" in answer.error_message
            reply = answer.infer_response
        else:
            reply = stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as exc:
        return not good and not stream and exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    probabilities = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(expected.shape)
    return good and np.array_equal(probabilities, expected)


def _load(
    server: ServerProcess, session: ort.InferenceSession, count: int, clients: int, deadline: float
) -> dict[str, int]:
    """``count`` requests from ``clients`` threads (keep-alive connections, a gRPC channel each)."""
    tally = {"good": 0, "bad": 0, "wrong": 0}
    lock = threading.Lock()
    xs = [images(1 + i % 4, seed=i) for i in range(16)]
    expected = [session.run(None, {"image": x})[0] for x in xs]

    def worker(start: int) -> None:
        conn = server.connection()
        channel = grpc.insecure_channel(server.grpc_url)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for i in range(start, count, clients):
            if time.monotonic() > deadline:
                break
            path, body, headers, good = _good_or_bad(i, xs[i % 16])
            if path.startswith("grpc"):
                stream = path == "grpc-stream:"
                ok = _grpc_answer(stub, body, good, expected[i % 16], stream)
            else:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                ok = (response.status == 200) == good
                if good and ok:
                    ok = np.array_equal(read_probabilities(response), expected[i % 16])
                else:
                    ok = ok and "error" in json.loads(response.read())
            with lock:
                tally["good" if good else "bad"] += 1
                tally["wrong"] += 0 if ok else 1
        conn.close()
        channel.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


def test_load_over_http_and_grpc_with_bad_requests_keeps_answers_right_and_memory_flat(
    server: ServerProcess, session: ort.InferenceSession
) -> None:
    deadline = time.monotonic() + 240  # bounded in time as well as in count
    warm = _load(server, session, 600, 8, deadline)
    assert warm["wrong"] == 0
    before = server.rss_bytes()
    rounds = [_load(server, session, 1200, 8, deadline) for _ in range(2)]
    after = server.rss_bytes()
    assert time.monotonic() < deadline, "the load did not finish in time"
    assert all(r["wrong"] == 0 and r["good"] + r["bad"] == 1200 for r in rounds), rounds
    assert after - before < 6 * 1024 * 1024, f"RSS grew {(after - before) / 2**20:.1f} MiB"
    assert server.proc.poll() is None


def test_every_json_answer_is_compact(server: ServerProcess) -> None:
    body, headers = json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28],
                                            "datatype": "FP32", "data": [0.5] * 784}]}).encode(), {}  # fmt: skip
    asks = [("GET", p, None) for p in ("/v2", "/v2/health/live", "/v2/health/ready",
            "/v2/models/mnist", "/v2/models/mnist/ready", "/v2/models/mnist/stats", "/nope")]  # fmt: skip
    asks += [("POST", "/v2/models/mnist/infer", body), ("POST", "/v2/models/mnist/infer", b"{")]
    conn = server.connection()
    for method, path, payload in asks:
        conn.request(method, path, payload, headers)
        answer = conn.getresponse().read()
        compact = json.dumps(json.loads(answer), separators=(",", ":"), ensure_ascii=False)
        assert answer == compact.encode(), (path, answer[:200])
    conn.close()
