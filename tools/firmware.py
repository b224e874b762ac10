"""Measure a C library from ``mnist-export`` on QEMU's Cortex-M boards: one :func:`measure` call,
for one library folder (``mnist.h`` + ``.c`` files) and one board, classifies the test pictures
with the library compiled for the host and with the firmware built around it
(:mod:`mnist_edge.tools.firmware_build`) run on the board (:mod:`mnist_edge.tools.firmware_qemu`),
and returns the library's size, the host's answers and the board's.

The tests (``tests/test_firmware.py``) and the benchmark (``bench/bench_mcu.py``, ``make
bench``) call it; this module also holds the budgets the library must fit and reads the
figures its ``mnist.h`` states.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_edge.tools.firmware_build import (
    BOARDS,
    CROSS_PACKAGES,
    Board,
    Classified,
    FirmwareError,
    LibrarySize,
    Pictures,
    build_firmware,
    classify_on_host,
    missing_tools,
)
from mnist_edge.tools.firmware_qemu import FirmwareRun, run_firmware


@dataclass(frozen=True)
class Budget:
    """The most a library may take on a Cortex-M4 part, bytes."""

    flash: int
    ram: int  # static RAM plus the peak stack of one call


BUDGETS = {"int8": Budget(64 * 1024, 32 * 1024), "fp32": Budget(160 * 1024, 64 * 1024)}


@dataclass(frozen=True)
class StatedMemory:
    """What a library's ``mnist.h`` says it takes, bytes."""

    flash: int
    static_ram: int
    stack: int


_STATED = {
    "flash": re.compile(r"^ \*\s+flash: (\d+) bytes", re.M),
    "static_ram": re.compile(r"^ \*\s+static RAM \(data \+ bss\): (\d+) bytes", re.M),
    "stack": re.compile(r"^ \*\s+stack of one call: at most (\d+) bytes", re.M),
}


def stated_memory(library: Path) -> StatedMemory:
    """The flash, static RAM and stack figures stated in ``library/mnist.h``.

    Raises:
        FirmwareError: the header states none, or not all three.
    """
    text = (library / "mnist.h").read_text()
    found = {name: pattern.search(text) for name, pattern in _STATED.items()}
    missing = [name for name, match in found.items() if match is None]
    if missing:
        raise FirmwareError(f"{library / 'mnist.h'} states no {', '.join(missing)} figure")
    return StatedMemory(**{name: int(match.group(1)) for name, match in found.items() if match})


@dataclass(frozen=True)
class Measurement:
    """One library on one board: its size, the host's answers and the firmware's run."""

    board: Board
    size: LibrarySize
    host: Classified
    run: FirmwareRun

    @property
    def ram(self) -> int:
        """Static RAM plus the deeper peak stack of the two calls, bytes."""
        return self.size.static_ram + max(self.run.stack_classify, self.run.stack_frame)

    @property
    def labels_agree(self) -> bool:
        return np.array_equal(self.host.digit_labels, self.run.classified.digit_labels) and (
            np.array_equal(self.host.frame_labels, self.run.classified.frame_labels)
        )

    @property
    def max_probability_diff(self) -> float:
        """Largest |p_board - p_host| over the digits and the frames."""
        return float(
            max(
                np.abs(
                    self.host.digit_probabilities - self.run.classified.digit_probabilities
                ).max(),
                np.abs(
                    self.host.frame_probabilities - self.run.classified.frame_probabilities
                ).max(),
            )
        )


def measure(
    library: Path, pictures: Pictures, board: str, build_dir: Path,
    source_dir: Path = Path("firmware"), timeout: float = 120.0, host: Classified | None = None,
    stack_size: int | None = None,
) -> Measurement:  # fmt: skip
    """Classify ``pictures`` with ``library`` on the host and on ``board`` (QEMU) and measure it.

    Args:
        library: a C library folder from ``mnist-export`` (``mnist.h`` and its ``.c`` files).
        board: a key of :data:`BOARDS`.
        build_dir: where the objects, ``test_data.c`` and the firmware go (made if missing).
        source_dir: the repository's ``firmware/`` folder.
        timeout: seconds QEMU may run.
        host: the host library's answers on ``pictures`` (:func:`classify_on_host`), when
            already known (one per library, for every board).
        stack_size: bytes of stack to link the firmware with, instead of the linker
            script's, for a library that needs more.

    Raises:
        ValueError: an unknown ``board``.
        FirmwareError: a tool is missing, a build failed, or the firmware did not finish.
    """
    if board not in BOARDS:
        raise ValueError(f"board must be one of {', '.join(BOARDS)}, not {board!r}")
    missing = missing_tools()
    if missing:
        raise FirmwareError(f"needs {', '.join(missing)}: apt-get install {CROSS_PACKAGES}")
    if host is None:
        host = classify_on_host(library, pictures, build_dir / "host")
    firmware = build_firmware(
        library, pictures, host, BOARDS[board], build_dir / board, source_dir, stack_size
    )
    return Measurement(firmware.board, firmware.size, host, run_firmware(firmware, timeout))
