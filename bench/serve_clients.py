"""Load generators for bench_serve.py: Open Inference Protocol clients over HTTP/1.1 and gRPC.

Not a test module. Every client sends one image per request and checks each
answer's label against the local model's, so a server that answers fast but
wrong is caught. The same clients drive ``mnist-serve`` and the MLServer peer:

* ``http-json``: JSON tensors (``"data"``: 784 numbers), what every OIP server
  takes; keep-alive asyncio connections, one request at a time each.
* ``http-binary``: the binary tensor data extension, as ``tritonclient.http``
  sends by default (``mnist-serve`` only: MLServer has no such extension).
* ``grpc``: ``grpc.aio`` calls on one channel with the tensor in
  ``raw_input_contents``, as ``tritonclient.grpc.aio`` sends it.
* ``grpc-stream``: the same requests as messages of one ``ModelStreamInfer``
  stream, as ``tritonclient.grpc.aio``'s ``stream_infer`` sends them; "clients"
  is then the number of requests in flight on the stream (``mnist-serve`` only:
  MLServer's stream answers the first request of a stream and ends).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

import numpy as np

KINDS = ("http-json", "http-binary", "grpc", "grpc-stream")
GRPC_KINDS = ("grpc", "grpc-stream")


class Load:
    """Shared counters of one phase: requests left, deadline, latencies, wrong answers."""

    def __init__(self, count: int, seconds: float) -> None:
        self.left = count
        self.deadline = time.perf_counter() + seconds
        self.latencies: list[float] = []
        self.wrong = 0

    def take(self) -> bool:
        if self.left <= 0 or time.perf_counter() > self.deadline:
            return False
        self.left -= 1
        return True


def http_request(port: int, x: np.ndarray, binary: bool) -> bytes:
    """A whole HTTP/1.1 infer request for model ``mnist``, ready to write."""
    entry: dict[str, Any] = {"name": "image", "shape": list(x.shape), "datatype": "FP32"}
    extra = ""
    if binary:
        entry["parameters"] = {"binary_data_size": x.nbytes}
        header = json.dumps(
            {
                "inputs": [entry],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
            }
        ).encode()
        body = header + x.astype("<f4").tobytes()
        extra = f"Inference-Header-Content-Length: {len(header)}\r\n"
        kind = "application/octet-stream"
    else:
        entry["data"] = x.ravel().tolist()
        body = json.dumps({"inputs": [entry]}).encode()
        kind = "application/json"
    head = (
        f"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def _http_label(status: bytes, body: bytes, header: int) -> int:
    """The answer's label, or -1 for anything but a 200 with probabilities."""
    if b" 200 " not in status:
        return -1
    if header:
        probs = np.frombuffer(body[header:], "<f4")
    else:
        probs = np.asarray(json.loads(body)["outputs"][0]["data"], np.float32)
    return int(probs.argmax()) if len(probs) else -1


async def _http_client(
    port: int, requests: list[bytes], labels: list[int], load: Load, k: int
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = k
    try:
        while load.take():
            start = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status = await reader.readline()
            length = header = 0
            chunked = False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"inference-header-content-length":
                    header = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                parts = []
                while (size := int((await reader.readline()).strip(), 16)) > 0:
                    parts.append(await reader.readexactly(size + 2))
                await reader.readline()
                body = b"".join(p[:-2] for p in parts)
            else:
                body = await reader.readexactly(length)
            load.latencies.append(time.perf_counter() - start)
            if _http_label(status, body, header) != labels[i % len(labels)]:
                load.wrong += 1
            i += 1
    finally:
        writer.close()
        await writer.wait_closed()


def grpc_request(x: np.ndarray) -> Any:
    """An infer request with the tensor in ``raw_input_contents`` (as tritonclient sends it)."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request


def _grpc_label(reply: Any) -> int:
    if reply.raw_output_contents:
        probs = np.frombuffer(reply.raw_output_contents[0], "<f4")
    else:  # MLServer answers in typed contents
        probs = np.asarray(reply.outputs[0].contents.fp32_contents, np.float32)
    return int(probs.argmax()) if len(probs) else -1


async def _grpc_client(
    stub: Any, requests: list[Any], labels: list[int], load: Load, k: int
) -> None:
    import grpc

    i = k
    while load.take():
        start = time.perf_counter()
        try:
            reply = await stub.ModelInfer(requests[i % len(requests)])
        except grpc.aio.AioRpcError:
            load.wrong += 1
        else:
            load.latencies.append(time.perf_counter() - start)
            if _grpc_label(reply) != labels[i % len(labels)]:
                load.wrong += 1
        i += 1


async def _grpc_stream(
    stub: Any, requests: list[Any], labels: list[int], load: Load, in_flight: int
) -> None:
    """One stream, ``in_flight`` requests on it at a time; answers come in request order."""
    import grpc

    call = stub.ModelStreamInfer()
    window = asyncio.Semaphore(in_flight)
    sent: deque[tuple[int, float]] = deque()  # (request index, when written), in order

    async def read() -> None:
        while (reply := await call.read()) is not grpc.aio.EOF:
            i, start = sent.popleft()
            load.latencies.append(time.perf_counter() - start)
            if reply.error_message or _grpc_label(reply.infer_response) != labels[i % len(labels)]:
                load.wrong += 1
            window.release()

    reader = asyncio.create_task(read())
    i = 0
    while True:
        await window.acquire()
        if not load.take():
            break
        sent.append((i, time.perf_counter()))
        await call.write(requests[i % len(requests)])
        i += 1
    await call.done_writing()
    await reader
    load.wrong += len(sent)  # written and never answered


async def _phase(
    kind: str, port: int, requests: list[Any], labels: list[int], clients: int, load: Load
) -> Load:
    if kind not in GRPC_KINDS:
        await asyncio.gather(
            *(_http_client(port, requests, labels, load, k) for k in range(clients))
        )
        return load
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        if kind == "grpc-stream":
            await _grpc_stream(stub, requests, labels, load, clients)
        else:
            await asyncio.gather(
                *(_grpc_client(stub, requests, labels, load, k) for k in range(clients))
            )
    return load


def requests_for(kind: str, port: int, xs: list[np.ndarray]) -> list[Any]:
    """The requests a phase of ``kind`` cycles through, one per input."""
    if kind in GRPC_KINDS:
        return [grpc_request(x) for x in xs]
    return [http_request(port, x, binary=kind == "http-binary") for x in xs]


def run_load(
    kind: str,
    port: int,
    requests: list[Any],
    labels: list[int],
    clients: int,
    count: int,
    seconds: float,
) -> Load:
    """``clients`` concurrent clients of ``kind`` until ``count`` requests or ``seconds``.

    HTTP runs on uvloop when it is there (it is, with the serve extra); gRPC's
    asyncio clients on the standard loop, the one ``grpc.aio`` supports.
    """
    coroutine: Coroutine[Any, Any, Load] = _phase(
        kind, port, requests, labels, clients, Load(count, seconds)
    )
    if kind in GRPC_KINDS:
        return asyncio.run(coroutine)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
