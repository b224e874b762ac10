"""Start Seldon MLServer on our ONNX file, the peer bench_serve.py measures against; not a test module.

MLServer runs from its own venv (``.venv-mlserver``, ``make venv-mlserver``:
``mlserver``, ``uvloop<0.21``, ``onnxruntime``) with the small runtime and
settings in ``bench/mlserver/``: the runtime decodes and encodes with MLServer's
own ``NumpyCodec``; the settings turn off what our server's figures do not pay
for either (per-request debug logging, gzip of answers nobody asked to
compress, the separate metrics server) and run inference in the server
process (``parallel_workers: 0``, its fastest setting for a model this small).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLSERVER_VENV = ROOT / ".venv-mlserver"
MLSERVER_FILES = Path(__file__).resolve().parent / "mlserver"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Peer:
    """A running MLServer: ``port`` (HTTP), ``grpc_port``, ``pid``, how to stop it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, grpc_port: int, log: Path):
        self.proc = proc
        self.port = port
        self.grpc_port = grpc_port
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def version(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", "/v2")
        version = str(json.loads(conn.getresponse().read()).get("version", "?"))
        conn.close()
        return version

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, return the exit status (MLServer's own; not part of our goals)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def available() -> bool:
    return (MLSERVER_VENV / "bin" / "mlserver").is_file()


def start_mlserver(model: Path, folder: Path, startup_timeout: float = 120.0) -> Peer:
    """MLServer serving ``model`` as ``mnist`` on free loopback ports; returns once it is ready.

    ``folder`` receives the runtime, its settings and the log.

    Raises:
        RuntimeError: it exited or did not become ready in time (the message has its log).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("mnist_runtime.py", "settings.json"):
        shutil.copy(MLSERVER_FILES / name, folder / name)
    model_settings = json.loads((MLSERVER_FILES / "model-settings.json").read_text())
    model_settings["parameters"]["uri"] = str(model.resolve())
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    port, grpc_port, metrics_port = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        "MLSERVER_HTTP_PORT": str(port),
        "MLSERVER_GRPC_PORT": str(grpc_port),
        "MLSERVER_METRICS_PORT": str(metrics_port),
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    log = folder / "mlserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
        )
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlserver exited with {proc.returncode}:\n{log.read_text()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/v2/models/mnist/ready")
            if conn.getresponse().status == 200:
                return Peer(proc, port, grpc_port, log)
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"mlserver not ready after {startup_timeout} s:\n{log.read_text()}")
