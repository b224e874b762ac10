"""``mnist-serve`` over gRPC and its Prometheus metrics: a real server, the real client (tritonclient.grpc).

One server for the module (the tiny linear model from helpers/models.py); it
holds a lone request up to 300 ms (``--max-wait-ms 300``) so that requests sent
together over both protocols surely meet in one batch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from click.testing import CliRunner
from helpers.models import linear_model
from helpers.serve_process import ServerProcess, serving, start_server
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from mnist_edge.runtime.serve.cli import main as mnist_serve

pytestmark = pytest.mark.timeout(120)
HOLD_MS = "300"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return linear_model(tmp_path_factory.mktemp("grpc") / "linear.onnx")


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(model, tmp_path_factory.mktemp("grpc-log"), "--max-wait-ms", HOLD_MS) as proc:
        yield proc


@pytest.fixture(scope="module")
def session(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


@pytest.fixture
def client(server: ServerProcess) -> Iterator[tgrpc.InferenceServerClient]:
    c = tgrpc.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 28, 28), dtype=np.float32)


def grpc_infer(client: tgrpc.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    tensor = tgrpc.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # raw_input_contents, tritonclient's way
    return client.infer("mnist", [tensor]).as_numpy("probabilities")


def typed_request(x: np.ndarray, name: str = "mnist") -> pb.ModelInferRequest:
    """An infer request with the tensor in typed ``contents.fp32_contents``."""
    request = pb.ModelInferRequest(model_name=name, id="typed-1")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    return request


def scrape(server: ServerProcess) -> dict[str, float]:
    """``GET /metrics`` parsed: ``'name{labels}' -> value`` (labels as the server prints them)."""
    conn = server.connection()
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    assert response.status == 200 and response.getheader("content-type").startswith("text/plain")
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def test_health_and_metadata(client: tgrpc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist")
    meta = client.get_model_metadata("mnist", as_json=True)
    assert meta["name"] == "mnist" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}
    ]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "10"]}]
    server_meta = client.get_server_metadata(as_json=True)
    assert server_meta["name"] == "mnist-edge" and "statistics" in server_meta["extensions"]


@pytest.mark.parametrize("rows", [1, 7, 40])
def test_infer_raw_and_typed_contents_equal_onnxruntime_exactly(
    client: tgrpc.InferenceServerClient,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    session: ort.InferenceSession,
    rows: int,
) -> None:
    x = images(rows, seed=rows)
    expected = session.run(None, {"image": x})[0]
    np.testing.assert_array_equal(grpc_infer(client, x), expected)
    reply = stub.ModelInfer(typed_request(x), timeout=30)
    assert reply.id == "typed-1" and reply.model_name == "mnist" and reply.model_version == "1"
    (out,) = reply.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("probabilities", "FP32", [rows, 10])
    got = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(rows, 10)
    np.testing.assert_array_equal(got, expected)


def _code_and_message(call, *args) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30)
    return info.value.code(), info.value.details()


def test_bad_requests_are_status_codes_with_the_http_messages(
    server: ServerProcess, stub: service_pb2_grpc.GRPCInferenceServiceStub, session
) -> None:
    x = images(1)
    bad_shape = pb.ModelInferRequest(model_name="mnist")
    bad_shape.inputs.add(name="image", datatype="FP32", shape=[1, 28, 28])
    bad_shape.raw_input_contents.append(x.tobytes())
    nan = images(1)
    nan[0, 0, 3, 3] = np.nan
    too_short = pb.ModelInferRequest(model_name="mnist")
    too_short.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    too_short.raw_input_contents.append(x.tobytes()[:-4])
    cases = [
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="resnet"), grpc.StatusCode.NOT_FOUND, "unknown model 'resnet'; this server has 'mnist'"),
        (stub.ModelReady, pb.ModelReadyRequest(name="mnist", version="2"), grpc.StatusCode.NOT_FOUND, "model 'mnist' has no version '2'"),
        (stub.ModelInfer, typed_request(x, name="resnet"), grpc.StatusCode.NOT_FOUND, "unknown model 'resnet'"),
        (stub.ModelInfer, bad_shape, grpc.StatusCode.INVALID_ARGUMENT, "input 'image' has shape [1, 28, 28]; the model takes [N, 1, 28, 28]"),
        (stub.ModelInfer, typed_request(nan), grpc.StatusCode.INVALID_ARGUMENT, "input 'image' has NaN or infinite values"),
        (stub.ModelInfer, too_short, grpc.StatusCode.INVALID_ARGUMENT, "binary_data_size is 3132 bytes"),
        (stub.ModelInfer, typed_request(images(1025)), grpc.StatusCode.RESOURCE_EXHAUSTED, "1025 rows, over the limit of 1024"),
    ]  # fmt: skip
    for call, request, code, message in cases:
        got_code, got_message = _code_and_message(call, request)
        assert got_code == code, got_message
        assert message in got_message and "\n" not in got_message
    # the same request over HTTP gets the same words
    conn = server.connection()
    body = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
            ]
        }
    )
    conn.request("POST", "/v2/models/mnist/infer", body)
    response = conn.getresponse()
    assert response.status == 400
    assert (
        "input 'image' has shape [1, 28, 28]; the model takes [N, 1, 28, 28]"
        in json.loads(response.read())["error"]
    )
    conn.close()
    # and the server still answers
    reply = stub.ModelInfer(typed_request(x), timeout=30)
    np.testing.assert_array_equal(
        np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(1, 10),
        session.run(None, {"image": x})[0],
    )


def test_http_and_grpc_requests_share_one_batch(
    server: ServerProcess, client: tgrpc.InferenceServerClient, session: ort.InferenceSession
) -> None:
    before = client.get_inference_statistics("mnist", as_json=True)["model_stats"][0]
    xs = [images(1, seed=100 + i) for i in range(4)]
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(4)

    def over_grpc(i: int) -> None:
        c = tgrpc.InferenceServerClient(server.grpc_url)
        barrier.wait()
        results[i] = grpc_infer(c, xs[i])
        c.close()

    def over_http(i: int) -> None:
        c = thttp.InferenceServerClient(server.url)
        tensor = thttp.InferInput("image", [1, 1, 28, 28], "FP32")
        tensor.set_data_from_numpy(xs[i])
        barrier.wait()
        results[i] = c.infer("mnist", [tensor]).as_numpy("probabilities")
        c.close()

    threads = [
        threading.Thread(target=over_grpc if i % 2 else over_http, args=(i,)) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = client.get_inference_statistics("mnist", as_json=True)["model_stats"][0]
    for i, x in enumerate(xs):
        np.testing.assert_array_equal(results[i], session.run(None, {"image": x})[0])
    rows = int(after["inference_count"]) - int(before.get("inference_count", 0))
    calls = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert rows == 4 and calls < 4, (rows, calls)  # at least one batch held both protocols


def test_metrics_count_requests_by_protocol_endpoint_and_status(
    server: ServerProcess, client: tgrpc.InferenceServerClient
) -> None:
    before = scrape(server)
    grpc_infer(client, images(3))
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("resnet")
    conn = server.connection()
    conn.request("POST", "/v2/models/mnist/infer", b"{not json")
    assert conn.getresponse().status == 400
    conn.close()
    after = scrape(server)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    requests = 'mnist_serve_requests_total{{endpoint="{}",protocol="{}",status="{}"}}'
    assert delta(requests.format("infer", "grpc", "OK")) == 1
    assert delta(requests.format("model_metadata", "grpc", "NOT_FOUND")) == 1
    assert delta(requests.format("infer", "http", "400")) == 1
    model = '{model="mnist",version="1"}'
    assert delta(f"mnist_inference_count_total{model}") == 3
    assert delta(f"mnist_inference_exec_count_total{model}") == 1
    assert delta(f"mnist_inference_request_success_total{model}") == 1
    assert delta('mnist_inference_batch_size_bucket{le="2.0",model="mnist",version="1"}') == 0
    assert delta('mnist_inference_batch_size_bucket{le="4.0",model="mnist",version="1"}') == 1
    assert delta(f"mnist_inference_queue_duration_seconds_count{model}") == 1
    latency = 'mnist_serve_request_duration_seconds_count{endpoint="infer",protocol="grpc"}'
    assert delta(latency) == 1
    assert any(re.match(r"mnist_inference_compute_duration_seconds_bucket", k) for k in after)


def test_statistics_over_grpc_match_http(
    server: ServerProcess, client: tgrpc.InferenceServerClient
) -> None:
    grpc_infer(client, images(2))
    over_grpc = client.get_inference_statistics("mnist", as_json=True)["model_stats"][0]
    http_client = thttp.InferenceServerClient(server.url)
    over_http = http_client.get_inference_statistics("mnist")["model_stats"][0]
    http_client.close()
    assert int(over_grpc["inference_count"]) == over_http["inference_count"]
    assert int(over_grpc["execution_count"]) == over_http["execution_count"]
    sizes = {int(b["batch_size"]) for b in over_grpc["batch_stats"]}
    assert sizes == {b["batch_size"] for b in over_http["batch_stats"]} and 2 in sizes


def test_sigterm_drains_grpc_and_http_and_exits_0(model: Path, tmp_path: Path) -> None:
    server = start_server(model, tmp_path / "server.log", "--max-wait-ms", "1500")
    x = images(1)
    results: dict[str, np.ndarray | BaseException] = {}

    def call(protocol: str) -> None:
        try:
            if protocol == "grpc":
                c = tgrpc.InferenceServerClient(server.grpc_url)
                results[protocol] = grpc_infer(c, x)
            else:
                c = thttp.InferenceServerClient(server.url)
                tensor = thttp.InferInput("image", [1, 1, 28, 28], "FP32")
                tensor.set_data_from_numpy(x)
                results[protocol] = c.infer("mnist", [tensor]).as_numpy("probabilities")
            c.close()
        except BaseException as exc:  # reported by the assertion below
            results[protocol] = exc

    try:
        threads = [threading.Thread(target=call, args=(p,)) for p in ("grpc", "http")]
        for t in threads:
            t.start()
        time.sleep(0.5)  # both requests are now held in the batcher
        assert server.terminate(timeout=30) == 0, server.log.read_text()
        for t in threads:
            t.join(30)
    finally:
        server.stop()
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"image": x}
    )[0]
    for protocol in ("grpc", "http"):
        assert isinstance(results[protocol], np.ndarray), results[protocol]
        np.testing.assert_array_equal(results[protocol], expected)


def test_busy_grpc_port_is_a_usage_error(model: Path, server: ServerProcess) -> None:
    result = CliRunner().invoke(
        mnist_serve, ["--model", str(model), "--port", "0", "--grpc-port", str(server.grpc_port)]
    )
    assert result.exit_code == 2, result.output
    assert "--grpc-port" in result.output and "cannot listen on" in result.output


def test_no_grpc_serves_http_only(model: Path, tmp_path: Path) -> None:
    server = start_server(model, tmp_path / "server.log", "--no-grpc", "--no-metrics")
    try:
        assert server.grpc_port is None
        conn = server.connection()
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 404
        conn.close()
    finally:
        assert server.terminate() == 0


def test_the_runtime_imports_no_grpc_or_prometheus() -> None:
    """A runtime-only install needs neither: they come with the `serve` extra."""
    code = (
        "import sys, mnist_edge.runtime.cli, mnist_edge.runtime.classifier, "
        "mnist_edge.runtime.serve, mnist_edge.runtime.serve.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'grpc', 'prometheus_client', 'tritonclient', 'google'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
