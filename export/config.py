"""What ``mnist-export`` writes: :class:`ExportConfig`, checked up front.

Import-light (no torch, no onnx), so the CLI takes its option defaults and
ranges from here before the heavy libraries load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.layout import DEFAULT_DATA_DIR

if TYPE_CHECKING:
    from mnist_edge.export.spec import GraphSpec

DEFAULT_OPSET = 18
# Which CPU family the int8 file is tuned for (see mnist_edge.export.presets);
# "auto" picks one from the exporting host's CPU flags.
INT8_TARGETS = ("auto", "x86-vnni", "x86-avx2", "arm64", "portable")
# Opsets exported, checked and run in ONNX Runtime by the tests (see tests/test_export.py).
SUPPORTED_OPSETS = range(18, 24)


class ExportConfigError(ConfigError):
    """An export setting is out of range; the message names it and the allowed values."""


@dataclass(frozen=True)
class ExportConfig:
    """Everything that decides what ``mnist-export`` writes.

    Attributes:
        opset: ONNX opset (one of :data:`SUPPORTED_OPSETS`).
        tolerance: max |ONNX fp32 - PyTorch| over all probabilities.
        int8: also write the int8 file.
        int8_max_drop: int8 may lose at most this accuracy vs PyTorch (0.002 = 0.2 points).
        int8_min_agreement: int8 argmax must equal PyTorch's on at least this fraction of images.
        calibration_images: first N training images used to calibrate int8.
        int8_target: the int8 preset, one of :data:`INT8_TARGETS` (``auto``: from
            the exporting host's CPU flags).
        fixed_batch: also write files with this static batch size.
        uint8_input: also write files taking uint8 pixels ``[batch, 28, 28]``.
        ort: also write ORT-format files and their ``required_operators`` config.
        allow_mismatch: write files that fail validation (their reports still list the failures).
        data_dir: where the dataset is (or is prepared).
        test_limit: compare on the first N test images only (``None``: all 10,000).
        batch_size: ONNX Runtime evaluation batch size.
        pixels: also write the pixels-in files (``mnist.pixels[.int8].onnx``) and ``mnist.meta.json``.
        pixels_images: test digits per validation variant of the pixels-in files (16 variants;
            ``test_limit`` caps it too).
        pixels_min_agreement: a pixels-in file's label must equal ``mnist-infer``'s Python
            path on at least this fraction of the validation pictures.
        pixels_max_accuracy_gap: its accuracy may differ from the Python path's by at most this
            (0.002 = 0.2 points).
    """

    opset: int = DEFAULT_OPSET
    tolerance: float = 1e-5
    int8: bool = True
    int8_max_drop: float = 0.002
    int8_min_agreement: float = 0.99
    calibration_images: int = 1000
    int8_target: str = "auto"
    fixed_batch: int | None = None
    uint8_input: bool = False
    ort: bool = False
    allow_mismatch: bool = False
    data_dir: Path = DEFAULT_DATA_DIR
    test_limit: int | None = None
    batch_size: int = 500
    pixels: bool = True
    pixels_images: int = 300
    pixels_min_agreement: float = 0.995
    pixels_max_accuracy_gap: float = 0.002

    def __post_init__(self) -> None:
        if self.opset not in SUPPORTED_OPSETS:
            raise ExportConfigError(
                f"opset {self.opset} is not supported; choose {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}",
                "opset",
            )
        if not self.tolerance > 0:
            raise ExportConfigError(
                f"tolerance {self.tolerance} must be > 0 (e.g. 1e-5)", "tolerance"
            )
        if not 0 <= self.int8_max_drop < 1:
            raise ExportConfigError(
                f"int8 max drop {self.int8_max_drop} must be in [0, 1) (0.002 = 0.2 points)",
                "int8_max_drop",
            )
        if not 0 <= self.int8_min_agreement <= 1:
            raise ExportConfigError(
                f"int8 min agreement {self.int8_min_agreement} must be in [0, 1]",
                "int8_min_agreement",
            )
        if self.int8_target not in INT8_TARGETS:
            raise ExportConfigError(
                f"int8 target {self.int8_target!r} is not one of {', '.join(INT8_TARGETS)}",
                "int8_target",
            )
        if self.calibration_images < 1:
            raise ExportConfigError(
                f"calibration images {self.calibration_images} must be >= 1", "calibration_images"
            )
        if self.fixed_batch is not None and self.fixed_batch < 1:
            raise ExportConfigError(f"fixed batch {self.fixed_batch} must be >= 1", "fixed_batch")
        if (
            self.int8
            and self.fixed_batch is not None
            and self.calibration_images < self.fixed_batch
        ):
            raise ExportConfigError(
                f"calibration images {self.calibration_images} are fewer than one fixed batch "
                f"({self.fixed_batch}); use {self.fixed_batch} or more",
                "calibration_images",
            )
        if self.test_limit is not None and self.test_limit < 1:
            raise ExportConfigError(
                f"test limit {self.test_limit} must be >= 1 (or unset for all)", "test_limit"
            )
        if self.batch_size < 1:
            raise ExportConfigError(f"batch size {self.batch_size} must be >= 1", "batch_size")
        if self.pixels_images < 1:
            raise ExportConfigError(
                f"pixels images {self.pixels_images} must be >= 1", "pixels_images"
            )
        if not 0 <= self.pixels_min_agreement <= 1:
            raise ExportConfigError(
                f"pixels min agreement {self.pixels_min_agreement} must be in [0, 1]",
                "pixels_min_agreement",
            )
        if not 0 <= self.pixels_max_accuracy_gap < 1:
            raise ExportConfigError(
                f"pixels max accuracy gap {self.pixels_max_accuracy_gap} must be in [0, 1) (0.002 = 0.2 points)",
                "pixels_max_accuracy_gap",
            )

    def specs(self) -> list[GraphSpec]:
        """The interfaces to export: the main one, plus the edge variant if asked for."""
        from mnist_edge.export.spec import GraphSpec  # onnx loads only when exporting

        specs = [GraphSpec()]
        if self.fixed_batch is not None or self.uint8_input:
            specs.append(GraphSpec(fixed_batch=self.fixed_batch, uint8_input=self.uint8_input))
        return specs
