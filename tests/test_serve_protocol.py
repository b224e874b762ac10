"""The Open Inference Protocol wire format, the dynamic batcher and the model service, without a server."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers.models import digit, linear_model
from PIL import Image
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request

from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.errors import MnistEdgeError
from mnist_edge.runtime.serve.batcher import BatchConfig, BatcherError, DynamicBatcher
from mnist_edge.runtime.serve.protocol import (
    ProtocolError,
    RequestedOutput,
    TensorSpec,
    encode_infer_response,
    parse_infer_request,
)
from mnist_edge.runtime.serve.service import Classified, ModelService

IMAGE = TensorSpec("image", "FP32", (-1, 1, 28, 28))
PIXELS = TensorSpec("image", "UINT8", (-1, 28, 28))
OUTPUTS = (TensorSpec("probabilities", "FP32", (-1, 10)),)


def tritonclient_body(
    x: np.ndarray, binary: bool, outputs: list[InferRequestedOutput] | None = None
) -> tuple[bytes, str | None]:
    """The body (and header length) tritonclient sends for ``x``: the client's own encoder."""
    tensor = InferInput("image", list(x.shape), "FP32" if x.dtype == np.float32 else "UINT8")
    tensor.set_data_from_numpy(x, binary_data=binary)
    body, size = _get_inference_request([tensor], "req-7", outputs, 0, False, False, 0, None, None)
    body = body if isinstance(body, bytes) else body.encode()
    return body, None if size is None else str(size)


def json_body(**tensor: object) -> bytes:
    entry = {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
    entry.update(tensor)
    return json.dumps({"inputs": [entry]}).encode()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_requests_decode_to_the_same_array(binary: bool) -> None:
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    body, header = tritonclient_body(x, binary)
    request = parse_infer_request(body, header, IMAGE, OUTPUTS, max_rows=8)
    assert request.id == "req-7"
    assert request.tensor.dtype == np.float32 and request.tensor.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(request.tensor, x)
    # tritonclient asks for binary outputs by default (no outputs named)
    assert request.outputs == (RequestedOutput("probabilities", True),)


def test_uint8_model_takes_uint8_json_and_nested_lists() -> None:
    x = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
    body = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [2, 28, 28], "datatype": "UINT8", "data": x.tolist()}
            ]
        }
    ).encode()
    request = parse_infer_request(body, None, PIXELS, OUTPUTS, max_rows=8)
    assert request.tensor.dtype == np.uint8
    np.testing.assert_array_equal(request.tensor, x)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_responses_read_back_exactly_with_tritonclient(binary: bool) -> None:
    probs = np.random.default_rng(1).random((4, 10), dtype=np.float32)
    body, header = encode_infer_response(
        "mnist", "1", "abc", [(RequestedOutput("probabilities", binary), probs)]
    )
    assert (header is not None) == binary
    result = InferResult.from_response_body(body, header_length=header)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)  # bit-exact
    assert result.get_response()["id"] == "abc"


BAD_REQUESTS = {
    "malformed JSON": (b'{"inputs": [', None, "not valid JSON"),
    "not an object": (b"[1, 2]", None, "must be a JSON object"),
    "not UTF-8": (b"\xff\xfe{}", None, "not UTF-8"),
    "no inputs": (b"{}", None, "'inputs' must be a list"),
    "wrong name": (json_body(name="pixels"), None, "unknown input 'pixels'; the model takes one input, 'image'"),
    "wrong datatype": (json_body(datatype="FP64"), None, "datatype 'FP64'; the model takes FP32"),
    "unknown datatype": (json_body(datatype="FLOAT"), None, "(not a protocol datatype)"),
    "wrong rank": (json_body(shape=[1, 28, 28]), None, "the model takes [N, 1, 28, 28]"),
    "wrong size": (json_body(shape=[1, 1, 27, 28]), None, "has shape [1, 1, 27, 28]"),
    "zero rows": (json_body(shape=[0, 1, 28, 28], data=[]), None, "(N >= 1)"),
    "shape not ints": (json_body(shape=["1", 1, 28, 28]), None, "'shape' must be a list of integers"),
    "too few values": (json_body(data=[0.0] * 783), None, "'data' has 783 values, shape [1, 1, 28, 28] needs 784"),
    "strings as data": (json_body(data=["a"] * 784), None, "'data' must be numbers"),
    "ragged data": (json_body(data=[[0.0], [0.0, 1.0]]), None, "ragged"),
    "header longer than body": (json_body(), "99999", "Inference-Header-Content-Length is '99999'"),
    "header not a number": (json_body(), "ten", "Inference-Header-Content-Length is 'ten'"),
    "binary without the header": (
        json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                    "parameters": {"binary_data_size": 3136}}]}).encode() + b"\0" * 3136,
        None,
        "binary tensor data needs the Inference-Header-Content-Length header",
    ),
    "bytes but no binary_data_size": (
        json_body() + b"\0" * 100, str(len(json_body())), "100 bytes after the JSON header but no input",
    ),
    "unknown output": (
        json.dumps({"inputs": json.loads(json_body())["inputs"], "outputs": [{"name": "logits"}]}).encode(),
        None,
        "unknown output 'logits'; the model has 'probabilities'",
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    "body, header, message", BAD_REQUESTS.values(), ids=list(BAD_REQUESTS.keys())
)
def test_bad_requests_are_400_with_a_message(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_infer_request(body, header, IMAGE, OUTPUTS, max_rows=8)
    assert info.value.status == 400
    assert message in str(info.value)
    assert isinstance(info.value, MnistEdgeError) and "\n" not in str(info.value)


def test_binary_size_must_match_the_bytes_sent() -> None:
    x = np.zeros((1, 1, 28, 28), np.float32)
    body, header = tritonclient_body(x, binary=True)
    with pytest.raises(ProtocolError, match="does not match the 3132 bytes"):
        parse_infer_request(body[:-4], header, IMAGE, OUTPUTS, max_rows=8)


def test_uint8_values_out_of_range_are_refused() -> None:
    body = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [1, 28, 28], "datatype": "UINT8", "data": [300] * 784}
            ]
        }
    ).encode()
    with pytest.raises(ProtocolError, match=r"integers in \[0, 255\] for UINT8"):
        parse_infer_request(body, None, PIXELS, OUTPUTS, max_rows=8)


