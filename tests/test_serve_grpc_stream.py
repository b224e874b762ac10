"""``mnist-serve``'s ``ModelStreamInfer``: many requests on one gRPC stream, with the real clients.

One server for the module (the tiny linear model of helpers/models.py), holding
a lone request up to 200 ms (``--max-wait-ms 200``) so that requests sent
together on a stream surely meet in one batch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
from helpers.models import linear_model
from helpers.serve_process import ServerProcess, serving, start_server
from test_serve_grpc import images, scrape
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return linear_model(tmp_path_factory.mktemp("stream") / "linear.onnx")


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(model, tmp_path_factory.mktemp("stream-log"), "--max-wait-ms", "200") as proc:
        yield proc


@pytest.fixture(scope="module")
def session(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def raw_request(x: np.ndarray, request_id: str, name: str = "mnist") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, id=request_id)
    request.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request


def probabilities(reply: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(list(reply.outputs[0].shape))


def stats(server: ServerProcess) -> tuple[int, int]:
    """(images, model calls) the server has run so far."""
    client = tgrpc.InferenceServerClient(server.grpc_url)
    s = client.get_inference_statistics("mnist", as_json=True)["model_stats"][0]
    client.close()
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def test_tritonclient_stream_answers_in_order_equal_to_onnxruntime_and_batched(
    server: ServerProcess, session: ort.InferenceSession
) -> None:
    xs = [images(1 + i % 3, seed=i) for i in range(24)]
    rows0, calls0 = stats(server)
    answers: queue.SimpleQueue = queue.SimpleQueue()
    client = tgrpc.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i, x in enumerate(xs):
        tensor = tgrpc.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        client.async_stream_infer("mnist", [tensor], request_id=str(i))
    got = [answers.get(timeout=30) for _ in xs]
    client.stop_stream()
    client.close()
    for i, (result, error) in enumerate(got):
        assert error is None, error
        assert result.get_response().id == str(i)  # in the order sent
        expected = session.run(None, {"image": xs[i]})[0]
        np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)
    rows1, calls1 = stats(server)
    assert rows1 - rows0 == sum(len(x) for x in xs)
    assert calls1 - calls0 < len(xs)  # requests in flight on one stream share model calls


def test_a_refused_request_gets_its_error_message_and_the_stream_goes_on(
    server: ServerProcess, stub: service_pb2_grpc.GRPCInferenceServiceStub, session
) -> None:
    x = images(1, seed=7)
    nan = x.copy()
    nan[0, 0, 5, 5] = np.nan
    bad_shape = pb.ModelInferRequest(model_name="mnist", id="shape")
    bad_shape.inputs.add(name="image", datatype="FP32", shape=[1, 28, 28])
    bad_shape.raw_input_contents.append(x.tobytes())
    requests = [
        raw_request(x, "good-1"),
        bad_shape,
        raw_request(x, "model", name="resnet"),
        raw_request(nan, "nan"),
        raw_request(images(1025), "rows"),
        raw_request(x, "good-2"),
    ]
    replies = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert [r.infer_response.id for r in replies] == [r.id for r in requests]
    errors = [r.error_message for r in replies]
    assert errors[0] == errors[-1] == ""
    for got, words in zip(
        errors[1:-1],
        [
            "input 'image' has shape [1, 28, 28]; the model takes [N, 1, 28, 28]",
            "unknown model 'resnet'; this server has 'mnist'",
            "input 'image' has NaN or infinite values",
            "1025 rows, over the limit of 1024",
        ],
        strict=True,
    ):
        assert words in got and "\n" not in got
    # the same words as ModelInfer's status
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(bad_shape, timeout=30)
    assert info.value.details() == errors[1]
    expected = session.run(None, {"image": x})[0]
    for reply in (replies[0], replies[-1]):
        np.testing.assert_array_equal(probabilities(reply.infer_response), expected)


def test_tritonclient_aio_stream_infer(server: ServerProcess, session) -> None:
    xs = [images(2, seed=50 + i) for i in range(10)]

    async def run() -> list:
        client = tgrpc_aio.InferenceServerClient(server.grpc_url)

        async def requests():
            for i, x in enumerate(xs):
                tensor = tgrpc_aio.InferInput("image", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                yield {"model_name": "mnist", "inputs": [tensor], "request_id": str(i)}

        got = [pair async for pair in client.stream_infer(requests())]
        await client.close()
        return got

    got = asyncio.run(run())
    assert len(got) == len(xs)
    for i, (result, error) in enumerate(got):
        assert error is None, error
        assert result.get_response().id == str(i)
        expected = session.run(None, {"image": xs[i]})[0]
        np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)


def test_a_client_that_writes_far_ahead_of_reading_gets_every_answer(
    server: ServerProcess, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    n = 1000  # well past the server's window of requests read and not yet answered
    x = images(1, seed=3)
    written = threading.Event()

    def requests() -> Iterator[pb.ModelInferRequest]:
        for i in range(n):
            yield raw_request(x, str(i))
        written.set()

    replies = stub.ModelStreamInfer(requests(), timeout=90)
    first = next(replies)  # then read nothing until the client has written them all
    assert written.wait(60)
    ids = [first.infer_response.id] + [r.infer_response.id for r in replies]
    assert ids == [str(i) for i in range(n)]


def test_a_cancelled_stream_leaves_the_server_serving(
    server: ServerProcess, stub: service_pb2_grpc.GRPCInferenceServiceStub, session
) -> None:
    x = images(1, seed=4)
    replies = stub.ModelStreamInfer(iter([raw_request(x, str(i)) for i in range(300)]))
    next(replies)
    replies.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(replies)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    again = list(stub.ModelStreamInfer(iter([raw_request(x, "after")]), timeout=30))
    expected = session.run(None, {"image": x})[0]
    np.testing.assert_array_equal(probabilities(again[0].infer_response), expected)


def test_one_stream_over_the_limit_is_refused(model: Path, tmp_path: Path) -> None:
    server = start_server(model, tmp_path / "server.log")
    channel = grpc.insecure_channel(server.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    gate = threading.Event()

    def idle() -> Iterator[pb.ModelInferRequest]:
        gate.wait(60)  # open, sending nothing, until the test ends
        return
        yield

    try:
        streams = [stub.ModelStreamInfer(idle()) for _ in range(32)]
        time.sleep(1.0)  # all 32 are open on the server
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ModelStreamInfer(iter([raw_request(images(1), "x")]), timeout=30))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "32 streams are open, the most this server takes" in info.value.details()
        reply = stub.ModelInfer(raw_request(images(1), "unary"), timeout=30)  # unary still served
        assert reply.id == "unary"
        gate.set()
        for stream in streams:
            assert list(stream) == []
    finally:
        gate.set()
        channel.close()
        assert server.terminate() == 0, server.log.read_text()


def test_sigterm_answers_what_a_stream_took_then_ends_it_unavailable(
    model: Path, tmp_path: Path, session
) -> None:
    server = start_server(model, tmp_path / "server.log", "--max-wait-ms", "1500")
    channel = grpc.insecure_channel(server.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    x = images(1, seed=9)
    gate = threading.Event()

    def requests() -> Iterator[pb.ModelInferRequest]:
        yield raw_request(x, "held")  # held in the batcher for up to 1.5 s
        gate.wait(60)  # the stream stays open

    got: list = []
    try:
        replies = stub.ModelStreamInfer(requests(), timeout=60)
        time.sleep(0.5)
        start = time.monotonic()
        server.proc.send_signal(15)
        with pytest.raises(grpc.RpcError) as info:
            for reply in replies:
                got.append(reply)
        assert server.proc.wait(30) == 0, server.log.read_text()
        assert time.monotonic() - start < 15  # not the 30 s grace: the open stream ended
    finally:
        gate.set()
        channel.close()
        server.stop()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in info.value.details()
    assert [r.infer_response.id for r in got] == ["held"]
    np.testing.assert_array_equal(
        probabilities(got[0].infer_response), session.run(None, {"image": x})[0]
    )


def test_stream_requests_are_counted_in_the_metrics(
    server: ServerProcess, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    before = scrape(server)
    x = images(1)
    requests = [raw_request(x, "a"), raw_request(x, "b", name="resnet"), raw_request(x, "c")]
    assert len(list(stub.ModelStreamInfer(iter(requests), timeout=30))) == 3
    after = scrape(server)
    key = 'mnist_serve_requests_total{{endpoint="stream_infer",protocol="grpc",status="{}"}}'
    assert after.get(key.format("OK"), 0) - before.get(key.format("OK"), 0) == 2
    assert after.get(key.format("NOT_FOUND"), 0) - before.get(key.format("NOT_FOUND"), 0) == 1
