"""Serving benchmark: ``mnist-serve`` and Seldon MLServer on the same file, side by side, over loopback.

Run from the repo root (after ``make train export``; ``make venv-mlserver`` for the peer)::

    flock /tmp/mnist-bench.lock .venv/bin/python bench/bench_serve.py

Starts ``mnist-serve`` (default settings, HTTP and gRPC) and, when
``.venv-mlserver`` is there, MLServer with the small runtime in
``bench/mlserver/`` on the same ONNX file, both at once. The same load
generators (:mod:`serve_clients`, in this process) then drive both, one image
per request:

* HTTP/JSON (``"data"``: 784 numbers), the encoding both servers take;
* HTTP with binary tensors, as ``tritonclient.http`` sends by default
  (``mnist-serve`` only: MLServer has no binary tensor extension);
* gRPC (``grpc.aio``, the tensor in ``raw_input_contents``, as tritonclient sends it);
* the same requests on one ``ModelStreamInfer`` stream (``mnist-serve`` only:
  MLServer's stream answers the first request of a stream and ends);

each with one client (one request at a time: latency) and with ``--clients``
(64) in flight (throughput). The phases are interleaved over ``--rounds``
rounds, our server and the peer back to back in each, so a change in the
machine's load falls on both alike; the ratios are the figures to read.

Reports requests/s, p50/p99 latency, the mean rows per model call (our
server's statistics) and both processes' CPU time per request; checks that
every answer is the local model's label, checks the goals, merges a
``"serving"`` section into ``artifacts/bench.json`` and prints the markdown
table of docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
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
from serve_clients import GRPC_KINDS, KINDS, requests_for, run_load
from serve_peer import Peer, available, start_mlserver

from mnist_edge.runtime.layout import Artifacts
from mnist_edge.runtime.processes import usable_cores

INPUTS = 32  # distinct requests, cycled
OURS, PEER = "mnist-serve", "mlserver"
# (server, client kind) pairs measured; MLServer has no binary tensor extension
PLAN = [
    (OURS, "http-json"),
    (PEER, "http-json"),
    (OURS, "http-binary"),
    (OURS, "grpc"),
    (PEER, "grpc"),
    (OURS, "grpc-stream"),
]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` and its children (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _stats(server: ServerProcess | Peer) -> tuple[int, int]:
    """Our server's (images, model calls) so far; (0, 0) for the peer (no statistics extension)."""
    if not isinstance(server, ServerProcess):
        return 0, 0
    conn = server.connection()
    conn.request("GET", "/v2/models/mnist/stats")
    stats = json.loads(conn.getresponse().read())["model_stats"][0]
    conn.close()
    return stats["inference_count"], stats["execution_count"]


def run_phase(
    server: ServerProcess | Peer,
    kind: str,
    requests: list[Any],
    labels: list[int],
    clients: int,
    count: int,
    seconds: float,
) -> tuple[dict, np.ndarray]:
    """One phase's figures and its latencies in seconds."""
    rows0, calls0 = _stats(server)
    cpu0, own0 = _cpu_seconds(server.pid), time.process_time()
    start = time.perf_counter()
    port = server.grpc_port if kind in GRPC_KINDS else server.port
    assert port is not None
    load = run_load(kind, port, requests, labels, clients, count, seconds)
    wall = time.perf_counter() - start
    cpu1, own1 = _cpu_seconds(server.pid), time.process_time()
    rows1, calls1 = _stats(server)
    done = max(len(load.latencies), 1)
    figures = {
        "clients": clients,
        "requests": len(load.latencies),
        "wrong": load.wrong,
        "seconds": round(wall, 3),
        "mean_batch": round((rows1 - rows0) / calls if (calls := calls1 - calls0) else 0.0, 2),
        # CPU time per request: what the machine's load does not change much
        "server_cpu_ms": round((cpu1 - cpu0) * 1e3 / done, 3),
        "client_cpu_ms": round((own1 - own0) * 1e3 / done, 3),
    }
    return figures, np.array(load.latencies)


def _merge(parts: list[tuple[dict, np.ndarray]]) -> dict:
    """Rounds of one phase -> one phase: totals summed, rates and percentiles over all requests."""
    requests = sum(int(p["requests"]) for p, _ in parts)
    seconds = sum(float(p["seconds"]) for p, _ in parts)
    ms = np.concatenate([lat for _, lat in parts]) * 1e3

    def mean(key: str) -> float:
        return sum(float(p[key]) * int(p["requests"]) for p, _ in parts) / max(requests, 1)

    return {
        "clients": parts[0][0]["clients"],
        "requests": requests,
        "wrong": sum(int(p["wrong"]) for p, _ in parts),
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_batch": round(mean("mean_batch"), 2),
        "server_cpu_ms": round(mean("server_cpu_ms"), 3),
        "client_cpu_ms": round(mean("client_cpu_ms"), 3),
    }  # fmt: skip


