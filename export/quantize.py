"""Static int8 quantization with ``onnxruntime.quantization`` (QDQ format).

The settings, and why (ONNX Runtime's quantization guide; the measured effect of
each choice is in docs/export.md):

* **QDQ format**: QuantizeLinear/DequantizeLinear pairs around float ops. ONNX
  Runtime's CPU provider fuses them into integer kernels (QLinearConv, ...),
  and the same file is what the NNAPI, QNN, CoreML, XNNPACK and TensorRT
  providers and most NPU compilers expect.
* **Activations uint8 (asymmetric), weights int8 (symmetric, per channel)**:
  whether the weights are 7-bit ("reduce range") is the preset's choice
  (:mod:`mnist_edge.export.presets`): on x86 CPUs without VNNI the u8 x s8
  kernel (``vpmaddubsw``) adds pairs of products in int16 and can saturate,
  and ONNX Runtime's guide prescribes ``reduce_range`` there; VNNI and ARM
  accumulate in int32 and keep all 8 bits. Per-channel scales keep each conv
  filter's and each dense row's own range; s8s8 gains no accuracy and u8u8
  is slower.
* **Conv, Relu, MaxPool, Reshape and Gemm are quantized, but the Gemm output
  (the logits) stays float**: with the exported Conv -> Relu -> MaxPool order
  the quantizer folds each Relu into the uint8 range of its Conv, so ONNX
  Runtime runs QLinearConv -> NhwcMaxPool per block (with MaxPool -> Relu the
  Relus stay float between Q/DQ pairs, which is slow), the dense layer
  becomes a QGemm with float output, and Softmax runs in float32, so the
  probabilities are not rounded to 1/255 steps (closer to PyTorch).
* **quant_pre_process first**: ORT's recommended step; it changes nothing in
  the exporter's already-optimized graph but is what ``quantize_static``
  expects.
* **MinMax calibration over the first N training images** (default 1000):
  enough to fix the activation ranges of this small net; the calibration
  images are never test images.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from mnist_edge.export.spec import INPUT_NAME, GraphSpec
from mnist_edge.runtime.errors import ConfigError


@dataclass(frozen=True)
class QuantizeConfig:
    """How the int8 file is made.

    Attributes:
        calibration_images: how many training images calibrate activation ranges.
        batch_size: calibration batch size (a fixed-batch graph uses its own).
        per_channel: one scale per output channel of each weight.
        reduce_range: 7-bit weights (no int16 saturation on x86 CPUs without VNNI).
        op_types: the float ops replaced by int8 ones.
        float_outputs: op types whose output stays float (the logits, so Softmax sees float).
        activations: ``"uint8"`` (asymmetric: a Relu folds into the range) or
            ``"int8"`` (symmetric, the S8S8 format).
        quant_format: ``"QDQ"`` (Q/DQ pairs, fused by each runtime) or
            ``"QOperator"`` (QLinearConv/QGemm written into the file).
    """

    calibration_images: int = 1000
    batch_size: int = 100
    per_channel: bool = True
    reduce_range: bool = True
    op_types: tuple[str, ...] = ("Conv", "Relu", "MaxPool", "Reshape", "Gemm")
    float_outputs: tuple[str, ...] = ("Gemm",)
    activations: str = "uint8"
    quant_format: str = "QDQ"

    def __post_init__(self) -> None:
        if self.activations not in ("uint8", "int8"):
            raise ConfigError(
                f"activations {self.activations!r} must be 'uint8' or 'int8'", "activations"
            )
        if self.quant_format not in ("QDQ", "QOperator"):
            raise ConfigError(
                f"quant_format {self.quant_format!r} must be 'QDQ' or 'QOperator'", "quant_format"
            )


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds calibration images to the quantizer one batch at a time.

    Args:
        images: float images (N, 1, 28, 28) in [0, 1]; only one batch is
            converted to the graph's input format at a time.
        spec: the graph's interface (input dtype and fixed batch).
        batch_size: rows per batch (at most the number of images), unless
            ``spec.fixed_batch`` is set; a last partial batch is dropped.
    """

    def __init__(self, images: np.ndarray, spec: GraphSpec, batch_size: int = 100) -> None:
        self._images = images
        self._spec = spec
        self.batch_size = spec.fixed_batch or max(1, min(batch_size, len(images)))
        self._iter = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        size = self.batch_size
        for start in range(0, len(self._images) - size + 1, size):  # whole batches only
            yield {INPUT_NAME: self._spec.feed(self._images[start : start + size])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._batches()


def quantize_int8(
    model: onnx.ModelProto,
    calibration_images: np.ndarray,
    spec: GraphSpec,
    config: QuantizeConfig | None = None,
) -> onnx.ModelProto:
    """Statically quantize a float ONNX model to int8 (QDQ).

    Args:
        model: the validated float32 model.
        calibration_images: float images (N, 1, 28, 28) in [0, 1]; at least one batch.
        spec: the model's interface (input format and fixed batch).
        config: quantization settings.

    Returns:
        The quantized model (weights inside; metadata is the caller's job).

    Raises:
        ValueError: fewer calibration images than one batch.
    """
    config = config or QuantizeConfig()
    reader = ImageCalibrationReader(calibration_images, spec, config.batch_size)
    if len(calibration_images) < reader.batch_size:
        raise ValueError(
            f"{len(calibration_images)} calibration images are fewer than one batch "
            f"({reader.batch_size}); use at least {reader.batch_size} calibration images"
        )
    with tempfile.TemporaryDirectory(prefix="mnist-edge-quant-") as tmp:
        src, pre, out = (Path(tmp) / f"model.{n}.onnx" for n in ("fp32", "pre", "int8"))
        onnx.save_model(model, src)  # quantize_static would rewrite a ModelProto argument in place
        # ORT's recommended first step (shape inference + optimization); it changes
        # nothing in this already-optimized graph, but the quantizer expects it.
        quant_pre_process(src, pre)
        quantize_static(
            pre,
            out,
            reader,
            quant_format=QuantFormat.QDQ if config.quant_format == "QDQ" else QuantFormat.QOperator,
            op_types_to_quantize=list(config.op_types),
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=QuantType.QUInt8 if config.activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "WeightSymmetric": True,
                "ActivationSymmetric": config.activations == "int8",
                "OpTypesToExcludeOutputQuantization": list(config.float_outputs),
            },
        )
        return onnx.load(out)
