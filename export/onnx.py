"""PyTorch -> ONNX: the export config, the graph, and its metadata.

The pipeline that uses these (rebuild the net from a checkpoint, export,
validate, quantize, write only when every file passed) is
:func:`mnist_edge.export.pipeline.export_onnx`.

Exporter: ``torch.onnx.export(..., dynamo=True)``, torch's default and the
maintained path (the TorchScript exporter is deprecated). Its ``optimize``
pass leaves nine nodes: Conv, Relu, MaxPool, Conv, Relu, MaxPool, Reshape,
Gemm, Softmax. Opset 18 by default: the lowest opset the dynamo exporter
emits natively (lower ones go through a version converter that fails on this
graph below 15), and the one the most runtimes load (ONNX Runtime >= 1.14;
TensorRT, OpenVINO and TFLite converters of recent years). Newer opsets change
nothing in this graph. The IR version is set to the lowest one the opset
needs, for the same reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.helper
import torch

from mnist_edge.export.spec import BATCH_AXIS, INPUT_NAME, OUTPUT_NAME, GraphSpec
from mnist_edge.runtime import __version__
from mnist_edge.train.model import ConvNet, ProbabilityModel

DEFAULT_OPSET = 18
# Opsets exported, checked and run in ONNX Runtime by the tests (see tests/test_export.py).
SUPPORTED_OPSETS = range(18, 24)
MODEL_VERSION = 1  # ONNX model_version: bumped when the file's interface changes
PRODUCER = "mnist-edge"


class ExportConfigError(ValueError):
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
        specs = [GraphSpec()]
        if self.fixed_batch is not None or self.uint8_input:
            specs.append(GraphSpec(fixed_batch=self.fixed_batch, uint8_input=self.uint8_input))
        return specs


def file_name(spec: GraphSpec, precision: str, suffix: str = ".onnx") -> str:
    """``mnist[.int8][.batchN][.uint8].onnx``."""
    parts = ["mnist"]
    if precision == "int8":
        parts.append("int8")
    if spec.fixed_batch is not None:
        parts.append(f"batch{spec.fixed_batch}")
    if spec.uint8_input:
        parts.append("uint8")
    return ".".join(parts) + suffix


class Uint8Input(torch.nn.Module):
    """Takes raw uint8 pixels (N, 28, 28), scales them by 1/255 and adds the channel axis."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32).div(255.0).unsqueeze(1)  # (N, 1, 28, 28) in [0, 1]
        return self.model(x)


def torch_to_onnx(net: ConvNet, spec: GraphSpec, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export a :class:`~mnist_edge.train.model.ConvNet` (eval mode) to an ONNX graph.

    The graph maps ``image`` to the softmax ``probabilities``; the batch axis is
    named ``batch`` unless ``spec.fixed_batch`` fixes it. Node-level debug
    metadata (stack traces with local paths) is dropped and the IR version
    lowered to the minimum for ``opset``.
    """
    net.eval()
    module: torch.nn.Module = ProbabilityModel(net)
    batch = spec.fixed_batch or 2  # a dynamic axis needs an example size other than 0/1
    side = spec.image_size
    if spec.uint8_input:
        module = Uint8Input(module)
        example = torch.zeros(batch, side, side, dtype=torch.uint8)
    else:
        example = torch.zeros(batch, 1, side, side)
    dynamic = None if spec.fixed_batch else {INPUT_NAME: {0: torch.export.Dim(BATCH_AXIS, min=1)}}
    program = torch.onnx.export(
        module.eval(),
        (example,),
        None,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        external_data=False,
        dynamic_shapes=dynamic,
        optimize=True,
        verbose=False,
    )
    model = program.model_proto
    strip_debug_metadata(model)
    return model


def strip_debug_metadata(model: onnx.ModelProto) -> None:
    """Drop node/value metadata (exporter stack traces) and set the lowest IR version the opsets allow."""
    graph = model.graph
    for item in (*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if hasattr(item, "metadata_props"):
            del item.metadata_props[:]
    del model.metadata_props[:]
    model.ir_version = min_ir_version(model)


def min_ir_version(model: onnx.ModelProto) -> int:
    """The lowest IR version that the model's standard ONNX opset allows (older runtimes load it)."""
    standard = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(onnx.helper.find_min_ir_version_for(standard), 8)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each type the graph has (sorted by type)."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def set_metadata(
    model: onnx.ModelProto, props: dict[str, str], doc: str, model_version: int
) -> None:
    """Replace ``metadata_props`` with ``props``; set producer, doc string and version; drop unused opset imports."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    model.producer_name = PRODUCER
    model.producer_version = __version__
    model.doc_string = doc
    model.model_version = model_version
    model.graph.name = "mnist_convnet"
    used = {n.domain or "" for n in model.graph.node} | {""}
    kept = [
        o for o in model.opset_import if (o.domain or "") in used
    ]  # the quantizer adds unused ones
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.ir_version = min_ir_version(model)
