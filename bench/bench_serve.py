"""Serving benchmark: ``mnist-serve`` under one client and under 64, over loopback.

Run from the repo root (after ``make train export``)::

    flock /tmp/mnist-bench.lock .venv/bin/python bench/bench_serve.py

Starts ``mnist-serve`` on a free 127.0.0.1 port with its default batching, then a
load generator in this process (asyncio, keep-alive connections, the binary
tensor data extension as tritonclient sends it, one image per request):

* one client, one request at a time (no batching possible);
* ``--clients`` (64) concurrent clients, so the server coalesces requests.

Each phase is bounded in requests and in seconds. Reports requests/s, p50/p99
latency and the mean rows per model call (the server's statistics), checks that
every answer is the local model's label, merges a ``"serving"`` section into
``artifacts/bench.json`` and prints a markdown table (the one in the README).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' server helper

from benchutil import (  # bench/ is sys.path[0] for scripts
    BENCH_JSON,
    cpu_flags,
    cpu_flags_line,
    cpu_name,
    merge_section,
)
from helpers.serve_process import ServerProcess, start_server

from mnist_edge.runtime.layout import Artifacts
from mnist_edge.runtime.processes import usable_cores

TARGET_SPEEDUP = 5.0
INPUTS = 32  # distinct requests, cycled


def _request(port: int, x: np.ndarray) -> bytes:
    """A whole HTTP/1.1 infer request (binary tensor data extension), ready to write."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + x.astype("<f4").tobytes()
    head = (
        f"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n\r\n"
    )
    return head.encode() + body


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


