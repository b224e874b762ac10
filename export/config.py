"""What ``mnist-export`` writes: :class:`ExportConfig`, checked up front.

Import-light (no torch, no onnx), so the CLI takes its option defaults and
ranges from here before the heavy libraries load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_edge.runtime.errors import MnistEdgeError

if TYPE_CHECKING:
    from mnist_edge.export.spec import GraphSpec

DEFAULT_OPSET = 18
# Which CPU family the int8 file is tuned for (see mnist_edge.export.presets);
# "auto" picks one from the exporting host's CPU flags.
INT8_TARGETS = ("auto", "x86-vnni", "x86-avx2", "arm64", "portable")
# Opsets exported, checked and run in ONNX Runtime by the tests (see tests/test_export.py).
SUPPORTED_OPSETS = range(18, 24)


class ExportConfigError(MnistEdgeError, ValueError):
    """An export setting is out of range; the message names it and the allowed values."""


@dataclass(frozen=True)
class ExportConfig:
    """Everything that decides what ``mnist-export`` writes.

    Attributes:
        opset: ONNX opset (one of :data:`SUPPORTED_OPSETS`).
        tolerance: max |ONNX fp32 - PyTorch| over all probabilities.
        int8: also write the int8 file.
        int8_max_accuracy_drop: int8 may lose at most this accuracy vs PyTorch (0.002 = 0.2 points).
        int8_min_agreement: int8 argmax must equal PyTorch's on at least this fraction of images.
        calibration_images: first N training images used to calibrate int8.
        int8_target: the int8 preset, one of :data:`INT8_TARGETS` (``auto``: from
            the exporting host's CPU flags).
        fixed_batch: also write files with this static batch size.
        uint8_input: also write files taking uint8 pixels ``[batch, 28, 28]``.
        ort: also write ORT-format files and their ``required_operators`` config.
        allow_mismatch: write files that fail validation (their reports still list the failures).
        data_dir: where the dataset is (or is prepared).
        eval_limit: compare on the first N test images only (``None``: all 10,000).
        batch_size: ONNX Runtime evaluation batch size.
    """

    opset: int = DEFAULT_OPSET
    tolerance: float = 1e-5
    int8: bool = True
    int8_max_accuracy_drop: float = 0.002
    int8_min_agreement: float = 0.99
    calibration_images: int = 1000
    int8_target: str = "auto"
    fixed_batch: int | None = None
    uint8_input: bool = False
    ort: bool = False
    allow_mismatch: bool = False
    data_dir: Path = Path("data")
    eval_limit: int | None = None
    batch_size: int = 500

    def __post_init__(self) -> None:
        if self.opset not in SUPPORTED_OPSETS:
            raise ExportConfigError(
                f"opset {self.opset} is not supported; choose {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}"
            )
        if not self.tolerance > 0:
            raise ExportConfigError(f"tolerance {self.tolerance} must be > 0 (e.g. 1e-5)")
        if not 0 <= self.int8_max_accuracy_drop < 1:
            raise ExportConfigError(
                f"int8 max accuracy drop {self.int8_max_accuracy_drop} must be in [0, 1) (0.002 = 0.2 points)"
            )
        if not 0 <= self.int8_min_agreement <= 1:
            raise ExportConfigError(
                f"int8 min agreement {self.int8_min_agreement} must be in [0, 1]"
            )
        if self.int8_target not in INT8_TARGETS:
            raise ExportConfigError(
                f"int8 target {self.int8_target!r} is not one of {', '.join(INT8_TARGETS)}"
            )
        if self.calibration_images < 1:
            raise ExportConfigError(f"calibration images {self.calibration_images} must be >= 1")
        if self.fixed_batch is not None and self.fixed_batch < 1:
            raise ExportConfigError(f"fixed batch {self.fixed_batch} must be >= 1")
        if (
            self.int8
            and self.fixed_batch is not None
            and self.calibration_images < self.fixed_batch
        ):
            raise ExportConfigError(
                f"calibration images {self.calibration_images} are fewer than one fixed batch "
                f"({self.fixed_batch}); use --calibration-images {self.fixed_batch} or more"
            )
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ExportConfigError(f"eval limit {self.eval_limit} must be >= 1 (or unset for all)")
        if self.batch_size < 1:
            raise ExportConfigError(f"batch size {self.batch_size} must be >= 1")

    def specs(self) -> list[GraphSpec]:
        """The interfaces to export: the main one, plus the edge variant if asked for."""
        from mnist_edge.export.spec import GraphSpec  # onnx loads only when exporting

        specs = [GraphSpec()]
        if self.fixed_batch is not None or self.uint8_input:
            specs.append(GraphSpec(fixed_batch=self.fixed_batch, uint8_input=self.uint8_input))
        return specs
