"""Where one ``mnist-serve`` request's time goes: each part of the path, timed alone in this process.

Run from the repo root::

    .venv/bin/python bench/serve_profile.py [--model artifacts/mnist.onnx]

Times (``timeit``, best of 5) the parts of one request of one image on each
protocol: parsing and checking the body, building the answer, the model call,
and the batcher's round trip from a gRPC handler thread and from the event loop.
What a request costs the server in all (``server CPU per request`` in
bench_serve.py's table) less these parts is the framework: uvicorn and the ASGI
path, or grpcio. Prints the markdown table of docs/serving.md with the CPU flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import cpu_flags_line, cpu_name
from serve_clients import grpc_request, http_request
from tritonclient.grpc import service_pb2 as pb

from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.layout import Artifacts
from mnist_edge.runtime.serve.grpc_service import InferenceServicer
from mnist_edge.runtime.serve.protocol import encode_infer_response, parse_infer_request
from mnist_edge.runtime.serve.service import ModelService

NUMBER = 2_000  # calls per timing


def best_us(call: Callable[[], Any], number: int = NUMBER) -> float:
    """Microseconds per call, best of 5 timings."""
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


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
