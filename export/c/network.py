"""Read an exported ONNX file into the layers the C emitter knows.

The family is the reference convnet: ``(Conv, [Relu], MaxPool)+``, ``Reshape`` or
``Flatten``, ``Gemm``, ``Softmax``; in a QDQ int8 file each of them sits between
``DequantizeLinear``/``QuantizeLinear`` pairs. Everything (weights, shapes, scales,
zero points, the input scaling) is read from the file; a graph outside the family
raises :class:`NetworkError` naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from mnist_edge.runtime.errors import MnistEdgeError
from mnist_edge.runtime.metadata import Preprocessing


class NetworkError(MnistEdgeError, ValueError):
    """The ONNX graph is not one the C emitter can translate."""


@dataclass(frozen=True)
class Quant:
    """Per-tensor quantization of an activation: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    dtype: type  # np.uint8 or np.int8


@dataclass(frozen=True)
class ConvPool:
    """Conv (stride 1, no padding) + Relu + MaxPool (square window, stride = window).

    ``weights`` is (out_c, k, k, in_c): the C kernels read activations channels-last.
    For int8, ``weights`` is int8, ``bias`` int32 (zero point of the input folded in)
    and ``scales`` the per-channel float multipliers of ONNX Runtime's QLinearConv.
    """

    in_h: int
    in_w: int
    in_c: int
    out_c: int
    kernel: int
    pool: int
    weights: np.ndarray
    bias: np.ndarray
    scales: np.ndarray | None = None
    out_quant: Quant | None = None

    @property
    def out_h(self) -> int:
        return (self.in_h - self.kernel + 1) // self.pool

    @property
    def out_w(self) -> int:
        return (self.in_w - self.kernel + 1) // self.pool


@dataclass(frozen=True)
class Dense:
    """Gemm ``y = x W^T + b`` with W as (out, in), its columns in channels-last order."""

    inputs: int
    outputs: int
    weights: np.ndarray
    bias: np.ndarray
    scales: np.ndarray | None = None  # int8: input scale x per-row weight scale


@dataclass(frozen=True)
class Network:
    """The whole model, ready to emit."""

    precision: str  # "fp32" or "int8"
    height: int
    width: int
    divisor: float  # uint8 pixel / divisor = the float input (read from the metadata)
    input_quant: Quant | None
    convs: tuple[ConvPool, ...]
    dense: Dense
    classes: int

    @property
    def weight_bytes(self) -> int:
        arrays = [a for c in self.convs for a in (c.weights, c.bias, c.scales)]
        arrays += [self.dense.weights, self.dense.bias, self.dense.scales]
        return sum(a.nbytes for a in arrays if a is not None)


def fold_zero_point(weights: np.ndarray, bias: np.ndarray, zero_point: int) -> np.ndarray:
    """The int32 bias with the input zero point folded in, one per output (``weights``' first axis).

    sum (x - zx) w + b = sum x w + (b - zx sum w): the kernels then sum raw uint8 x int8.
    """
    sums = weights.reshape(len(weights), -1).astype(np.int64).sum(1)
    return (bias.astype(np.int64) - zero_point * sums).astype(np.int32)


