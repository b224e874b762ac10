"""Where one ``mnist-serve`` request's time goes: each part of the path, timed alone in this process.

Run from the repo root::

    .venv/bin/python bench/serve_profile.py [--model artifacts/mnist.onnx]

Times (``timeit``, best of 5) the parts of one request of one image on each
protocol: parsing and checking the body, building the answer, the model call,
and the batcher's round trips from an event loop; and what grpcio alone costs
(client and server in this process, a servicer that answers at once) per
``ModelInfer`` call and per stream message. What a request costs the server in
all (``server CPU per request`` in bench_serve.py's table) less these parts is
the framework: uvicorn and the ASGI path, or grpcio. Prints the markdown table
of docs/serving.md with the CPU flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from benchutil import cpu_flags_line, cpu_name
from serve_clients import grpc_request, http_request
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.layout import Artifacts
from mnist_edge.runtime.serve.grpc_service import InferenceServicer
from mnist_edge.runtime.serve.protocol import encode_infer_response, parse_infer_request
from mnist_edge.runtime.serve.service import ModelService

NUMBER = 2_000  # calls per timing


def best_us(call: Callable[[], Any], number: int = NUMBER) -> float:
    """Microseconds per call, best of 5 timings."""
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


class _Echo(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers every infer request at once with ten zeros: grpcio's own cost, nothing else."""

    @staticmethod
    def _reply(request: Any) -> Any:
        reply = pb.ModelInferResponse(model_name="mnist", model_version="1", id=request.id)
        reply.outputs.add(name="probabilities", datatype="FP32", shape=[1, 10])
        reply.raw_output_contents.append(bytes(40))
        return reply

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return self._reply(request)

    async def ModelStreamInfer(self, requests: Any, context: Any) -> Any:
        async for request in requests:
            yield pb.ModelStreamInferResponse(infer_response=self._reply(request))


def grpc_alone(request: Any, count: int = 4_000, in_flight: int = 64) -> tuple[float, float]:
    """CPU µs (client and server together) per ``ModelInfer`` call and per stream message."""

    async def run() -> tuple[float, float]:
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Echo(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

                async def unary() -> None:
                    for _ in range(count // in_flight):
                        await stub.ModelInfer(request)

                async def stream() -> None:
                    call = stub.ModelStreamInfer()
                    for _ in range(count // in_flight):
                        for _ in range(in_flight):
                            await call.write(request)
                        for _ in range(in_flight):
                            await call.read()
                    await call.done_writing()

                async def cpu_us(work: Callable[[], Awaitable[Any]]) -> float:
                    start = time.process_time()
                    await work()
                    return (time.process_time() - start) / count * 1e6

                await asyncio.gather(*(unary() for _ in range(in_flight)))  # warm-up
                per_call = min(
                    [await cpu_us(lambda: asyncio.gather(*(unary() for _ in range(in_flight))))
                     for _ in range(3)]
                )  # fmt: skip
                per_message = min([await cpu_us(stream) for _ in range(3)])
        finally:
            await server.stop(None)
        return per_call, per_message

    return asyncio.run(run())


def parts(model: Path) -> list[tuple[str, float]]:
    service = ModelService(Classifier(model))
    x = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
    spec, outputs = service.input, service.outputs

    def body(binary: bool) -> tuple[bytes, str | None]:
        head, rest = http_request(0, x, binary).split(b"\r\n\r\n", 1)
        length = [
            h.split(b": ")[1].decode() for h in head.split(b"\r\n") if h.startswith(b"Inference")
        ]
        return rest, (length[0] if length else None)

    rows = service.config.max_request_rows
    json_body, _ = body(False)
    binary_body, header_length = body(True)
    json_request = parse_infer_request(json_body, None, spec, outputs, rows)
    binary_request = parse_infer_request(binary_body, header_length, spec, outputs, rows)
    probabilities = service.classifier.run(x)

    def answer(request: Any) -> Callable[[], Any]:
        pairs = [(o, probabilities) for o in request.outputs]
        return lambda: encode_infer_response("mnist", "1", request.id, pairs)

    servicer = InferenceServicer(service)
    wire = grpc_request(x).SerializeToString()
    grpc_in = pb.ModelInferRequest.FromString(wire)

    def grpc_answer() -> bytes:
        reply = pb.ModelInferResponse(model_name="mnist", model_version="1")
        reply.outputs.add(name="probabilities", datatype="FP32", shape=[1, 10])
        reply.raw_output_contents.append(probabilities.astype("<f4").tobytes())
        return reply.SerializeToString()

    found: list[tuple[str, float]] = [
        ("HTTP/JSON parse and validate (`parse_infer_request`, orjson)",
         best_us(lambda: parse_infer_request(json_body, None, spec, outputs, rows))),
        ("HTTP/JSON response (`encode_infer_response`)", best_us(answer(json_request))),
        ("HTTP binary parse and validate",
         best_us(lambda: parse_infer_request(binary_body, header_length, spec, outputs, rows))),
        ("HTTP binary response", best_us(answer(binary_request))),
        ("gRPC parse (`ModelInferRequest.FromString`)", best_us(lambda: pb.ModelInferRequest.FromString(wire))),
        ("gRPC validate (the servicer's input and output checks)",
         best_us(lambda: (servicer._input(grpc_in), servicer._outputs(grpc_in)))),
        ("gRPC response (build, `SerializeToString`)", best_us(grpc_answer)),
        ("ONNX Runtime, batch 1 (`Classifier.run`)", best_us(lambda: service.classifier.run(x))),
    ]  # fmt: skip

    x2 = np.concatenate([x, x])
    found.append(("ONNX Runtime, batch 2", best_us(lambda: service.classifier.run(x2))))

    async def round_trips() -> tuple[float, float]:
        service.start()
        try:

            async def loop_calls(n: int, rows: np.ndarray) -> float:
                start = asyncio.get_running_loop().time()
                for _ in range(n):
                    await service.run(rows)
                return (asyncio.get_running_loop().time() - start) / n * 1e6

            lone = min([await loop_calls(500, x) for _ in range(5)])
            handed = min([await loop_calls(500, x2) for _ in range(5)])
        finally:
            await service.aclose()
        return lone, handed

    lone, handed = asyncio.run(round_trips())
    found.append(
        ("batcher round trip from an event loop, a lone image (run on the loop), ORT included",
         lone)
    )  # fmt: skip
    found.append(
        ("batcher round trip from an event loop, 2 images (the worker thread runs them), "
         "ORT included", handed)
    )  # fmt: skip
    per_call, per_message = grpc_alone(grpc_in)
    found.append(("grpcio alone, client and server CPU together: one `ModelInfer` call "
                  "(64 in flight)", per_call))  # fmt: skip
    found.append(("grpcio alone, client and server CPU together: one stream message "
                  "(64 in flight)", per_message))  # fmt: skip
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Artifacts().model())
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(
            f"serve_profile: missing {args.model}; run `make train export` first", file=sys.stderr
        )
        return 2
    found = parts(args.model)
    print("| part | µs |\n|---|---:|")
    for name, us in found:
        print(f"| {name} | {'< 1' if us < 1 else f'{us:.0f}'} |")
    print(f"\nHost: {cpu_name()}; {cpu_flags_line()}")
    if args.json:
        args.json.write_text(json.dumps(dict(found), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