def test_too_many_rows_is_413() -> None:
    x = np.zeros((9, 1, 28, 28), np.float32)
    body, header = tritonclient_body(x, binary=True)
    with pytest.raises(ProtocolError, match="9 rows, over the limit of 8") as info:
        parse_infer_request(body, header, IMAGE, OUTPUTS, max_rows=8)
    assert info.value.status == 413


def test_brackets_inside_strings_are_not_nesting() -> None:
    body = json.loads(json_body())
    body["id"] = "[" * 500 + "{" * 500
    request = parse_infer_request(json.dumps(body).encode(), None, IMAGE, OUTPUTS, max_rows=8)
    assert request.id == "[" * 500 + "{" * 500


def test_nested_data_within_the_depth_limit_is_taken() -> None:
    x = np.random.default_rng(3).random((8, 1, 28, 28), dtype=np.float32)
    body = json_body(shape=[8, 1, 28, 28], data=x.tolist())  # 4 levels of lists per value
    np.testing.assert_array_equal(parse_infer_request(body, None, IMAGE, OUTPUTS, 8).tensor, x)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[" * 33 + b"]" * 33, "nests deeper than 32 levels"),
        (b'{"a": ' * 40 + b"1" + b"}" * 40, "nests deeper than 32 levels"),
        (
            json_body().replace(b"0.0, 0.0", b"NaN, 0.0", 1),
            "NaN is not a number a request may carry",
        ),
        (json_body().replace(b"0.0, 0.0", b"Infinity, 0.0", 1), "Infinity is not a number"),
        (json_body().replace(b"0.0, 0.0", b"3.5e38, 0.0", 1), "NaN or infinite values"),
    ],
    ids=["deep lists", "deep objects", "NaN", "Infinity", "over float32"],
)
def test_hostile_json_is_refused_before_or_while_parsing(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        parse_infer_request(body, None, IMAGE, OUTPUTS, max_rows=8)
    assert info.value.status == 400


def test_more_values_than_the_rows_allow_is_413_before_parsing() -> None:
    body = json_body(data=[0] * (8 * 784 + 2000))  # 8 rows allowed: 6,272 values, plus slack
    with pytest.raises(ProtocolError, match="more than the model's input allows") as info:
        parse_infer_request(body, None, IMAGE, OUTPUTS, max_rows=8)
    assert info.value.status == 413


def test_binary_nan_is_refused() -> None:
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 0, 0] = np.nan
    body, header = tritonclient_body(x, binary=True)
    with pytest.raises(ProtocolError, match="has NaN or infinite values"):
        parse_infer_request(body, header, IMAGE, OUTPUTS, max_rows=8)


# ---------------------------------------------------------------- batcher


