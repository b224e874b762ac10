"""Serving benchmark: ``mnist-serve`` under one client and under 64, over loopback.

Run from the repo root (after ``make train export``)::

    flock /tmp/mnist-bench.lock .venv/bin/python bench/bench_serve.py

Starts ``mnist-serve`` on a free 127.0.0.1 port, once per ``--max-wait-ms``
setting (default: the server's default, 0, and the former default, 2, side by
side in one run, so load on the machine skews both alike), then a load
generator in this process (asyncio, keep-alive connections, the binary tensor
data extension as tritonclient sends it, one image per request):

* one client, one request at a time (no batching possible);
* ``--clients`` (64) concurrent clients, so the server coalesces requests.

The same two phases run over gRPC (``grpc.aio`` clients on one channel, the
tensor in ``raw_input_contents`` as tritonclient sends it) against one more
server with the default settings, in the same rounds, so HTTP and gRPC are
compared side by side; the server's CPU time per request is the figure the
clients' own cost does not blur.

Each phase is bounded in requests and in seconds. Reports requests/s, p50/p99
latency and the mean rows per model call (the server's statistics), checks that
every answer is the local model's label, checks the goals (one client: p50 at
most ``--goal-p50-ms``; 64 clients with no wait: throughput no lower than with
the 2 ms wait), merges a ``"serving"`` section into ``artifacts/bench.json``
and prints a markdown table (the one in docs/serving.md).
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

GOAL_P50_MS = 0.6  # one client, no wait, on an idle machine
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


def _grpc_request(x: np.ndarray) -> Any:
    """An infer request with the tensor in ``raw_input_contents`` (as tritonclient sends it)."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


async def _grpc_client(
    stub: Any, requests: list[Any], labels: list[int], load: Load, k: int
) -> None:
    import grpc

    i = k
    while load.take():
        start = time.perf_counter()
        try:
            reply = await stub.ModelInfer(requests[i % INPUTS])
        except grpc.aio.AioRpcError:
            load.wrong += 1
        else:
            load.latencies.append(time.perf_counter() - start)
            probs = np.frombuffer(reply.raw_output_contents[0], "<f4")
            if len(probs) == 0 or int(probs.argmax()) != labels[i % INPUTS]:
                load.wrong += 1
        i += 1


async def _grpc_phase(
    port: int, requests: list[Any], labels: list[int], clients: int, count: int, seconds: float
) -> Load:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    load = Load(count, seconds)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.gather(
            *(_grpc_client(stub, requests, labels, load, k) for k in range(clients))
        )
    return load


