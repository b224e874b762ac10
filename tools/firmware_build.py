"""Build the example firmware (``firmware/``) around a C library for one of QEMU's Cortex-M boards.

:func:`classify_on_host` compiles the library with the host's ``cc`` (a shared object, called
through ctypes) and classifies the test pictures: the labels the firmware must reproduce.
:func:`build_firmware` writes those pictures and labels as ``test_data.c``, cross-compiles the
library, ``firmware/*.c`` and ``test_data.c`` with ``arm-none-eabi-gcc`` and newlib, and sizes
the library's objects (``arm-none-eabi-size``) and the libm functions they pull in (the link
map). :mod:`mnist_edge.tools.firmware_qemu` runs the result; :func:`mnist_edge.tools.firmware.measure`
does both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_edge.runtime.atomic import atomic_write_text
from mnist_edge.runtime.errors import MnistEdgeError

if TYPE_CHECKING:
    from mnist_edge.export.c.build import HostLibrary

CROSS_GCC = "arm-none-eabi-gcc"
CROSS_SIZE = "arm-none-eabi-size"
QEMU = "qemu-system-arm"
HOST_CC = "cc"
CROSS_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"

FIRMWARE_SOURCES = ("startup.c", "main.c")
LINKER_SCRIPT = "mps2.ld"
# The flags export measures the library with (mnist.h states its figures for them).
COMMON_FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra")
LINK_FLAGS = ("-nostartfiles", "--specs=nano.specs", "--specs=rdimon.specs", "-Wl,--gc-sections")


@dataclass(frozen=True)
class Board:
    """A QEMU machine and the compiler flags of its core."""

    machine: str
    core: str
    cpu_flags: tuple[str, ...]


BOARDS = {
    "mps2-an386": Board(
        "mps2-an386",
        "Cortex-M4F",
        ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
    ),
    "mps2-an500": Board(
        "mps2-an500",
        "Cortex-M7",
        ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
    ),
}


class FirmwareError(MnistEdgeError, RuntimeError):
    """A tool is missing, a compile or link failed, or the firmware did not run to its end."""


def missing_tools() -> list[str]:
    """The cross tools (and host compiler) this machine lacks, by command name."""
    return [tool for tool in (CROSS_GCC, CROSS_SIZE, QEMU, HOST_CC) if shutil.which(tool) is None]


@dataclass(frozen=True)
class Pictures:
    """What the firmware classifies: 28x28 digits and larger frames with a digit somewhere."""

    digits: np.ndarray  # (N, 28, 28) uint8
    frames: tuple[np.ndarray, ...]  # each (height, width) uint8


def make_pictures(images: np.ndarray, count: int) -> Pictures:
    """The first ``count`` of ``images`` (uint8, (N, 28, 28)) and two frames made of two of them.

    The frames are what a camera gives the pixels-in path: a dark 48x64 frame with the first
    digit off-centre, and a light 64x48 frame with the second one dark and enlarged 1.5x.
    """
    if count < 2 or count > len(images):
        raise ValueError(f"count must be 2 to {len(images)} digits, not {count}")
    digits = np.ascontiguousarray(images[:count], dtype=np.uint8)
    dark = np.zeros((48, 64), np.uint8)
    dark[12:40, 30:58] = digits[0]
    grow = np.arange(42) * 28 // 42  # nearest-neighbour 28 -> 42
    light = np.zeros((64, 48), np.uint8)
    light[15:57, 3:45] = digits[1][np.ix_(grow, grow)]
    return Pictures(digits, (dark, 255 - light))


@dataclass(frozen=True)
class Classified:
    """Labels and probabilities of the digits and of the frames, from one build of the library."""

    digit_labels: np.ndarray  # (N,) int
    digit_probabilities: np.ndarray  # (N, 10) float32
    frame_labels: np.ndarray  # (F,) int
    frame_probabilities: np.ndarray  # (F, 10) float32


def run_tool(cmd: list[str], what: str, timeout: float | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise FirmwareError(
            f"{what}: {cmd[0]} is not installed (apt-get install {CROSS_PACKAGES})"
        ) from None
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        tail = out.strip().splitlines()[-1:] or ["no output"]
        raise FirmwareError(
            f"{what}: still running after {timeout:g} s (last: {tail[0]})"
        ) from None
    if proc.returncode != 0:
        raise FirmwareError(
            f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}"
        )
    return proc.stdout


def library_sources(library: Path) -> list[Path]:
    sources = sorted(library.glob("*.c"))
    if not (library / "mnist.h").is_file() or not sources:
        raise FirmwareError(f"{library}: not a C library folder (mnist.h and .c files)")
    return sources


def classify_on_host(library: Path, pictures: Pictures, build_dir: Path) -> Classified:
    """Compile ``library`` with the host's ``cc`` (as export validates it) and classify ``pictures``."""
    from mnist_edge.export.c.build import HostLibrary, build_shared

    library_sources(library)
    build_dir.mkdir(parents=True, exist_ok=True)
    return classify_with(HostLibrary(build_shared(library, (build_dir / "libmnist.so").resolve())), pictures)  # fmt: skip


def classify_with(host: HostLibrary, pictures: Pictures) -> Classified:
    """The labels and probabilities a library compiled for the host gives on ``pictures``."""
    digit_labels, digit_p = host.classify(pictures.digits)
    frames = [host.classify_frame(frame) for frame in pictures.frames]
    return Classified(
        digit_labels,
        digit_p,
        np.array([label for label, _ in frames], np.int64),
        np.array([p for _, p in frames], np.float32).reshape(-1, 10),
    )


