"""The C frame preprocessing (export/c/mnist_frame.c) against the pixels-in graph.

``mnist_frame_to_digit`` is built with the host's ``cc`` into a shared library (with a
test-only ``mnist.h`` and ``mnist_classify`` from tests/helpers/c_frame/) and compared with
:func:`build_preprocessing_model` in ONNX Runtime; a harness built with AddressSanitizer and
UBSan feeds it hostile frames, each in a buffer of exactly its size.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from mnist_edge.export.pixels import build_preprocessing_model
from mnist_edge.export.pixels_check import EDGE_CASES, validation_pictures
from mnist_edge.runtime.idx import read_idx
from mnist_edge.runtime.metadata import Preprocessing

REPO = Path(__file__).resolve().parents[1]
C_DIR = REPO / "export" / "c"
HELPERS = REPO / "tests" / "helpers" / "c_frame"
SOURCE = C_DIR / "mnist_frame.c"
WARNINGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
INCLUDES = [f"-I{HELPERS}", f"-I{C_DIR}"]
CORTEX_M4 = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
ERROR_NULL, ERROR_SIZE = -1, -2
RECORD = 8 + 784 + 40  # the harness's answer per frame


def _cc() -> str:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("needs a C compiler: apt-get install gcc")
    return cc


def _sources(*helpers: str) -> list[str]:
    """mnist_frame.c and the named files of tests/helpers/c_frame/."""
    return [str(SOURCE), *(str(HELPERS / name) for name in helpers)]


def _compile(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed:\n{done.stderr}")


@pytest.fixture(scope="module")
def frame_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """mnist_frame.c + the stub classifier as a host shared library, compiled warning-free."""
    out = tmp_path_factory.mktemp("c_frame") / "libframe.so"
    _compile(
        [
            _cc(),
            *WARNINGS,
            "-O2",
            "-fPIC",
            "-shared",
            *INCLUDES,
            *_sources("stub_classify.c"),
            "-o",
            str(out),
            "-lm",
        ]
    )
    lib = ctypes.CDLL(str(out))
    for name in ("mnist_frame_to_digit", "mnist_classify_frame", "mnist_classify"):
        getattr(lib, name).restype = ctypes.c_int
    lib.mnist_frame_to_digit.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    lib.mnist_classify_frame.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    lib.mnist_classify.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _c_digit(lib: ctypes.CDLL, frame: np.ndarray) -> np.ndarray:
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    digit = np.full((28, 28), 0xAB, np.uint8)
    status = lib.mnist_frame_to_digit(frame.ctypes.data, *frame.shape, digit.ctypes.data)
    assert status == 0, f"mnist_frame_to_digit returned {status} on a {frame.shape} frame"
    return digit


@pytest.fixture(scope="module")
def graph() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = build_preprocessing_model(Preprocessing()).SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def test_digits() -> tuple[np.ndarray, np.ndarray]:
    """MNIST test digits uint8 (N, 28, 28) and labels; prepared into data/ when missing."""
    raw = REPO / "data" / "MNIST" / "raw"
    if not (raw / "t10k-images-idx3-ubyte").is_file():
        from mnist_edge.train.data import DataConfig, prepare_dataset

        raw = prepare_dataset(DataConfig(dataset="mnist", data_dir=REPO / "data"))
    return read_idx(raw / "t10k-images-idx3-ubyte"), read_idx(raw / "t10k-labels-idx1-ubyte")


def _photo_frames(digits: np.ndarray, n: int, seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """Digits scaled (aspect kept or not), pasted anywhere on grey, noisy, either polarity."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        digit = digits[int(rng.integers(len(digits)))]
        sh, sw = (int(v) for v in rng.integers(4, 200, 2))
        if i % 3 == 0:
            sw = sh
        ink = np.asarray(Image.fromarray(digit).resize((sw, sh), Image.Resampling.BICUBIC))
        h, w = sh + int(rng.integers(0, 150)), sw + int(rng.integers(0, 150))
        bg, fg = float(rng.integers(0, 120)), float(rng.integers(140, 256))
        canvas = np.full((h, w), bg, np.float32)
        y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
        canvas[y : y + sh, x : x + sw] = bg + ink.astype(np.float32) * (fg - bg) / 255.0
        if i % 2:
            canvas += rng.normal(0.0, rng.uniform(1.0, 25.0), canvas.shape)
        frame = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
        yield "photo-like", 255 - frame if rng.integers(2) else frame
    for _ in range(n // 4):  # pure noise of any small size, thin ones included
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        yield "noise", rng.integers(0, 256, (h, w)).astype(np.uint8)


def test_digit_equals_the_graph_on_varied_frames(frame_lib, graph, test_digits) -> None:
    """The C digit equals the graph's 28x28 output exactly, on every frame.

    Frames: export's validation pictures of 60 test digits (test-28/56/100x80/300 and their
    inversions, the ``make samples`` photo-like files, off-centre canvases), EDGE_CASES,
    400 digits scaled and pasted on grey noisy backgrounds in either polarity, and 100
    noise frames. The C follows ORT's float32 arithmetic in ORT's order (Resize weights,
    accumulation, rounding) and float64 where the graph uses it, so the data supports
    exact equality: 20,000 such fuzzed frames showed no differing pixel. A looser bound
    (PixelsTolerance's label agreement) would hide a port error that moves pixels.
    """
    digits, labels = test_digits
    pictures = validation_pictures(digits, labels, 60)
    frames = [*zip(pictures.variants, pictures.pixels, strict=True)]
    frames += [(name, picture) for name, (picture, _) in EDGE_CASES.items()]
    frames += list(_photo_frames(digits, 400, seed=22))
    differing = []
    for name, frame in frames:
        expected = graph.run(None, {"pixels": frame})[0]  # float32 (28, 28), whole numbers
        got = _c_digit(frame_lib, frame)
        if not np.array_equal(expected, got):
            diff = np.abs(expected - got.astype(np.float32))
            differing.append(f"{name} {frame.shape}: {int((diff > 0).sum())} px, max {diff.max()}")
    assert not differing, f"{len(differing)}/{len(frames)} frames differ: {differing[:5]}"


def test_classify_frame_classifies_that_digit(frame_lib, test_digits) -> None:
    """mnist_classify_frame = mnist_frame_to_digit, then mnist_classify on that digit."""
    digits, _ = test_digits
    frame = np.ascontiguousarray(
        np.pad(255 - digits[3], ((40, 7), (3, 90)), constant_values=255), dtype=np.uint8
    )
    digit = _c_digit(frame_lib, frame)
    want = np.zeros(10, np.float32)
    got = np.zeros(10, np.float32)
    label = frame_lib.mnist_classify(digit.ctypes.data, want.ctypes.data)
    status = frame_lib.mnist_classify_frame(frame.ctypes.data, *frame.shape, got.ctypes.data)
    assert status == label
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- hostile frames under ASan/UBSan


@pytest.fixture(scope="module")
def sanitized_harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("c_frame_asan") / "harness"
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-O1"]
    _compile(
        [
            _cc(),
            *WARNINGS,
            *flags,
            *INCLUDES,
            *_sources("stub_classify.c", "harness.c"),
            "-o",
            str(out),
            "-lm",
        ]
    )
    return out


def _checker(h: int, w: int) -> np.ndarray:
    return ((np.indices((h, w)).sum(axis=0) % 2) * 255).astype(np.uint8)


def _corner_dot() -> np.ndarray:
    frame = np.zeros((40, 30), np.uint8)
    frame[0, 0] = 255
    return frame


HOSTILE: dict[str, tuple[int, int, int, np.ndarray | None]] = {
    # name: (height, width, harness flags: 1 NULL pixels, 2 NULL outputs, 4 no pixels sent; frame)
    "1x1": (1, 1, 0, np.full((1, 1), 200, np.uint8)),
    "10000x3": (10000, 3, 0, np.random.default_rng(1).integers(0, 256, (10000, 3), np.uint8)),
    "3x10000": (3, 10000, 0, np.random.default_rng(2).integers(0, 256, (3, 10000), np.uint8)),
    "all black": (50, 40, 0, np.zeros((50, 40), np.uint8)),
    "all white": (50, 40, 0, np.full((50, 40), 255, np.uint8)),
    "all grey": (50, 40, 0, np.full((50, 40), 128, np.uint8)),
    "bright corner pixel": (40, 30, 0, _corner_dot()),
    "checkerboard": (37, 41, 0, _checker(37, 41)),
    "28x28 checkerboard": (28, 28, 0, _checker(28, 28)),
    "width 0": (5, 0, 0, None),
    "height 0": (0, 5, 0, None),
    "negative size": (-3, 4, 0, None),
    "product over INT_MAX": (65536, 65536, 4, None),
    "NULL pixels": (10, 10, 1, None),
    "NULL outputs": (10, 10, 2, np.zeros((10, 10), np.uint8)),
}


def test_hostile_frames_under_sanitizers(sanitized_harness, frame_lib) -> None:
    """Every hostile frame gives its documented status, and ASan/UBSan report nothing.

    Blank frames (black, white, one grey, and those whose only ink is undone by the
    stretch) give the all-zero digit with status 0; bad sizes give MNIST_ERROR_SIZE; NULL
    pointers MNIST_ERROR_NULL. The harness reads each frame into a malloc'd buffer of
    exactly height * width bytes, so any read outside the frame aborts the run.
    """
    stdin = bytearray()
    for h, w, flags, frame in HOSTILE.values():
        stdin += struct.pack("<iii", h, w, flags)
        if frame is not None and not flags & 5:
            stdin += frame.tobytes()
    done = subprocess.run(
        [str(sanitized_harness)], input=bytes(stdin), capture_output=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    assert not done.stderr, done.stderr.decode(errors="replace")[-3000:]
    assert len(done.stdout) == RECORD * len(HOSTILE)
    for i, (name, (_, _, flags, frame)) in enumerate(HOSTILE.items()):
        record = done.stdout[i * RECORD : (i + 1) * RECORD]
        to_digit, classify = struct.unpack("<ii", record[:8])
        digit = np.frombuffer(record[8 : 8 + 784], np.uint8).reshape(28, 28)
        if flags & 3:
            assert (to_digit, classify) == (ERROR_NULL, ERROR_NULL), name
        elif frame is None:
            assert (to_digit, classify) == (ERROR_SIZE, ERROR_SIZE), name
            assert (digit == 0xAB).all(), f"{name}: the digit was written on error"
        else:
            assert to_digit == 0 and 0 <= classify <= 9, (name, to_digit, classify)
            np.testing.assert_array_equal(digit, _c_digit(frame_lib, frame), err_msg=name)
    by_name = {name: i for i, name in enumerate(HOSTILE)}
    for blank in ("1x1", "all black", "all white", "all grey"):
        start = by_name[blank] * RECORD + 8
        assert not any(done.stdout[start : start + 784]), f"{blank} is not the blank digit"


def test_hostile_frames_equal_the_graph(frame_lib, graph) -> None:
    """The hostile frames the graph takes (positive sizes) give the graph's digit."""
    for name, (_, _, flags, frame) in HOSTILE.items():
        if frame is not None and not flags:
            expected = graph.run(None, {"pixels": frame})[0]
            np.testing.assert_array_equal(_c_digit(frame_lib, frame), expected, err_msg=name)


# ---------------------------------------------------------------- builds and stack


def _stated_stack_bound() -> int:
    text = (C_DIR / "frame_api.h").read_text()
    found = re.search(r"at most (\d+) bytes", text)
    assert found, "frame_api.h states no stack bound ('at most N bytes')"
    return int(found.group(1))


def _stack_total(su_file: Path) -> int:
    """The sum of every function's frame: a bound on the deepest call chain (no recursion).

    Every frame must be static (no variable-length arrays or alloca).
    """
    total = 0
    for line in su_file.read_text().splitlines():
        _, size, kind = line.rsplit("\t", 2)
        assert kind == "static", f"{line}: a frame of dynamic size"
        total += int(size)
    return total


def test_host_stack_within_the_stated_bound(tmp_path) -> None:
    obj = tmp_path / "mnist_frame.o"
    _compile(
        [_cc(), *WARNINGS, "-O2", "-fstack-usage", *INCLUDES, "-c", str(SOURCE), "-o", str(obj)]
    )
    assert _stack_total(tmp_path / "mnist_frame.su") <= _stated_stack_bound()


def test_cortex_m4_build_is_clean_unfused_and_within_the_stack_bound(tmp_path) -> None:
    """arm-none-eabi-gcc for the Cortex-M4F: no warnings, frames within the stated bound, and
    no fused multiply-add (it would round differently from ORT's float arithmetic)."""
    gcc = shutil.which("arm-none-eabi-gcc")
    objdump = shutil.which("arm-none-eabi-objdump")
    if gcc is None or objdump is None:
        pytest.skip(
            "needs arm-none-eabi-gcc: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi"
        )
    obj = tmp_path / "mnist_frame.o"
    _compile(
        [
            gcc,
            *CORTEX_M4,
            *WARNINGS,
            "-O2",
            "-fstack-usage",
            *INCLUDES,
            "-c",
            str(SOURCE),
            "-o",
            str(obj),
        ]
    )
    assert _stack_total(tmp_path / "mnist_frame.su") <= _stated_stack_bound()
    code = subprocess.run(
        [objdump, "-d", str(obj)], capture_output=True, text=True, check=True
    ).stdout
    fused = sorted(set(re.findall(r"\bvfn?m[as]\.f32\b", code)))
    assert not fused, f"fused multiply-add in the Cortex-M4 build: {fused}"