class RecordingModel:
    """Doubles its input and records the rows of each call (from the worker thread)."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("bad row\nsecond line")
        return x * 2


def submit_all(batcher: DynamicBatcher, arrays: list[np.ndarray]) -> list[object]:
    """Start ``batcher``, submit every array at once, close it; the results (or errors) in order."""

    async def run() -> list[object]:
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(a) for a in arrays), return_exceptions=True
            )
        finally:
            await batcher.aclose()

    return asyncio.run(run())


def test_concurrent_requests_share_one_model_call_and_get_their_own_rows() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, BatchConfig(max_batch=64, max_wait_ms=500))
    arrays = [np.full((1 + i % 3, 2), i, np.float32) for i in range(10)]  # 19 rows
    results = submit_all(batcher, arrays)
    assert model.calls == [19]  # all ten coalesced into one call
    assert model.threads == {"mnist-serve-batcher_0"}  # one worker thread, off the event loop
    for a, r in zip(arrays, results, strict=True):
        np.testing.assert_array_equal(r, a * 2)
    stats = batcher.stats()
    assert (stats.requests, stats.inference_count, stats.execution_count) == (10, 19, 1)
    assert stats.model_stats("m", "1")["batch_stats"][0]["batch_size"] == 19


def test_batches_stop_at_max_batch_rows() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, BatchConfig(max_batch=4, max_wait_ms=300))
    submit_all(batcher, [np.ones((1, 2), np.float32)] * 10)
    assert sum(model.calls) == 10 and max(model.calls) <= 4 and len(model.calls) == 3


def test_a_failing_request_fails_alone() -> None:
    model = RecordingModel(fail_on=-1.0)
    batcher = DynamicBatcher(model, BatchConfig(max_batch=64, max_wait_ms=300))
    arrays = [np.full((1, 2), v, np.float32) for v in (1.0, -1.0, 3.0)]
    results = submit_all(batcher, arrays)
    np.testing.assert_array_equal(results[0], arrays[0] * 2)
    np.testing.assert_array_equal(results[2], arrays[2] * 2)
    assert isinstance(results[1], BatcherError) and results[1].status == 500
    assert str(results[1]) == "model call failed: bad row"
    assert batcher.stats().fail.count == 1


def test_stopped_batcher_refuses_with_503() -> None:
    batcher = DynamicBatcher(RecordingModel())

    async def run() -> None:
        batcher.start()
        await batcher.aclose()
        await batcher.submit(np.ones((1, 2), np.float32))

    with pytest.raises(BatcherError, match="shutting down") as info:
        asyncio.run(run())
    assert info.value.status == 503


def test_closing_runs_the_requests_still_waiting() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, BatchConfig(max_batch=64, max_wait_ms=10_000))

    async def run() -> np.ndarray:
        batcher.start()
        pending = asyncio.ensure_future(batcher.submit(np.ones((2, 2), np.float32)))
        await asyncio.sleep(0.05)  # queued, its 10 s wait not over
        await batcher.aclose()
        return await pending

    started = time.monotonic()
    np.testing.assert_array_equal(asyncio.run(run()), np.full((2, 2), 2.0))
    assert model.calls == [2] and time.monotonic() - started < 5


class GatedModel(RecordingModel):
    """A :class:`RecordingModel` whose first call waits until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self.calls:
            self.entered.set()
            self.gate.wait(10)
        return super().__call__(x)


def test_an_idle_model_takes_a_request_at_once_and_requests_gather_while_it_runs() -> None:
    model = GatedModel()
    batcher = DynamicBatcher(model)  # the default: no wait
    assert batcher.config.max_wait_ms == 0

    async def run() -> list[np.ndarray]:
        batcher.start()
        try:
            # two images: a lone one-image request runs on the loop itself (the test below)
            first = asyncio.ensure_future(batcher.submit(np.ones((2, 2), np.float32)))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, model.entered.wait, 10)  # the lone request runs
            later = [
                asyncio.ensure_future(batcher.submit(np.full((1, 2), i, np.float32)))
                for i in range(5)
            ]
            await asyncio.sleep(0.05)
            assert model.calls == [] and not any(f.done() for f in later)  # gathering
            model.gate.set()
            return await asyncio.gather(first, *later)
        finally:
            await batcher.aclose()

    results = asyncio.run(run())
    assert model.calls == [2, 5]  # the five that came while the first ran: one call
    for i, r in enumerate(results[1:]):
        np.testing.assert_array_equal(r, np.full((1, 2), 2.0 * i))


def test_a_lone_one_image_request_runs_on_the_event_loop_and_others_on_the_worker() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model)

    async def run() -> list[np.ndarray]:
        batcher.start()
        try:
            lone = await batcher.submit(np.full((1, 2), 3, np.float32))  # idle model: runs here
            two = await batcher.submit(np.ones((2, 2), np.float32))  # two images: the worker
            return [lone, two]
        finally:
            await batcher.aclose()

    lone, two = asyncio.run(run())
    np.testing.assert_array_equal(lone, np.full((1, 2), 6.0))
    np.testing.assert_array_equal(two, np.full((2, 2), 2.0))
    assert model.calls == [1, 2]
    assert model.threads == {"MainThread", "mnist-serve-batcher_0"}
    stats = batcher.stats()
    assert (stats.requests, stats.inference_count, stats.execution_count) == (2, 3, 2)


