"""`mnist-infer` stopped mid-run by SIGINT, SIGTERM or SIGKILL leaves no process and no partial output.

Each test runs the real console script on 30,000 inputs (a folder of 1,000
PNGs given 30 times) with two worker processes, waits until results are being
written, then signals the main process. Every process of the run carries a
marker in its environment, so a scan of ``/proc`` finds any that remain
(the workers, the forkserver, the resource tracker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers.models import digit, linear_model
from PIL import Image

SCRIPT = Path(sys.executable).with_name("mnist-infer")
REPEATS = 30  # x 1,000 files

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    root = tmp_path_factory.mktemp("shutdown")
    folder = root / "digits"
    folder.mkdir()
    for i in range(1000):
        Image.fromarray(digit(i)).save(folder / f"{i:04d}.png")
    return linear_model(root / "m.onnx"), folder


def _processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``marker``."""
    needle = f"MNIST_EDGE_TEST_RUN={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    with open(f"/proc/{entry}/stat") as s:
                        if s.read().rsplit(")", 1)[1].split()[0] != "Z":  # zombies are gone
                            found.append(int(entry))
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


def _temps(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*.tmp"))  # atomic_path's temp files


def _start(workload, out: Path, marker: str) -> subprocess.Popen:
    """Start the run (stderr to ``OUT.err``: a pipe would be held open by leftover processes)."""
    model, folder = workload
    env = {**os.environ, "MNIST_EDGE_TEST_RUN": marker}
    args = [str(SCRIPT), *[str(folder)] * REPEATS, "--model", str(model), "--workers", "2"]
    args += ["--format", "csv", "-o", str(out)]
    with open(f"{out}.err", "w") as err:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    # mid-run: the temp output is getting results
    while not any(t.stat().st_size > 4096 for t in _temps(out) if t.exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"the run ended or stalled before it was signalled: {_stderr(out)}"
            )
        time.sleep(0.01)
    return proc


def _stderr(out: Path) -> str:
    return Path(f"{out}.err").read_text()


def _wait_gone(marker: str, seconds: float) -> float:
    start = time.monotonic()
    while _processes_with(marker):
        if time.monotonic() - start > seconds:
            left = _processes_with(marker)
            for pid in left:  # do not leak them into the rest of the suite
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"processes of the run still alive after {seconds} s: {left}")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.parametrize(
    ("signum", "code", "previous"),
    [
        (signal.SIGINT, 130, None),
        (signal.SIGTERM, 143, "path,label,confidence,error\nold,1,0.5,\n"),
    ],
    ids=["sigint-no-previous-output", "sigterm-keeps-previous-output"],
)
def test_interrupt_stops_cleanly(workload, tmp_path, signum, code, previous):
    out = tmp_path / "out.csv"
    if previous is not None:
        out.write_text(previous)
    marker = uuid.uuid4().hex
    proc = _start(workload, out, marker)
    proc.send_signal(signum)
    proc.wait(timeout=60)
    _wait_gone(marker, 5)
    stderr = _stderr(out)
    assert proc.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"mnist-infer: stopped by {signal.Signals(signum).name}"
    )
    assert f"{out} was not written" in lines[0]
    assert _temps(out) == []
    assert (out.read_text() if out.exists() else None) == previous


def test_sigkill_workers_exit_and_the_next_run_removes_the_stale_temp(workload, tmp_path):
    out = tmp_path / "out.csv"
    marker = uuid.uuid4().hex
    proc = _start(workload, out, marker)
    assert len(_processes_with(marker)) >= 4  # main, forkserver, two workers (and the tracker)
    proc.kill()
    proc.wait(timeout=10)
    took = _wait_gone(marker, 5)  # about a second on an idle machine; CI shares its cores
    assert took < 5
    stale = _temps(out)
    assert len(stale) == 1 and not out.exists()
    model, folder = workload
    rerun = subprocess.run(
        [str(SCRIPT), str(folder / "0000.png"), "--model", str(model), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert _temps(out) == [] and "0000.png" in out.read_text()