def _c_bytes(data: np.ndarray) -> str:
    flat = data.reshape(-1)
    return ",\n".join(", ".join(str(v) for v in flat[i : i + 28]) for i in range(0, len(flat), 28))


def write_test_data(path: Path, pictures: Pictures, host: Classified) -> None:
    """``test_data.c`` (declared by ``firmware/test_data.h``): the pictures and the host's labels."""
    digits = ",\n".join("{" + _c_bytes(d) + "}" for d in pictures.digits)
    frames = "".join(
        f"static const unsigned char frame{i}[{f.size}] = {{\n{_c_bytes(f)}\n}};\n"
        for i, f in enumerate(pictures.frames)
    )
    entries = ", ".join(
        f"{{{f.shape[0]}, {f.shape[1]}, frame{i}, {int(host.frame_labels[i])}}}"
        for i, f in enumerate(pictures.frames)
    )
    labels = ", ".join(str(int(v)) for v in host.digit_labels)
    atomic_write_text(
        path,
        "/* Generated by mnist_edge.tools.firmware_build: test digits and frames, with the labels the\n"
        " * same library gave on the host. */\n"
        '#include "test_data.h"\n\n'
        f"const int test_digit_count = {len(pictures.digits)};\n"
        f"const unsigned char test_digits[][784] = {{\n{digits}\n}};\n"
        f"const signed char test_digit_labels[] = {{{labels}}};\n\n"
        f"{frames}"
        f"const int test_frame_count = {len(pictures.frames)};\n"
        f"const struct test_frame test_frames[] = {{{entries}}};\n",
    )


@dataclass(frozen=True)
class LibrarySize:
    """Bytes the library takes on the board, from its objects and the link map."""

    text: int  # code and constants (.text + .rodata), in flash
    data: int  # initialised data: in RAM, and its initial values in flash
    bss: int  # zeroed data, in RAM
    libm: int  # code and constants of the libm functions the library calls, in flash

    @property
    def flash(self) -> int:
        return self.text + self.data + self.libm

    @property
    def static_ram(self) -> int:
        return self.data + self.bss


def _object_sizes(objects: list[Path]) -> tuple[int, int, int]:
    out = run_tool([CROSS_SIZE, "-B", "-t", *map(str, objects)], "arm-none-eabi-size")
    total = [line.split() for line in out.splitlines() if line.rstrip().endswith("(TOTALS)")]
    if not total:
        raise FirmwareError(f"arm-none-eabi-size printed no totals: {out.strip()[-200:]}")
    text, data, bss = (int(v) for v in total[0][:3])
    return text, data, bss


# An input section in a GNU ld map: name, address, size, file (the name may end its own line).
_MAP_SECTION = re.compile(
    r"^ (\.(?:text|rodata|data)\S*)\s+0x[0-9a-f]+\s+0x([0-9a-f]+) (\S+)$", re.M
)


def _libm_bytes(map_text: str) -> int:
    return sum(
        int(size, 16) for _, size, source in _MAP_SECTION.findall(map_text) if "/libm.a(" in source
    )


@dataclass(frozen=True)
class Firmware:
    """A linked firmware image and the size of the library inside it."""

    elf: Path
    board: Board
    size: LibrarySize


def build_firmware(
    library: Path, pictures: Pictures, host: Classified, board: Board, build_dir: Path,
    source_dir: Path, stack_size: int | None = None,
) -> Firmware:  # fmt: skip
    """Cross-compile ``library`` and the firmware in ``source_dir`` for ``board`` into ``build_dir``.

    ``stack_size`` (bytes) replaces the linker script's stack size, for a library whose
    buffers do not fit it.
    """
    for name in (*FIRMWARE_SOURCES, LINKER_SCRIPT, "test_data.h"):
        if not (source_dir / name).is_file():
            raise FirmwareError(f"{source_dir}: no {name} (the firmware folder of the repository)")
    build_dir.mkdir(parents=True, exist_ok=True)
    flags = [*board.cpu_flags, *COMMON_FLAGS]
    objects = []
    for source in library_sources(library):
        obj = build_dir / (source.stem + ".o")
        run_tool([CROSS_GCC, *flags, "-c", str(source), "-o", str(obj)], f"{CROSS_GCC} on {source}")
        objects.append(obj)
    text, data, bss = _object_sizes(objects)
    write_test_data(build_dir / "test_data.c", pictures, host)
    elf, map_file = build_dir / "firmware.elf", build_dir / "firmware.map"
    run_tool(
        [CROSS_GCC, *flags, f"-I{library}", f"-I{source_dir}",
         *(str(source_dir / s) for s in FIRMWARE_SOURCES), str(build_dir / "test_data.c"),
         *map(str, objects), "-T", str(source_dir / LINKER_SCRIPT), *LINK_FLAGS,
         f"-Wl,-Map={map_file}", *([f"-Wl,--defsym=STACK_SIZE={stack_size}"] if stack_size else []),
         "-lm", "-o", str(elf)],
        f"linking the firmware for {board.machine}",
    )  # fmt: skip
    libm = _libm_bytes(map_file.read_text())
    return Firmware(elf, board, LibrarySize(text, data, bss, libm))