def measure(
    args: argparse.Namespace, xs: list[np.ndarray], labels: list[int]
) -> tuple[list[dict], str | None]:
    """Both servers started at once; every (server, client kind, clients) phase interleaved
    over ``--rounds`` rounds. Returns the runs and the peer's version (None: no peer)."""
    threads = ["--threads", str(args.threads)] if args.threads else []
    plan = [
        (s, k) for s, k in PLAN if k in args.kinds and (s == OURS or (args.peer and available()))
    ]
    client_counts = [(1, args.serial_requests), (args.clients, args.concurrent_requests)]
    parts: dict[tuple[str, str, int], list[tuple[dict, np.ndarray]]] = {}
    codes: dict[str, int] = {}
    version = None
    with tempfile.TemporaryDirectory(prefix="mnist-serve-bench-") as tmp:
        servers: dict[str, ServerProcess | Peer] = {}
        try:
            servers[OURS] = start_server(
                args.model, Path(tmp) / "server.log", "--max-batch", str(args.max_batch),
                "--max-wait-ms", str(args.max_wait_ms), *threads,
            )  # fmt: skip
            if any(s == PEER for s, _ in plan):
                servers[PEER] = start_mlserver(args.model, Path(tmp) / "mlserver")
                version = servers[PEER].version()  # type: ignore[union-attr]
            requests = {(s, k): requests_for(k, servers[s].port, xs) for s, k in plan}
            for s, k in plan:  # warm-up
                run_phase(servers[s], k, requests[s, k], labels, 8, 400, args.seconds / 4)
            per_round = args.seconds / args.rounds
            for r in range(args.rounds):
                for clients, count in client_counts:
                    for s, k in plan if r % 2 == 0 else plan[::-1]:
                        print(f"round {r + 1}/{args.rounds}: {s}, {k}, {clients} client(s) ...",
                              file=sys.stderr)  # fmt: skip
                        parts.setdefault((s, k, clients), []).append(
                            run_phase(servers[s], k, requests[s, k], labels, clients,
                                      count // args.rounds, per_round)
                        )  # fmt: skip
        finally:
            codes = {name: server.terminate() for name, server in servers.items()}
    runs = [
        {
            "server": s,
            "client": k,
            "exit_code": codes[s],
            "phases": [_merge(parts[s, k, c]) for c, _ in client_counts],
        }
        for s, k in plan
    ]
    return runs, version


def _phase(runs: list[dict], server: str, kind: str, last: bool) -> dict | None:
    run = next((r for r in runs if r["server"] == server and r["client"] == kind), None)
    return None if run is None else run["phases"][-1 if last else 0]


def goals(runs: list[dict], goal_p50_ms: float) -> list[dict]:
    """The serving goals that the measured runs can decide."""
    out = []

    def goal(text: str, measured: str, met: bool) -> None:
        out.append({"goal": text, "measured": measured, "met": met})

    json1, json64 = _phase(runs, OURS, "http-json", False), _phase(runs, OURS, "http-json", True)
    peer_json64 = _phase(runs, PEER, "http-json", True)
    peer_grpc64 = _phase(runs, PEER, "grpc", True)  # unary: MLServer's stream answers one request
    if json1:
        goal(f"HTTP/JSON, 1 client: p50 <= {goal_p50_ms:g} ms", f"{json1['p50_ms']:.2f} ms",
             json1["p50_ms"] <= goal_p50_ms)  # fmt: skip
    if json64 and peer_json64:
        ratio = json64["requests_per_s"] / peer_json64["requests_per_s"]
        goal(f"HTTP/JSON, {json64['clients']} clients: >= 2.5x MLServer's requests/s",
             f"{ratio:.2f}x", ratio >= 2.5)  # fmt: skip
    for kind, name in (("grpc", "gRPC ModelInfer"), ("grpc-stream", "gRPC ModelStreamInfer")):
        one, many = _phase(runs, OURS, kind, False), _phase(runs, OURS, kind, True)
        if many and json64:
            ratio = many["requests_per_s"] / json64["requests_per_s"]
            goal(f"{name}, {many['clients']} in flight: >= 1.5x our HTTP/JSON's requests/s",
                 f"{ratio:.2f}x", ratio >= 1.5)  # fmt: skip
        if many and peer_grpc64:
            ratio = many["requests_per_s"] / peer_grpc64["requests_per_s"]
            goal(f"{name}, {many['clients']} in flight: >= 2x MLServer's gRPC requests/s",
                 f"{ratio:.2f}x", ratio >= 2.0)  # fmt: skip
        if one and json1:
            goal(f"{name}, 1 client: p50 <= HTTP/JSON's",
                 f"{one['p50_ms']:.2f} vs {json1['p50_ms']:.2f} ms", one["p50_ms"] <= json1["p50_ms"])  # fmt: skip
    return out


def markdown(section: dict) -> str:
    rows = [
        "| server | client | in flight | requests | requests/s | p50 (ms) | p99 (ms) "
        "| images per model call | server CPU per request (ms) | client CPU per request (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    peer = section.get("peer_version")
    for run in section["runs"]:
        name = run["server"] if run["server"] == OURS else f"MLServer {peer}"
        for phase in run["phases"]:
            batch = f"{phase['mean_batch']:.1f}" if run["server"] == OURS else "—"
            rows.append(
                f"| {name} | {run['client']} | {phase['clients']} | {phase['requests']:,} | "
                f"{phase['requests_per_s']:,.0f} | {phase['p50_ms']:.2f} | {phase['p99_ms']:.2f} | "
                f"{batch} | {phase['server_cpu_ms']:.3f} | {phase['client_cpu_ms']:.3f} |"
            )
    rows.append("")
    for goal in section["goals"]:
        rows.append(f"- {goal['goal']}: {goal['measured']} ({'met' if goal['met'] else 'NOT met'})")
    if peer is None:
        rows.append("- MLServer: not measured (no .venv-mlserver; `make venv-mlserver`)")
    host = section["host"]
    rows += [
        "",
        f"Server: max batch {section['server']['max_batch']}, --max-wait-ms "
        f"{section['server']['max_wait_ms']:g}, model {section['server']['model']}. "
        f"Host: {host['cpu']}, {host['cores']} cores (clients and servers share them), "
        f"{cpu_flags_line(host['cpu_flags'])}; onnxruntime {host['onnxruntime']}; load average "
        f"{host['load_average']:.1f} at the start, {host['load_average_end']:.1f} at the end.",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Artifacts().model())
    parser.add_argument("--out", type=Path, default=BENCH_JSON)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--serial-requests", type=int, default=4_000)
    parser.add_argument("--concurrent-requests", type=int, default=40_000)
    parser.add_argument(
        "--seconds", type=float, default=12.0, help="time bound of each phase (all rounds)"
    )
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="our server's setting")
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds the phases are interleaved over"
    )
    parser.add_argument(
        "--kinds",
        type=lambda text: text.split(","),
        default=list(KINDS),
        help=f"client kinds to measure, comma-separated (default: {','.join(KINDS)})",
    )
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip MLServer")
    parser.add_argument("--goal-p50-ms", type=float, default=0.6)
    parser.add_argument(
        "--threads", type=int, default=None, help="our server's ONNX Runtime threads"
    )
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.kinds) - set(KINDS)):
        parser.error(f"unknown --kinds {','.join(unknown)}; choose from {','.join(KINDS)}")
    if not args.model.is_file():
        print(f"bench_serve: missing {args.model}; run `make train export` first", file=sys.stderr)
        return 2
    if args.peer and not available():
        print("bench_serve: no .venv-mlserver, MLServer not measured (`make venv-mlserver`)",
              file=sys.stderr)  # fmt: skip

    load_average = os.getloadavg()[0]  # other work on the machine skews the figures
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    xs = [np.random.default_rng(i).random((1, 1, 28, 28), np.float32) for i in range(INPUTS)]
    labels = [int(session.run(None, {"image": x})[0].argmax()) for x in xs]
    runs, version = measure(args, xs, labels)
    wrong = sum(p["wrong"] for r in runs for p in r["phases"])
    code = next(r["exit_code"] for r in runs if r["server"] == OURS)
    section = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "cpu": cpu_name(),
            "cpu_flags": cpu_flags(),
            "cores": usable_cores(),
            "onnxruntime": ort.__version__,
            "load_average": load_average,
            "load_average_end": os.getloadavg()[0],
        },
        "server": {
            "model": str(args.model),
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "threads": args.threads or usable_cores(),
        },
        "peer_version": version,
        "runs": runs,
        "goals": goals(runs, args.goal_p50_ms),
    }
    if wrong or code:
        print(f"bench_serve: {wrong} wrong answers, mnist-serve exits {code}", file=sys.stderr)
        return 1
    merge_section(args.out, "serving", section)
    print(markdown(section))
    print(f"\nsaved to {args.out} (section 'serving')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
