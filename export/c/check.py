"""``mnist-export --c``: emit both C libraries, prove them against ONNX Runtime, then write them.

Each library is emitted into a temporary folder, compiled with the host's ``cc``
and run through ctypes:

- ``mnist_classify`` on the MNIST test digits against the core file in ONNX Runtime
  (fp32: labels equal and max |dp| within ``fp32_tolerance``; int8: label agreement
  at least ``int8_min_agreement``);
- ``mnist_classify_frame`` on the pixels-in validation pictures against the
  pixels-in file of the same precision, within export's :class:`PixelsTolerance`.

Only when every check of both passes is ``<out>/fp32`` and ``<out>/int8`` each
replaced (a sibling folder written, then renamed into place); otherwise
:class:`CExportError` lists every failure and nothing is written.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mnist_edge.export.c.build import HostLibrary, build_shared, host_cc
from mnist_edge.export.c.library import CLibrary, emit_library
from mnist_edge.export.pixels_check import (  # fmt: skip
    PixelsTolerance,
    open_picture_session,
    run_core,
    validation_pictures,
)
from mnist_edge.runtime.atomic import atomic_write_text
from mnist_edge.runtime.errors import MnistEdgeError
from mnist_edge.runtime.idx import read_idx
from mnist_edge.runtime.metadata import ModelMetadata

Log = Callable[[str], None]
FILES = {"fp32": ("mnist.onnx", "mnist.pixels.onnx"), "int8": ("mnist.int8.onnx", "mnist.pixels.int8.onnx")}  # fmt: skip


class CExportError(MnistEdgeError):
    """A C library disagrees with ONNX Runtime (or an input is missing); nothing was written."""

    def __init__(self, summary: str, failures: list[str]) -> None:
        super().__init__(summary)
        self.summary = summary
        self.failures = failures


@dataclass(frozen=True)
class CConfig:
    """What ``export_c`` compares, and how closely.

    Attributes:
        digits: uint8 (N, 28, 28) test digits and (N,) labels are read from
            ``data_dir``'s MNIST test set, the first ``digit_limit`` (None: all).
        pictures_per_variant: test digits per pixels-in validation variant.
        fp32_tolerance: max |C - ONNX Runtime| over the fp32 probabilities.
        int8_min_agreement: smallest fraction of int8 labels equal to ONNX Runtime's.
        pixels: the bounds for ``mnist_classify_frame`` against the pixels-in file.
        precisions: which libraries to write.
    """

    data_dir: Path = Path("data")
    digit_limit: int | None = None
    pictures_per_variant: int = 300
    fp32_tolerance: float = 1e-4
    int8_min_agreement: float = 0.999
    pixels: PixelsTolerance = field(default_factory=PixelsTolerance)
    precisions: tuple[str, ...] = ("fp32", "int8")


@dataclass
class CCheck:
    """One library's validation figures."""

    precision: str
    digits: int = 0
    agreement: float = 0.0
    max_abs_diff: float = 0.0
    pictures: int = 0
    frame_agreement: float = 0.0
    frame_accuracy_gap: float = 0.0
    seconds_per_digit: float = 0.0
    failures: list[str] = field(default_factory=list)


