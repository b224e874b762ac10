"""Run a firmware built by :mod:`mnist_edge.tools.firmware_build` on its QEMU board and parse
what it prints: a label, the SysTick ticks and the probabilities (as float bits) per picture,
and the peak stack of one call of each function, measured by painting.

QEMU runs with ``-semihosting -icount shift=0``: one instruction per virtual nanosecond, so
the SysTick ticks count instructions (not cycles; a proxy for device time).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import numpy as np

from mnist_edge.tools.firmware_build import QEMU, Classified, Firmware, FirmwareError

# QEMU's MPS2 boards clock SysTick from a 25 MHz core clock; -icount shift=0 runs one
# instruction per virtual nanosecond, so one tick is 40 instructions.
INSTRUCTIONS_PER_TICK = 40


@dataclass(frozen=True)
class FirmwareRun:
    """What the firmware printed on the board: per picture labels, probabilities and work."""

    classified: Classified
    digit_ticks: np.ndarray  # (N,) SysTick ticks of each mnist_classify call
    frame_ticks: np.ndarray  # (F,)
    stack_classify: int  # peak stack of one mnist_classify call, bytes
    stack_frame: int  # peak stack of one mnist_classify_frame call, bytes
    digits_agreed: int  # the firmware's own count of labels equal to the host's
    frames_agreed: int

    @property
    def instructions_per_image(self) -> float:
        """Mean instructions of one mnist_classify call (QEMU's -icount, not cycles)."""
        return float(self.digit_ticks.mean()) * INSTRUCTIONS_PER_TICK


_LINE = re.compile(
    r"^(digit|frame) (\d+) (?:\d+x\d+ )?label (-?\d+) host -?\d+ ticks (\d+) p((?: [0-9a-f]{8}){10})$",
    re.M,
)
_SUMMARY = re.compile(
    r"^summary digits \d+ agreed (\d+) frames \d+ frames_agreed (\d+) digit_ticks \d+ "
    r"stack_classify (\d+) stack_frame (\d+)$",
    re.M,
)


def run_firmware(firmware: Firmware, timeout: float) -> FirmwareRun:
    """Run ``firmware`` on its QEMU board and parse its output.

    Raises:
        FirmwareError: QEMU failed, ran past ``timeout`` seconds, or the output has no summary.
            A firmware whose labels differ from the host's exits 1: that is returned, not raised.
    """
    cmd = [QEMU, "-M", firmware.board.machine, "-nographic", "-semihosting", "-icount", "shift=0",
           "-kernel", str(firmware.elf)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise FirmwareError(
            f"{firmware.board.machine}: the firmware ran past {timeout:g} s"
        ) from None
    summary = _SUMMARY.search(proc.stdout)
    if proc.returncode not in (0, 1) or summary is None:
        tail = (proc.stdout + proc.stderr).strip()[-400:] or "no output"
        raise FirmwareError(
            f"{firmware.board.machine}: the firmware stopped ({proc.returncode}): {tail}"
        )
    rows: dict[str, list[tuple[int, int, np.ndarray]]] = {"digit": [], "frame": []}
    for kind, _, label, ticks, bits in _LINE.findall(proc.stdout):
        p = np.array([int(b, 16) for b in bits.split()], np.uint32).view(np.float32)
        rows[kind].append((int(label), int(ticks), p))
    digits, frames = rows["digit"], rows["frame"]
    classified = Classified(
        np.array([r[0] for r in digits]),
        np.array([r[2] for r in digits], np.float32).reshape(-1, 10),
        np.array([r[0] for r in frames]),
        np.array([r[2] for r in frames], np.float32).reshape(-1, 10),
    )
    return FirmwareRun(
        classified,
        np.array([r[1] for r in digits]),
        np.array([r[1] for r in frames]),
        int(summary.group(3)),
        int(summary.group(4)),
        int(summary.group(1)),
        int(summary.group(2)),
    )