def _run(coroutine: Coroutine[Any, Any, Load], uvloop_ok: bool = True) -> Load:
    """Run the load generator on uvloop when it is there (it is, with the serve extra);
    gRPC's asyncio clients on the standard loop (``uvloop_ok=False``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine) if uvloop_ok else asyncio.run(coroutine)


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
    requests: list[Any],
    labels: list[int],
    clients: int,
    count: int,
    seconds: float,
    with_latencies: bool = False,
    grpc: bool = False,
) -> Any:
    """One phase's figures (and, ``with_latencies``, its latencies in seconds); over gRPC
    with ``grpc`` (``requests`` are then ``ModelInferRequest`` messages)."""
    rows0, calls0 = _stats(server)
    cpu0, own0 = _cpu_seconds(server.pid), time.process_time()
    start = time.perf_counter()
    if grpc:
        port, phase = server.grpc_port, _grpc_phase
    else:
        port, phase = server.port, _phase
    load = _run(phase(port, requests, labels, clients, count, seconds), uvloop_ok=not grpc)
    wall = time.perf_counter() - start
    cpu1, own1 = _cpu_seconds(server.pid), time.process_time()
    rows1, calls1 = _stats(server)
    ms = np.array(load.latencies) * 1e3
    figures = {
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
    return (figures, np.array(load.latencies)) if with_latencies else figures


def markdown(section: dict) -> str:
    rows = [
        "| protocol | --max-wait-ms | clients | requests | requests/s | p50 (ms) | p99 (ms) "
        "| images per model call | server CPU per request (ms) | client CPU per request (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in section["runs"]:
        for phase in run["phases"]:
            rows.append(
                f"| {run['protocol']} | {run['max_wait_ms']:g} | {phase['clients']} | "
                f"{phase['requests']:,} | "
                f"{phase['requests_per_s']:,.0f} | {phase['p50_ms']:.2f} | {phase['p99_ms']:.2f} | "
                f"{phase['mean_batch']:.1f} | {phase['server_cpu_ms']:.3f} | "
                f"{phase['client_cpu_ms']:.3f} |"
            )
    host = section["host"]
    first = section["runs"][0]
    rows += [""]
    for goal in section["goals"]:
        rows.append(f"- {goal['goal']}: {goal['measured']} ({'met' if goal['met'] else 'NOT met'})")
    grpc = next((r for r in section["runs"] if r["protocol"] == "grpc"), None)
    http = next(
        (r for r in section["runs"] if r["protocol"] == "http" and r["max_wait_ms"] == 0), None
    )
    if grpc is not None and http is not None:
        for g, h in zip(grpc["phases"], http["phases"], strict=True):
            rows.append(
                f"- gRPC vs HTTP, {g['clients']} client(s), --max-wait-ms 0: "
                f"{g['requests_per_s'] / h['requests_per_s']:.2f}x the requests/s, "
                f"{g['server_cpu_ms'] / h['server_cpu_ms']:.2f}x the server CPU per request."
            )
    rows += [
        f"- Throughput at {first['phases'][-1]['clients']} clients, --max-wait-ms "
        f"{first['max_wait_ms']:g}: {first['speedup']:.1f}x the one-at-a-time rate.",
        "",
        f"Server: max batch {section['server']['max_batch']}, model {section['server']['model']}. "
        f"Host: {host['cpu']}, {host['cores']} cores (client and server share them), "
        f"{cpu_flags_line(host['cpu_flags'])}; onnxruntime {host['onnxruntime']}; load average "
        f"{host['load_average']:.1f} at the start.",
    ]
    return "\n".join(rows)


def _merge(parts: list[dict[str, float | int]], latencies: list[np.ndarray]) -> dict:
    """Rounds of one phase -> one phase: totals summed, rates and percentiles over all requests."""
    requests = sum(int(p["requests"]) for p in parts)
    seconds = sum(float(p["seconds"]) for p in parts)
    ms = np.concatenate(latencies) * 1e3
    return {
        "clients": parts[0]["clients"],
        "requests": requests,
        "wrong": sum(int(p["wrong"]) for p in parts),
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_batch": round(sum(float(p["mean_batch"]) * int(p["requests"]) for p in parts) / requests, 2),
        "server_cpu_ms": round(sum(float(p["server_cpu_ms"]) * int(p["requests"]) for p in parts) / requests, 3),
        "client_cpu_ms": round(sum(float(p["client_cpu_ms"]) * int(p["requests"]) for p in parts) / requests, 3),
    }  # fmt: skip


def measure_side_by_side(
    args: argparse.Namespace, xs: list[np.ndarray], labels: list[int]
) -> list[dict]:
    """One HTTP server per ``--max-wait-ms`` setting and one more with the default setting
    for gRPC, all started at once; their phases interleaved over ``--rounds`` rounds, so a
    change in the machine's load falls on every setting and protocol alike."""
    # (protocol, --max-wait-ms) of each server; gRPC at the server's default wait
    setups = [("http", wait) for wait in args.max_wait_ms] + [("grpc", 0.0)]
    threads = ["--threads", str(args.threads)] if args.threads else []
    with tempfile.TemporaryDirectory(prefix="mnist-serve-bench-") as tmp:
        servers: list[ServerProcess] = []
        try:
            for i, (protocol, wait) in enumerate(setups):
                servers.append(
                    start_server(
                        args.model,
                        Path(tmp) / f"server-{i}.log",
                        "--max-batch",
                        str(args.max_batch),
                        "--max-wait-ms",
                        str(wait),
                        *(["--no-grpc"] if protocol == "http" else []),
                        *threads,
                    )
                )
            requests = [
                [_grpc_request(x) if protocol == "grpc" else _request(s.port, x) for x in xs]
                for (protocol, _), s in zip(setups, servers, strict=True)
            ]
            for i, server in enumerate(servers):  # warm-up
                grpc = setups[i][0] == "grpc"
                run_phase(server, requests[i], labels, 8, 400, args.seconds, grpc=grpc)
            parts: dict[tuple[int, int], list[tuple[dict, np.ndarray]]] = {}
            per_round = args.seconds / args.rounds
            plan = [(1, args.serial_requests), (args.clients, args.concurrent_requests)]
            for r in range(args.rounds):
                for i, server in enumerate(servers):
                    protocol, wait = setups[i]
                    for clients, count in plan:
                        print(
                            f"round {r + 1}/{args.rounds}: {protocol}, --max-wait-ms {wait:g}, "
                            f"{clients} client(s) ...",
                            file=sys.stderr,
                        )
                        phase, latencies = run_phase(
                            server, requests[i], labels, clients, count // args.rounds,
                            per_round, with_latencies=True, grpc=protocol == "grpc",
                        )  # fmt: skip
                        parts.setdefault((i, clients), []).append((phase, latencies))
        finally:
            codes = [s.terminate() for s in servers]
    runs = []
    for i, (protocol, wait) in enumerate(setups):
        phases = [
            _merge([p for p, _ in parts[(i, c)]], [lat for _, lat in parts[(i, c)]])
            for c, _ in plan
        ]
        runs.append(
            {
                "protocol": protocol,
                "max_wait_ms": wait,
                "exit_code": codes[i],
                "phases": phases,
                "speedup": round(phases[-1]["requests_per_s"] / phases[0]["requests_per_s"], 2),
            }
        )
    return runs