def multipliers(in_scale: float, w_scale: np.ndarray, out_scale: float | None = None) -> np.ndarray:
    """The float32 factor per output channel that turns an int32 sum into the output.

    As ONNX Runtime computes it: ``in_scale * w_scale / out_scale`` in float32 for a
    quantized output (QLinearConv), ``in_scale * w_scale`` for a float one (QGemm).
    """
    scales = np.float32(in_scale) * w_scale.astype(np.float32)
    if out_scale is not None:
        scales = scales / np.float32(out_scale)
    return scales.astype(np.float32)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """Initializers, producers and the Q/DQ resolution of one graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.compute = [
            n for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        ]

    def quant(self, node: onnx.NodeProto) -> Quant:
        scale = self.init[node.input[1]]
        zero = self.init[node.input[2]]
        if scale.size != 1:
            raise NetworkError(f"{node.name or node.output[0]}: per-channel activation scale")
        return Quant(float(scale.reshape(())), int(zero.reshape(())), zero.dtype.type)

    def resolve(self, name: str) -> tuple[str, Quant | None]:
        """A compute node's input -> (the float tensor it stands for, its quantization)."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return name, None
        q = self.producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            raise NetworkError(
                f"{dq.name or name}: DequantizeLinear of a non-constant, non-Q input"
            )
        return q.input[0], self.quant(q)

    def constant(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """A weight or bias -> (stored array, per-channel scales or None when float)."""
        dq = self.producer.get(name)
        if dq is None:
            return self.init[name], None
        data, scale = self.init[dq.input[0]], self.init[dq.input[1]]
        zero = self.init[dq.input[2]] if len(dq.input) > 2 else np.zeros(1, data.dtype)
        if np.any(zero != 0):
            raise NetworkError(f"{name}: weights with non-zero zero points (not symmetric int8)")
        return data, scale.astype(np.float32).reshape(-1)

    def consumer_q(self, name: str) -> Quant | None:
        """The quantization applied to a float activation by the Q node reading it."""
        for n in self.producer.values():
            if n.op_type == "QuantizeLinear" and n.input[0] == name:
                return self.quant(n)
        return None


def _divisor(model: onnx.ModelProto) -> float:
    props = {p.key: p.value for p in model.metadata_props}
    pre = Preprocessing.from_json(props["preprocessing"]) if "preprocessing" in props else None
    if pre is None:
        raise NetworkError("no 'preprocessing' metadata: the input scaling is unknown")
    return float(round(1.0 / pre.scale))  # as Classifier and export's checks scale pixels


def read_network(path: Path) -> Network:
    """Parse ``path`` (an fp32 or QDQ int8 file of the reference family).

    Raises:
        NetworkError: a node, shape or quantization the emitter does not handle.
    """
    model = onnx.load(str(path))
    g = _Graph(model)
    image = model.graph.input[0]
    dims = [d.dim_value for d in image.type.tensor_type.shape.dim][1:]
    if len(dims) != 3 or dims[0] != 1 or not all(dims):
        raise NetworkError(f"input {image.name!r} is {dims}, expected (batch, 1, H, W)")
    _, height, width = dims
    current, h, w, c = image.name, height, width, 1
    input_quant: Quant | None = None
    convs: list[ConvPool] = []
    nodes = iter(g.compute)
    for node in nodes:
        source, quant = g.resolve(node.input[0])
        if source != current:
            raise NetworkError(f"{node.op_type} {node.name!r} does not follow the previous layer")
        if node.op_type == "Conv":
            if not convs:
                input_quant = quant
            conv, current = _conv_pool(g, node, nodes, (h, w, c), quant)
            convs.append(conv)
            h, w, c = conv.out_h, conv.out_w, conv.out_c
        elif node.op_type in ("Reshape", "Flatten"):
            current = node.output[0]
        elif node.op_type == "Gemm":
            dense = _dense(g, node, (h, w, c), quant)
            soft = next(nodes, None)
            if soft is None or soft.op_type != "Softmax" or soft.input[0] != node.output[0]:
                raise NetworkError("Gemm must be followed by Softmax (the probabilities)")
            precision = "int8" if dense.scales is not None else "fp32"
            if precision == "int8" and input_quant is None:
                raise NetworkError("int8 graph without a quantized input")
            return Network(
                precision, height, width, _divisor(model), input_quant, tuple(convs), dense,
                dense.outputs,
            )  # fmt: skip
        else:
            raise NetworkError(f"operator {node.op_type} ({node.name!r}) is not supported")
    raise NetworkError("no Gemm + Softmax at the end of the graph")


def _conv_pool(g: _Graph, conv, nodes, shape: tuple[int, int, int], in_quant: Quant | None):
    h, w, c = shape
    a = _attrs(conv)
    k = list(a.get("kernel_shape", [0, 0]))
    if any(a.get("pads", [0]) ) or set(a.get("strides", [1])) != {1} or a.get("group", 1) != 1 or set(a.get("dilations", [1])) != {1} or k[0] != k[1]:  # fmt: skip
        raise NetworkError(f"Conv {conv.name!r}: only square, stride-1, unpadded convolutions")
    weights, w_scale = g.constant(conv.input[1])
    bias, _ = g.constant(conv.input[2])
    if weights.shape[1] != c:
        raise NetworkError(f"Conv {conv.name!r}: weights {weights.shape} for {c} input channels")
    out = conv.output[0]
    nxt = next(nodes, None)
    relu = nxt is not None and nxt.op_type == "Relu"
    if relu and nxt is not None:
        out, nxt = nxt.output[0], next(nodes, None)
    if nxt is None or nxt.op_type != "MaxPool":
        raise NetworkError(f"Conv {conv.name!r} must be followed by [Relu] and MaxPool")
    pa = _attrs(nxt)
    pool = list(pa.get("kernel_shape", [0]))
    if len(set(pool)) != 1 or list(pa.get("strides", [])) != pool or any(pa.get("pads", [0])) or pa.get("ceil_mode", 0):  # fmt: skip
        raise NetworkError(f"MaxPool {nxt.name!r}: only square, unpadded, stride = window pools")
    source, pool_quant = g.resolve(nxt.input[0])
    if source != out:
        raise NetworkError(f"MaxPool {nxt.name!r} does not read Conv {conv.name!r}")
    ohwi = np.ascontiguousarray(weights.transpose(0, 2, 3, 1))  # (out_c, k, k, in_c)
    if w_scale is None:
        if not relu or in_quant is not None:
            raise NetworkError(f"Conv {conv.name!r}: fp32 convolutions need a Relu")
        layer = ConvPool(h, w, c, weights.shape[0], k[0], pool[0], ohwi.astype(np.float32), bias.astype(np.float32))  # fmt: skip
        return layer, nxt.output[0]
    out_quant = pool_quant
    after = g.consumer_q(nxt.output[0])
    if in_quant is None or out_quant is None or after != out_quant:
        raise NetworkError(f"Conv {conv.name!r}: int8 conv+pool without matching Q/DQ pairs")
    if relu and out_quant.zero_point != 0 and out_quant.dtype is not np.uint8:
        raise NetworkError(f"Relu after Conv {conv.name!r}: only uint8 zero point 0 folds into the clamp")  # fmt: skip
    if out_quant.dtype is not np.uint8 or in_quant.dtype is not np.uint8:
        raise NetworkError(f"Conv {conv.name!r}: only uint8 activations are supported")
    layer = ConvPool(
        h, w, c, weights.shape[0], k[0], pool[0], ohwi.astype(np.int8),
        fold_zero_point(ohwi, bias, in_quant.zero_point),
        multipliers(in_quant.scale, w_scale, out_quant.scale), out_quant,
    )  # fmt: skip
    return layer, nxt.output[0]


def _dense(g: _Graph, node, shape: tuple[int, int, int], in_quant: Quant | None) -> Dense:
    h, w, c = shape
    a = _attrs(node)
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise NetworkError(f"Gemm {node.name!r}: only y = x W^T + b (alpha = beta = 1)")
    weights, w_scale = g.constant(node.input[1])
    bias, _ = g.constant(node.input[2])
    if not a.get("transB", 0):
        weights = weights.T
    outputs, inputs = weights.shape
    if inputs != h * w * c:
        raise NetworkError(f"Gemm {node.name!r}: {inputs} inputs for a {c}x{h}x{w} feature map")
    # ONNX flattens (C, H, W); the C kernels keep (H, W, C): reorder the columns once here
    hwc = np.ascontiguousarray(weights.reshape(outputs, c, h, w).transpose(0, 2, 3, 1).reshape(outputs, -1))  # fmt: skip
    if w_scale is None:
        return Dense(inputs, outputs, hwc.astype(np.float32), bias.astype(np.float32))
    if in_quant is None or in_quant.dtype is not np.uint8:
        raise NetworkError(f"Gemm {node.name!r}: int8 weights need a uint8 quantized input")
    folded = fold_zero_point(hwc, bias, in_quant.zero_point)
    return Dense(inputs, outputs, hwc.astype(np.int8), folded, multipliers(in_quant.scale, w_scale))  # fmt: skip