async def _client(port: int, requests: list[bytes], labels: list[int], load: Load, k: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = k
    try:
        while load.take():
            start = time.perf_counter()
            writer.write(requests[i % INPUTS])
            status = await reader.readline()
            length = header = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"inference-header-content-length":
                    header = int(value)
            body = await reader.readexactly(length)
            load.latencies.append(time.perf_counter() - start)
            probs = np.frombuffer(body[header:], "<f4")
            if (
                b" 200 " not in status
                or len(probs) == 0
                or int(probs.argmax()) != labels[i % INPUTS]
            ):
                load.wrong += 1
            i += 1
    finally:
        writer.close()
        await writer.wait_closed()


async def _phase(
    port: int, requests: list[bytes], labels: list[int], clients: int, count: int, seconds: float
) -> Load:
    load = Load(count, seconds)
    await asyncio.gather(*(_client(port, requests, labels, load, k) for k in range(clients)))
    return load


def _run(coroutine: Coroutine[Any, Any, Load]) -> Load:
    """Run the load generator on uvloop when it is there (it is, with the serve extra)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stats(server: ServerProcess) -> tuple[int, int]:
    conn = server.connection()
    conn.request("GET", "/v2/models/mnist/stats")
    stats = json.loads(conn.getresponse().read())["model_stats"][0]
    conn.close()
    return stats["inference_count"], stats["execution_count"]


def run_phase(
    server: ServerProcess,
    requests: list[bytes],
    labels: list[int],
    clients: int,
    count: int,
    seconds: float,
) -> dict[str, float | int]:
    rows0, calls0 = _stats(server)
    cpu0, own0 = _cpu_seconds(server.pid), time.process_time()
    start = time.perf_counter()
    load = _run(_phase(server.port, requests, labels, clients, count, seconds))
    wall = time.perf_counter() - start
    cpu1, own1 = _cpu_seconds(server.pid), time.process_time()
    rows1, calls1 = _stats(server)
    ms = np.array(load.latencies) * 1e3
    return {
        "clients": clients,
        "requests": len(load.latencies),
        "wrong": load.wrong,
        "seconds": round(wall, 3),
        "requests_per_s": round(len(load.latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_batch": round((rows1 - rows0) / max(calls1 - calls0, 1), 2),
        # CPU time per request: what the machine's load does not change much
        "server_cpu_ms": round((cpu1 - cpu0) * 1e3 / max(len(load.latencies), 1), 3),
        "client_cpu_ms": round((own1 - own0) * 1e3 / max(len(load.latencies), 1), 3),
    }


def markdown(section: dict) -> str:
    rows = [
        "| clients | requests | requests/s | p50 (ms) | p99 (ms) | images per model call "
        "| server CPU per request (ms) | client CPU per request (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in section["phases"]:
        rows.append(
            f"| {phase['clients']} | {phase['requests']:,} | {phase['requests_per_s']:,.0f} | "
            f"{phase['p50_ms']:.2f} | {phase['p99_ms']:.2f} | {phase['mean_batch']:.1f} | "
            f"{phase['server_cpu_ms']:.3f} | {phase['client_cpu_ms']:.3f} |"
        )
    met = "met" if section["speedup"] >= TARGET_SPEEDUP else "NOT met"
    host = section["host"]
    server = section["server"]
    rows += [
        "",
        f"Throughput at {section['phases'][-1]['clients']} clients: {section['speedup']:.1f}x the "
        f"one-at-a-time rate (target >= {TARGET_SPEEDUP:g}x: {met}). Server: max batch "
        f"{server['max_batch']}, max wait {server['max_wait_ms']:g} ms, model {server['model']}.",
        f"Host: {host['cpu']}, {host['cores']} cores (client and server share them), "
        f"{cpu_flags_line(host['cpu_flags'])}; onnxruntime {host['onnxruntime']}; load average "
        f"{host['load_average']:.1f} at the start.",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Artifacts().model())
    parser.add_argument("--out", type=Path, default=BENCH_JSON)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--serial-requests", type=int, default=2_000)
    parser.add_argument("--concurrent-requests", type=int, default=30_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound of each phase")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None, help="server's ONNX Runtime threads")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"bench_serve: missing {args.model}; run `make train export` first", file=sys.stderr)
        return 2

    load_average = os.getloadavg()[0]  # other work on the machine skews the figures
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    xs = [np.random.default_rng(i).random((1, 1, 28, 28), np.float32) for i in range(INPUTS)]
    labels = [int(session.run(None, {"image": x})[0].argmax()) for x in xs]
    with tempfile.TemporaryDirectory(prefix="mnist-serve-bench-") as tmp:
        server = start_server(
            args.model,
            Path(tmp) / "server.log",
            "--max-batch", str(args.max_batch),
            "--max-wait-ms", str(args.max_wait_ms),
            *(["--threads", str(args.threads)] if args.threads else []),
        )  # fmt: skip
        try:
            requests = [_request(server.port, x) for x in xs]
            print("warm-up ...", file=sys.stderr)
            run_phase(server, requests, labels, 8, 400, args.seconds)
            print("1 client ...", file=sys.stderr)
            serial = run_phase(server, requests, labels, 1, args.serial_requests, args.seconds)
            print(f"{args.clients} clients ...", file=sys.stderr)
            many = run_phase(
                server, requests, labels, args.clients, args.concurrent_requests, args.seconds
            )
        finally:
            code = server.terminate()
    wrong = serial["wrong"] + many["wrong"]
    section = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "cpu": cpu_name(),
            "cpu_flags": cpu_flags(),
            "cores": usable_cores(),
            "onnxruntime": ort.__version__,
            "load_average": load_average,
        },
        "server": {
            "model": str(args.model),
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "threads": args.threads or usable_cores(),
            "exit_code": code,
        },
        "phases": [serial, many],
        "speedup": round(float(many["requests_per_s"]) / float(serial["requests_per_s"]), 2),
        "target_speedup": TARGET_SPEEDUP,
    }
    if wrong or code != 0:
        print(f"bench_serve: {wrong} wrong answers, server exit {code}", file=sys.stderr)
        return 1
    merge_section(args.out, "serving", section)
    print(markdown(section))
    print(f"\nsaved to {args.out} (section 'serving')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