def goals(runs: list[dict], goal_p50_ms: float) -> list[dict]:
    """The serving goals, checked on the runs (the first run is the no-wait default)."""
    http = [r for r in runs if r["protocol"] == "http"]
    no_wait = next((r for r in http if r["max_wait_ms"] == 0), None)
    waited = next((r for r in http if r["max_wait_ms"] > 0), None)
    out = []
    if no_wait is not None:
        p50 = no_wait["phases"][0]["p50_ms"]
        out.append(
            {
                "goal": f"1 client, --max-wait-ms 0: p50 <= {goal_p50_ms:g} ms",
                "measured": f"{p50:.2f} ms",
                "met": p50 <= goal_p50_ms,
            }
        )
    if no_wait is not None and waited is not None:
        fast, slow = no_wait["phases"][-1], waited["phases"][-1]
        ratio = fast["requests_per_s"] / slow["requests_per_s"]
        out.append(
            {
                "goal": f"{fast['clients']} clients: throughput with --max-wait-ms 0 no lower "
                f"than with {waited['max_wait_ms']:g}",
                "measured": f"{fast['requests_per_s']:,.0f} vs {slow['requests_per_s']:,.0f} "
                f"requests/s ({ratio:.2f}x)",
                "met": ratio >= 0.97,  # within run-to-run noise counts as no lower
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Artifacts().model())
    parser.add_argument("--out", type=Path, default=BENCH_JSON)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--serial-requests", type=int, default=2_000)
    parser.add_argument("--concurrent-requests", type=int, default=30_000)
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="time bound of each phase (all rounds)"
    )
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        nargs="+",
        default=[0.0, 2.0],
        help="server settings to measure side by side (default: 0, the default, and 2)",
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds the settings' phases are interleaved over"
    )
    parser.add_argument("--goal-p50-ms", type=float, default=GOAL_P50_MS)
    parser.add_argument("--threads", type=int, default=None, help="server's ONNX Runtime threads")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"bench_serve: missing {args.model}; run `make train export` first", file=sys.stderr)
        return 2

    load_average = os.getloadavg()[0]  # other work on the machine skews the figures
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    xs = [np.random.default_rng(i).random((1, 1, 28, 28), np.float32) for i in range(INPUTS)]
    labels = [int(session.run(None, {"image": x})[0].argmax()) for x in xs]
    runs = measure_side_by_side(args, xs, labels)
    wrong = sum(p["wrong"] for r in runs for p in r["phases"])
    codes = [r["exit_code"] for r in runs]
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
            "threads": args.threads or usable_cores(),
        },
        "runs": runs,
        "goals": goals(runs, args.goal_p50_ms),
    }
    if wrong or any(codes):
        print(f"bench_serve: {wrong} wrong answers, server exits {codes}", file=sys.stderr)
        return 1
    merge_section(args.out, "serving", section)
    print(markdown(section))
    print(f"\nsaved to {args.out} (section 'serving')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
