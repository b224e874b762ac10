"""Build the example firmware (``firmware/``) around a C library from ``mnist-export``, run it on
QEMU's Cortex-M boards and read back its labels, work and memory.

One :func:`measure` call, for one library folder (``mnist.h`` + ``.c`` files) and one board:

1. compiles the library with the host's ``cc`` (a shared object, called through ctypes) and
   classifies the test pictures: the labels the firmware must reproduce;
2. writes those pictures and labels as ``test_data.c`` into the build folder;
3. cross-compiles the library, ``firmware/*.c`` and ``test_data.c`` with ``arm-none-eabi-gcc``
   and newlib, sizes the library's objects (``arm-none-eabi-size``) and the libm functions
   they pull in (the link map);
4. runs ``qemu-system-arm -M BOARD -semihosting -icount shift=0`` and parses what the
   firmware prints: a label, the SysTick ticks and the probabilities (as float bits) per
   picture, and the peak stack of one call of each function, measured by painting.

``python -m mnist_edge.tools.firmware`` (``make firmware``) does it for one precision and
board and prints the figures; the tests (``tests/test_firmware.py``) and the benchmark
(``bench/bench_mcu.py``) call :func:`measure`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_edge.runtime.atomic import atomic_write_text
from mnist_edge.runtime.errors import MnistEdgeError

CROSS_GCC = "arm-none-eabi-gcc"
CROSS_SIZE = "arm-none-eabi-size"
QEMU = "qemu-system-arm"
HOST_CC = "cc"
CROSS_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"

# QEMU's MPS2 boards clock SysTick from a 25 MHz core clock; -icount shift=0 runs one
# instruction per virtual nanosecond, so one tick is 40 instructions.
INSTRUCTIONS_PER_TICK = 40
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
class Classified:
    """Labels and probabilities of the digits and of the frames, from one build of the library."""

    digit_labels: np.ndarray  # (N,) int
    digit_probabilities: np.ndarray  # (N, 10) float32
    frame_labels: np.ndarray  # (F,) int
    frame_probabilities: np.ndarray  # (F, 10) float32


def _run(cmd: list[str], what: str, timeout: float | None = None) -> str:
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


def _sources(library: Path) -> list[Path]:
    sources = sorted(library.glob("*.c"))
    if not (library / "mnist.h").is_file() or not sources:
        raise FirmwareError(f"{library}: not a C library folder (mnist.h and .c files)")
    return sources


def classify_on_host(library: Path, pictures: Pictures, build_dir: Path) -> Classified:
    """Compile ``library`` with the host's ``cc`` (as export validates it) and classify ``pictures``."""
    from mnist_edge.export.c.build import HostLibrary, build_shared

    _sources(library)
    build_dir.mkdir(parents=True, exist_ok=True)
    host = HostLibrary(build_shared(library, (build_dir / "libmnist.so").resolve()))
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
        "/* Generated by mnist_edge.tools.firmware: test digits and frames, with the labels the\n"
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
    out = _run([CROSS_SIZE, "-B", "-t", *map(str, objects)], "arm-none-eabi-size")
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
    source_dir: Path,
) -> Firmware:  # fmt: skip
    """Cross-compile ``library`` and the firmware in ``source_dir`` for ``board`` into ``build_dir``."""
    for name in (*FIRMWARE_SOURCES, LINKER_SCRIPT, "test_data.h"):
        if not (source_dir / name).is_file():
            raise FirmwareError(f"{source_dir}: no {name} (the firmware folder of the repository)")
    build_dir.mkdir(parents=True, exist_ok=True)
    flags = [*board.cpu_flags, *COMMON_FLAGS]
    objects = []
    for source in _sources(library):
        obj = build_dir / (source.stem + ".o")
        _run([CROSS_GCC, *flags, "-c", str(source), "-o", str(obj)], f"{CROSS_GCC} on {source}")
        objects.append(obj)
    text, data, bss = _object_sizes(objects)
    write_test_data(build_dir / "test_data.c", pictures, host)
    elf, map_file = build_dir / "firmware.elf", build_dir / "firmware.map"
    _run(
        [CROSS_GCC, *flags, f"-I{library}", f"-I{source_dir}",
         *(str(source_dir / s) for s in FIRMWARE_SOURCES), str(build_dir / "test_data.c"),
         *map(str, objects), "-T", str(source_dir / LINKER_SCRIPT), *LINK_FLAGS,
         f"-Wl,-Map={map_file}", "-lm", "-o", str(elf)],
        f"linking the firmware for {board.machine}",
    )  # fmt: skip
    libm = _libm_bytes(map_file.read_text())
    return Firmware(elf, board, LibrarySize(text, data, bss, libm))


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
    firmware = build_firmware(library, pictures, host, BOARDS[board], build_dir / board, source_dir)
    return Measurement(firmware.board, firmware.size, host, run_firmware(firmware, timeout))