def load_test_digits(data_dir: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test digits (uint8 (N, 28, 28)) and labels, prepared into ``data_dir`` if needed."""
    from mnist_edge.train.data import DataConfig, prepare_dataset

    raw = prepare_dataset(DataConfig(dataset="mnist", data_dir=data_dir))
    digits = read_idx(raw / "t10k-images-idx3-ubyte")[:limit]
    labels = read_idx(raw / "t10k-labels-idx1-ubyte")[:limit].astype(np.int64)
    return digits, labels


def check_library(
    lib: HostLibrary,
    core: Path,
    pixels: Path,
    digits: np.ndarray,
    labels: np.ndarray,
    precision: str,
    config: CConfig,
) -> CCheck:
    """Every check of one compiled library; ``failures`` is empty when all passed."""
    result = CCheck(precision, digits=len(digits))
    start = time.perf_counter()
    got, probs = lib.classify(digits)
    result.seconds_per_digit = (time.perf_counter() - start) / max(1, len(digits))
    pre = ModelMetadata.from_props(_props(core)).preprocessing
    ref = run_core(core.read_bytes(), digits, pre)
    result.agreement = float(np.mean(got == ref.argmax(1)))
    result.max_abs_diff = float(np.abs(probs - ref).max())
    if precision == "fp32":
        if result.agreement < 1.0:
            result.failures.append(f"fp32 labels differ from ONNX Runtime on {np.sum(got != ref.argmax(1))} of {len(got)} digits")  # fmt: skip
        if not result.max_abs_diff <= config.fp32_tolerance:
            result.failures.append(f"fp32 max |dp| {result.max_abs_diff:.2e} > {config.fp32_tolerance:.0e}")  # fmt: skip
    elif not result.agreement >= config.int8_min_agreement:
        result.failures.append(f"int8 labels agree with ONNX Runtime on {result.agreement:.2%} of digits (required: {config.int8_min_agreement:.2%})")  # fmt: skip
    if not np.isfinite(probs).all():
        result.failures.append("probabilities contain NaN or infinity")

    pictures = validation_pictures(digits, labels, config.pictures_per_variant)
    session = open_picture_session(pixels)
    onnx_labels = np.array([int(session.run(None, {"pixels": p})[1]) for p in pictures.pixels])
    c_labels = np.array([lib.classify_frame(p)[0] for p in pictures.pixels])
    result.pictures = len(pictures)
    result.frame_agreement = float(np.mean(c_labels == onnx_labels))
    result.frame_accuracy_gap = abs(float(np.mean(c_labels == pictures.labels)) - float(np.mean(onnx_labels == pictures.labels)))  # fmt: skip
    if not result.frame_agreement >= config.pixels.min_agreement:
        result.failures.append(f"{precision} mnist_classify_frame agrees with {pixels.name} on {result.frame_agreement:.2%} of pictures (required: {config.pixels.min_agreement:.2%})")  # fmt: skip
    if not result.frame_accuracy_gap <= config.pixels.max_accuracy_gap + 1e-12:
        result.failures.append(f"{precision} mnist_classify_frame accuracy differs from {pixels.name}'s by {result.frame_accuracy_gap * 100:.2f} points (allowed: {config.pixels.max_accuracy_gap * 100:.2f})")  # fmt: skip
    return result


def _props(model: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}


def _replace_dir(staged: Path, target: Path) -> None:
    """Put ``staged`` at ``target``: a rename, the old folder moved aside first and then removed."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def export_c(
    models: Path,
    out_dir: Path,
    config: CConfig,
    log: Log = lambda _: None,
    *,
    frames: Path | None = None,
) -> list[tuple[CLibrary, CCheck]]:
    """Emit, compile, validate and write ``out_dir/<precision>/`` for each precision.

    Args:
        models: the folder with the exported ``.onnx`` files (``artifacts/``).
        out_dir: where the C folders go (``artifacts/c``).
        config: the comparisons.
        log: progress lines.
        frames: the frame preprocessing sources (default: the package's).

    Returns:
        Each written library (its folder now under ``out_dir``) with its checks.

    Raises:
        BuildError: no ``cc``, or the C does not compile.
        CExportError: a file is missing or a check failed; nothing was written.
    """
    host_cc()
    missing = [n for p in config.precisions for n in FILES[p] if not (models / n).is_file()]
    if missing:
        raise CExportError(f"{', '.join(missing)} not in {models}: export the ONNX files first", [])
    digits, labels = load_test_digits(config.data_dir, config.digit_limit)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)  # the staging folder must share its file system
    try:
        written = _stage_and_write(models, out_dir, config, digits, labels, log, frames)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only when empty: nothing is left behind by a refusal
        raise
    atomic_write_text(out_dir / "c.json", json.dumps([{**lib.to_dict(), "checks": asdict(c)} for lib, c in written], indent=2) + "\n")  # fmt: skip
    return written


def _stage_and_write(
    models: Path,
    out_dir: Path,
    config: CConfig,
    digits: np.ndarray,
    labels: np.ndarray,
    log: Log,
    frames: Path | None,
) -> list[tuple[CLibrary, CCheck]]:
    """Emit and check every precision in a temporary folder, then move each into place."""
    staged: list[tuple[CLibrary, CCheck, Path]] = []
    with tempfile.TemporaryDirectory(prefix=".c-", dir=out_dir) as tmp:
        for precision in config.precisions:
            core, pixels = (models / n for n in FILES[precision])
            folder = Path(tmp) / precision
            lib = emit_library(core, folder, frames=frames)
            log(f"C {precision}: emitted {folder.name}/ from {core.name}; compiling with cc")
            host = HostLibrary(build_shared(folder, Path(tmp) / f"libmnist-{precision}.so"))
            check = check_library(host, core, pixels, digits, labels, precision, config)
            log(f"C {precision}: {check.digits} digits agree {check.agreement:.2%} (max |dp| {check.max_abs_diff:.1e}), {check.pictures} frames agree {check.frame_agreement:.2%}")  # fmt: skip
            staged.append((lib, check, folder))
        failures = [f for _, c, _ in staged for f in c.failures]
        if failures:
            raise CExportError(f"{len(failures)} C library checks failed; nothing written to {out_dir}", failures)  # fmt: skip
        written = []
        for lib, check, folder in staged:
            target = out_dir / lib.precision
            sibling = out_dir / f".{lib.precision}.new"
            shutil.rmtree(sibling, ignore_errors=True)
            shutil.copytree(folder, sibling)
            _replace_dir(sibling, target)
            files = [target / f.name for f in lib.files]
            written.append((CLibrary(target, lib.precision, lib.model, lib.model_sha256, lib.weight_bytes, lib.buffer_bytes, lib.target, files), check))  # fmt: skip
    return written
