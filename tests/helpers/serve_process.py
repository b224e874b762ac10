"""Start ``mnist-serve`` in a subprocess on a free loopback port (serve tests and bench_serve.py).

Not a test module. The server binds port 0 itself and prints the port it got,
so two test runs never race for a port.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PORT_LINE = re.compile(r"on http://127\.0\.0\.1:(\d+) (?:and grpc://127\.0\.0\.1:(\d+) )?")


class ServerProcess:
    """A running ``mnist-serve``: ``url`` (host:port), ``grpc_url``, ``pid``, its log, how to stop it."""

    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, grpc_port: int | None, log: Path
    ) -> None:
        self.proc = proc
        self.port = port
        self.url = f"127.0.0.1:{port}"
        self.grpc_port = grpc_port
        self.grpc_url = f"127.0.0.1:{grpc_port}" if grpc_port else ""
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        """The server's resident memory now (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def connection(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Stop it whatever state it is in (test teardown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_server(
    model: Path, log: Path, *args: str, startup_timeout: float = 60.0
) -> ServerProcess:
    """Run ``mnist-serve --model MODEL --port 0 --grpc-port 0 ARGS...``; return once it answers ready.

    Raises:
        RuntimeError: it exited or did not become ready in time (the message has its log).
    """
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "mnist_edge.runtime.serve.cli", "--model", str(model)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", "0", "--grpc-port", "0", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + startup_timeout
    port = grpc_port = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mnist-serve exited with {proc.returncode}:\n{log.read_text()}")
        if port is None:
            match = PORT_LINE.search(log.read_text())
            if match:
                port = int(match.group(1))
                grpc_port = int(match.group(2)) if match.group(2) else None
        if port is not None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    return ServerProcess(proc, port, grpc_port, log)
            except OSError:
                pass
            finally:
                conn.close()
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"mnist-serve not ready after {startup_timeout} s:\n{log.read_text()}")


@contextlib.contextmanager
def serving(model: Path, log_dir: Path, *args: str) -> Iterator[ServerProcess]:
    """:func:`start_server` for a block (a module's fixture); at its end SIGTERM must exit 0 (else: the log)."""
    log = log_dir / "server.log"
    proc = start_server(model, log, *args)
    yield proc
    assert proc.terminate() == 0, log.read_text()
