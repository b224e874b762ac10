"""Compile the C library: with the host's ``cc`` into a shared library (validation,
tests) and, when ``arm-none-eabi-gcc`` is installed, for a Cortex-M4 to measure
its flash, static RAM and stack."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_edge.runtime.errors import MnistEdgeError, first_line

WARNINGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
CORTEX_M4 = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
ARM_GCC = "arm-none-eabi-gcc"
CC_HINT = "install a C compiler (Debian/Ubuntu: apt-get install gcc; macOS: xcode-select --install)"


class BuildError(MnistEdgeError, RuntimeError):
    """The C sources do not compile, or no compiler is installed."""


def host_cc() -> str:
    """The host C compiler (``cc``) or :class:`BuildError` saying how to get one."""
    cc = shutil.which("cc")
    if cc is None:
        raise BuildError(f"no C compiler: `cc` is not on PATH; {CC_HINT}")
    return cc


def _run(cmd: Sequence[str], cwd: Path) -> None:
    done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"{Path(cmd[0]).name} failed on {cwd}: {first_line(done.stderr or done.stdout)}")  # fmt: skip


def build_shared(
    folder: Path, out: Path, extra: Sequence[str] = (), sources: Sequence[str] | None = None
) -> Path:
    """``cc`` every ``.c`` in ``folder`` (or ``sources``) into the shared library ``out``.

    ``extra`` adds flags, e.g. ``-fsanitize=address,undefined``.
    """
    files = list(sources) if sources is not None else sorted(p.name for p in folder.glob("*.c"))
    cmd = [
        host_cc(),
        *WARNINGS,
        "-O2",
        "-fPIC",
        "-shared",
        *extra,
        *files,
        "-o",
        str(out.resolve()),
        "-lm",
    ]
    _run(cmd, folder)
    return out


@dataclass(frozen=True)
class TargetSize:
    """What the library takes on a Cortex-M4, from ``arm-none-eabi-size`` and ``-fstack-usage``."""

    flash: int  # text + rodata + data initialisers of the library's objects
    static_ram: int  # data + bss
    stack: int  # every function's frame added up: a bound for any call chain (no recursion)
    compiler: str


def measure_cortex_m4(folder: Path) -> TargetSize | None:
    """Compile ``folder``'s ``.c`` files for a Cortex-M4 at -O2 and measure them; None without the tools."""
    gcc, size = shutil.which(ARM_GCC), shutil.which("arm-none-eabi-size")
    if gcc is None or size is None:
        return None
    with tempfile.TemporaryDirectory(prefix="mnist-c-m4-") as tmp:
        work = Path(tmp)
        objs = []
        for src in sorted(folder.glob("*.c")):
            obj = work / (src.stem + ".o")
            _run([gcc, *CORTEX_M4, *WARNINGS, "-O2", "-fstack-usage", "-c", str(src.resolve()), "-o", str(obj)], work)  # fmt: skip
            objs.append(str(obj))
        done = subprocess.run([size, "-B", "-t", *objs], capture_output=True, text=True, check=True)
        text, data, bss = (int(v) for v in done.stdout.strip().splitlines()[-1].split()[:3])
        stack = 0
        for su in work.glob("*.su"):
            for line in su.read_text().splitlines():
                stack += int(line.split("\t")[1])
        version = subprocess.run([gcc, "-dumpversion"], capture_output=True, text=True, check=True)
    return TargetSize(text + data, data + bss, stack, f"{ARM_GCC} {version.stdout.strip()}")


class HostLibrary:
    """The library compiled for this machine, called through ctypes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lib = ctypes.CDLL(str(path))
        self._classify = self._lib.mnist_classify
        self._classify.restype = ctypes.c_int
        self._classify.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._frame = getattr(self._lib, "mnist_classify_frame", None)
        if self._frame is not None:
            self._frame.restype = ctypes.c_int
            self._frame.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]

    def classify(self, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, 28, 28) digits -> (labels (N,), probabilities (N, 10) float32)."""
        digits = np.ascontiguousarray(digits, dtype=np.uint8)
        probs = np.zeros((len(digits), 10), np.float32)
        labels = np.zeros(len(digits), np.int64)
        for i in range(len(digits)):
            labels[i] = self._classify(digits[i].ctypes.data, probs[i].ctypes.data)
        return labels, probs

    def classify_frame(self, frame: np.ndarray) -> tuple[int, np.ndarray]:
        """One uint8 (H, W) frame -> (label or negative code, probabilities (10,))."""
        if self._frame is None:
            raise BuildError(f"{self.path} has no mnist_classify_frame")
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        probs = np.zeros(10, np.float32)
        height, width = frame.shape
        label = self._frame(frame.ctypes.data if frame.size else None, height, width, probs.ctypes.data)  # fmt: skip
        return int(label), probs
