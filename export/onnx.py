"""PyTorch -> ONNX: the graph and its metadata (the settings are in :mod:`.config`).

The pipeline that uses these (rebuild the net from a checkpoint, export,
validate, quantize, write only when every file passed) is
:func:`mnist_edge.export.pipeline.export_onnx`.

Exporter: ``torch.onnx.export(..., dynamo=True)``, torch's default and the
maintained path (the TorchScript exporter is deprecated). Its ``optimize``
pass leaves nine nodes: Conv, Relu, MaxPool, Conv, Relu, MaxPool, Reshape,
Gemm, Softmax (each block in the reference's Conv -> Relu -> MaxPool order,
although training pools first: see :meth:`ConvNet.forward`). Opset 18 by default: the lowest opset the dynamo exporter
emits natively (lower ones go through a version converter that fails on this
graph below 15), and the one the most runtimes load (ONNX Runtime >= 1.14;
TensorRT, OpenVINO and TFLite converters of recent years). Newer opsets change
nothing in this graph. The IR version is set to the lowest one the opset
needs, for the same reason.
"""

from __future__ import annotations

from collections import Counter

import onnx
import onnx.helper
import torch

from mnist_edge.export.config import DEFAULT_OPSET
from mnist_edge.export.spec import BATCH_AXIS, INPUT_NAME, OUTPUT_NAME, GraphSpec
from mnist_edge.runtime import __version__
from mnist_edge.runtime.layout import model_name
from mnist_edge.train.model import ConvNet, ProbabilityModel

MODEL_VERSION = 1  # ONNX model_version: bumped when the file's interface changes
PRODUCER = "mnist-edge"


def file_name(spec: GraphSpec, precision: str, suffix: str = ".onnx") -> str:
    """``mnist[.int8][.batchN][.uint8].onnx``: the layout's name for this interface."""
    return model_name(
        precision, fixed_batch=spec.fixed_batch, uint8_input=spec.uint8_input, suffix=suffix
    )


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
    # Conv -> Relu -> MaxPool: ORT fuses Conv+Relu and int8 gets one QLinearConv per block.
    module: torch.nn.Module = ProbabilityModel(net, relu_before_pool=True)
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
    if program is None:  # only with dynamo=False, which is not used here
        raise RuntimeError("torch.onnx.export returned no program")
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