def test_a_request_whose_caller_has_others_in_flight_runs_on_the_worker() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model)

    async def run() -> np.ndarray:
        batcher.start()
        try:
            return await batcher.submit(np.full((1, 2), 3, np.float32), alone=False)
        finally:
            await batcher.aclose()

    np.testing.assert_array_equal(asyncio.run(run()), np.full((1, 2), 6.0))
    assert model.threads == {"mnist-serve-batcher_0"}


def test_requests_from_two_event_loops_in_two_threads_share_batches() -> None:
    model = GatedModel()
    batcher = DynamicBatcher(model)
    batcher.start()
    results: dict[str, list[np.ndarray]] = {}
    go = threading.Barrier(2)

    def loop_thread(name: str, value: float) -> None:
        async def run() -> list[np.ndarray]:
            go.wait(10)
            return await asyncio.gather(
                *(batcher.submit(np.full((1, 2), value, np.float32), alone=False) for _ in range(3))
            )

        results[name] = asyncio.run(run())

    first = threading.Thread(target=loop_thread, args=("a", 1.0))
    second = threading.Thread(target=loop_thread, args=("b", 5.0))
    gated = threading.Thread(  # a first batch holds the worker while both loops submit
        target=lambda: asyncio.run(batcher.submit(np.ones((2, 2), np.float32)))
    )
    gated.start()
    assert model.entered.wait(10)
    first.start()
    second.start()
    time.sleep(0.2)
    model.gate.set()
    for t in (gated, first, second):
        t.join(10)

    async def close() -> None:
        await batcher.aclose()

    asyncio.run(close())
    assert model.calls == [2, 6]  # both loops' six requests in one batch
    for name, value in (("a", 1.0), ("b", 5.0)):
        for r in results[name]:
            np.testing.assert_array_equal(r, np.full((1, 2), 2 * value))


def test_requests_of_one_event_loop_turn_go_together_without_a_wait() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, BatchConfig(max_batch=64, max_wait_ms=0))
    submit_all(batcher, [np.ones((1, 2), np.float32)] * 6)
    assert model.calls == [6]


def test_unstacked_batcher_runs_each_request_alone_in_one_hand_over() -> None:
    calls: list[tuple[int, ...]] = []

    def run(picture: np.ndarray) -> np.ndarray:
        calls.append(picture.shape)
        return np.array([picture.sum()], np.float32)

    batcher = DynamicBatcher(run, BatchConfig(max_batch=64, max_wait_ms=300), stack=False)
    pictures = [np.ones((2 + i, 3), np.float32) for i in range(4)]  # different sizes
    results = submit_all(batcher, pictures)
    assert calls == [p.shape for p in pictures]
    assert [float(r[0]) for r in results] == [p.sum() for p in pictures]
    stats = batcher.stats()
    assert (stats.requests, stats.inference_count, stats.execution_count) == (4, 4, 4)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match=r"max_batch must be 1 to max_queue_rows \(8192\), not 0"):
        BatchConfig(max_batch=0)
    with pytest.raises(ValueError, match="max_queue_rows"):
        BatchConfig(max_batch=64, max_queue_rows=8)


# ---------------------------------------------------------------- the service, without HTTP


def test_uint8_model_is_served_with_its_own_input_spec(tmp_path: Path) -> None:
    """A ``--uint8-input`` export: UINT8 [N, 28, 28] in, same probabilities as ONNX Runtime."""
    model = linear_model(tmp_path / "u8.onnx", input_dtype="uint8")
    service = ModelService(Classifier(model, provider="cpu"))
    assert service.model_metadata()["inputs"] == [
        {"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]}
    ]
    x = np.stack([digit(i) for i in range(3)])  # (3, 28, 28) uint8
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [3, 28, 28],
                    "datatype": "UINT8",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()
    pictures = [("a.png", _png(digit(4))), ("b.png", b"not a picture")]

    async def run() -> tuple[bytes, Classified]:
        service.start()
        try:
            response, _ = await service.infer(body, None)
            return response, await service.classify(pictures, top_k=2)
        finally:
            await service.aclose()

    response, classified = asyncio.run(run())
    got = np.array(json.loads(response)["outputs"][0]["data"], np.float32).reshape(3, 10)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(got, session.run(None, {"image": x})[0])
    assert classified.status == 422
    assert classified.payload["error"].startswith("1 of 2 pictures could not be used (first: b.png")
    good, bad = classified.payload["results"]
    assert good["path"] == "a.png" and len(good["top_k"]) == 2
    assert good["label"] == str(int(session.run(None, {"image": digit(4)[None]})[0].argmax()))
    assert bad == {"path": "b.png", "error": "not an image (unknown or unsupported file format)"}


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()
