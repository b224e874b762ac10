"""The pixels-in model: ``mnist-infer``'s preprocessing inside the ONNX graph.

:func:`build_pixels_model` wraps a core model (input ``image`` float32
``[batch, 1, 28, 28]`` -> ``probabilities`` float32 ``[batch, 10]``, fp32 or
QDQ int8) into a model that takes one grayscale picture as it comes:

- input ``pixels``: uint8 ``[height, width]``, any size from 1x1 up, either polarity;
- output ``probabilities``: float32 ``[10]``;
- output ``label``: int64 scalar (shape ``[]``), the index of the most probable class.

In between runs :func:`mnist_edge.runtime.images.preprocess` (with
``needs_inversion``), block by block, in standard ONNX operators at opset 18
(no custom ops, no onnxruntime-extensions): each block below is commented with
the Python line it mirrors. Where the two cannot be bit-identical:

- PIL's LANCZOS filter has no ONNX counterpart; ``Resize`` (``antialias=1``)
  with :data:`RESIZE_MODE` stands in. As in PIL, the width is resized first and
  rounded to uint8, then the height.
- Everything else (inversion test, border median, stretch, ink box, rounding,
  centre of mass, paste) gives the same numbers: the scalar arithmetic whose
  rounding matters (``round``, the fit scale, the centre of mass) runs in
  float64 as Python's does.

Every branch of the Python code is computed and one result picked with
``Where`` (the graph has no ``If``), so a blank picture gives the blank
28x28 digit as ``preprocess`` does, and no input size divides by zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mnist_edge.export.spec import INPUT_NAME as CORE_INPUT
from mnist_edge.export.spec import OUTPUT_NAME as CORE_OUTPUT
from mnist_edge.runtime.errors import MnistEdgeError
from mnist_edge.runtime.metadata import INVERT_MODES, Preprocessing

PIXELS_INPUT = "pixels"
PROBABILITIES = "probabilities"
LABEL = "label"
OUTPUTS = (PROBABILITIES, LABEL)
OPSET = 18  # Resize's antialias needs 18

# Resize stands in for PIL's LANCZOS (see the module doc and tests/test_pixels.py).
RESIZE_MODE = "cubic"
CUBIC_COEFF_A = -0.75
EXCLUDE_OUTSIDE = 1

F, D, I64, B = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL


class PixelsModelError(MnistEdgeError, ValueError):
    """A core model or an argument :func:`build_pixels_model` cannot use; the message says which."""


@dataclass
class _Builder:
    """Appends nodes and constants under one name prefix; each call returns the output name."""

    prefix: str = "pre/"
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def _name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}{self.count}_{hint}"

    def const(self, value: float | int | bool | list[int] | np.ndarray, dtype: int) -> str:
        np_type = helper.tensor_dtype_to_np_dtype(dtype)
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.array(value, dtype=np_type), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        return self.ops(op_type, list(inputs), 1, **attrs)[0]

    def ops(self, op_type: str, inputs: list[str], outputs: int, **attrs: Any) -> list[str]:
        names = [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, inputs, names, name=names[0] + "_node", **attrs)
        )
        return names

    # small helpers for the recurring patterns
    def dim(self, shape: str, axis: int) -> str:
        """Scalar int64 ``shape[axis]``."""
        return self.op("Gather", shape, self.const(axis, I64), axis=0)

    def to_uint8_range(self, x: str) -> str:
        """``_round_to_uint8``: ``clip(x + 0.5, 0, 255)`` truncated, kept as float32."""
        half = self.op("Add", x, self.const(0.5, F))
        return self.op("Clip", self.op("Floor", half), self.const(0.0, F), self.const(255.0, F))

    def vec(self, *scalars: str) -> str:
        """1-D int64 from scalar int64s."""
        return self.op(
            "Concat", *(self.op("Unsqueeze", s, self.const([0], I64)) for s in scalars), axis=0
        )


def build_pixels_model(
    core: onnx.ModelProto, preprocessing: Preprocessing, invert: str = "auto"
) -> onnx.ModelProto:
    """Wrap a core model into the pixels-in model (``pixels`` -> ``probabilities``, ``label``).

    Args:
        core: an mnist-edge model: input ``image`` float32 ``[batch, 1, size, size]``,
            output ``probabilities`` float32 ``[batch, classes]`` (fp32 or QDQ int8), opset 18.
        preprocessing: the model's preprocessing (size, fit, scale, foreground, centering).
        invert: ``"auto"`` (dark-on-light pictures are inverted, as ``mnist-infer``
            does), ``"always"`` or ``"never"``.

    Returns:
        A new model, opset 18, carrying ``core``'s ``metadata_props``; ``core`` is not changed.

    Raises:
        PixelsModelError: ``core`` lacks that interface, or an argument is out of range.
    """
    if invert not in INVERT_MODES:
        raise PixelsModelError(f"invert must be one of {', '.join(INVERT_MODES)}, not {invert!r}")
    _check_core(core)
    b = _Builder()
    digit = _preprocess(b, PIXELS_INPUT, preprocessing, invert)  # float32 (size, size), 0-255
    size = preprocessing.size

    # Classifier._scale: images.astype(np.float32) / np.float32(255), then x[:, None]
    inv = 1.0 / preprocessing.scale
    if abs(inv - round(inv)) < 1e-6:
        scaled = b.op("Div", digit, b.const(float(round(inv)), F))
    else:
        scaled = b.op("Mul", digit, b.const(preprocessing.scale, F))
    image = b.op("Reshape", scaled, b.const([1, 1, size, size], I64))  # (1, 1, 28, 28)

    # the trained network, its tensors renamed under "core/"
    core_nodes, core_inits, core_out = _inline_core(core, image)
    # one picture: probabilities (10,), label = argmax (first on ties, as numpy)
    probs_node = helper.make_node(
        "Reshape", [core_out, b.const([-1], I64)], [PROBABILITIES], name="probabilities_node"
    )
    label_node = helper.make_node(
        "ArgMax", [PROBABILITIES], [LABEL], name="label_node", axis=0, keepdims=0
    )
    num_classes = _core_classes(core)
    graph = helper.make_graph(
        [*b.nodes, *core_nodes, probs_node, label_node],
        "mnist_pixels",
        [helper.make_tensor_value_info(PIXELS_INPUT, TensorProto.UINT8, ["height", "width"])],
        [
            helper.make_tensor_value_info(PROBABILITIES, F, [num_classes]),
            helper.make_tensor_value_info(LABEL, I64, []),
        ],
        initializer=[*b.initializers, *core_inits],
    )
    opsets = [o for o in core.opset_import if (o.domain or "") not in ("", "ai.onnx")]
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), *opsets],
        producer_name=core.producer_name,
    )
    model.ir_version = core.ir_version
    model.producer_version = core.producer_version
    model.model_version = core.model_version
    model.doc_string = (
        "mnist-edge pixels-in model. Input 'pixels': uint8 [height, width], one grayscale "
        "picture of any size and either polarity. Inside: mnist-infer's MNIST-style "
        "preprocessing, then the network. Outputs 'probabilities': float32 "
        f"[{num_classes}] and 'label': int64 scalar (argmax). " + core.doc_string
    )
    onnx.helper.set_model_props(model, {p.key: p.value for p in core.metadata_props})
    return model


def build_preprocessing_model(
    preprocessing: Preprocessing, invert: str = "auto"
) -> onnx.ModelProto:
    """The preprocessing half alone: ``pixels`` uint8 ``[height, width]`` -> ``digit`` float32
    ``[size, size]`` (0-255, what :func:`mnist_edge.runtime.images.preprocess` returns).

    For comparing the graph with the Python preprocessing pixel by pixel (tests, debugging).

    Raises:
        PixelsModelError: ``invert`` is not one of :data:`INVERT_MODES`.
    """
    if invert not in INVERT_MODES:
        raise PixelsModelError(f"invert must be one of {', '.join(INVERT_MODES)}, not {invert!r}")
    b = _Builder()
    digit = _preprocess(b, PIXELS_INPUT, preprocessing, invert)
    b.nodes.append(helper.make_node("Identity", [digit], ["digit"], name="digit_node"))
    size = preprocessing.size
    graph = helper.make_graph(
        b.nodes,
        "mnist_preprocessing",
        [helper.make_tensor_value_info(PIXELS_INPUT, TensorProto.UINT8, ["height", "width"])],
        [helper.make_tensor_value_info("digit", F, [size, size])],
        initializer=b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def _check_core(core: onnx.ModelProto) -> None:
    graph = core.graph
    if [i.name for i in graph.input] != [CORE_INPUT] or CORE_OUTPUT not in [
        o.name for o in graph.output
    ]:
        raise PixelsModelError(
            f"core model must take {CORE_INPUT!r} and give {CORE_OUTPUT!r}; it takes "
            f"{[i.name for i in graph.input]} and gives {[o.name for o in graph.output]}"
        )
    if graph.input[0].type.tensor_type.elem_type != F:
        raise PixelsModelError(
            f"core model input {CORE_INPUT!r} must be float32 (not the uint8-input variant)"
        )
    standard = [o.version for o in core.opset_import if (o.domain or "") in ("", "ai.onnx")]
    if standard != [OPSET]:
        raise PixelsModelError(f"core model must be opset {OPSET}, not {standard}")


def _core_classes(core: onnx.ModelProto) -> int:
    out = next(o for o in core.graph.output if o.name == CORE_OUTPUT)
    dims = out.type.tensor_type.shape.dim
    return dims[-1].dim_value if dims and dims[-1].dim_value > 0 else 10


def _inline_core(
    core: onnx.ModelProto, image: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """The core graph's nodes and initializers, every name prefixed ``core/``, fed from ``image``."""

    def rename(name: str) -> str:
        if not name:
            return name
        return image if name == CORE_INPUT else f"core/{name}"

    nodes = []
    for i, node in enumerate(core.graph.node):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = f"core/{node.name or f'{i}_{node.op_type}'}"
        new.input[:] = [rename(n) for n in node.input]
        new.output[:] = [rename(n) for n in node.output]
        nodes.append(new)
    inits = []
    for init in core.graph.initializer:
        new_init = onnx.TensorProto()
        new_init.CopyFrom(init)
        new_init.name = rename(init.name)
        inits.append(new_init)
    return nodes, inits, rename(CORE_OUTPUT)


def _preprocess(b: _Builder, pixels: str, pre: Preprocessing, invert: str) -> str:
    """Nodes for images.preprocess(gray, ImageOptions(pre, invert)); returns float32 (size, size).

    Only five operators touch every pixel (Cast, Sub, Mul and two ReduceMax); the rest
    works on the border, the row/column profiles, the ink box or the 28x28 field.
    """
    size, fit = pre.size, pre.fit
    zero_i, one_i, two_i = b.const(0, I64), b.const(1, I64), b.const(2, I64)
    x = b.op("Cast", pixels, to=F)  # (H, W) gray as float32, exact
    shape = b.op("Shape", pixels)
    h, w = b.dim(shape, 0), b.dim(shape, 1)
    n_flat = b.op("Mul", h, w)
    # needs_inversion: `if gray.shape[0] < 3 or gray.shape[1] < 3`; preprocess: `if h > 2 and w > 2`
    small = b.op("Or", b.op("Less", h, b.const(3, I64)), b.op("Less", w, b.const(3, I64)))
    # the picture's edges: `concat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])` (corners twice)
    edges = b.op(
        "Concat",
        b.op("Gather", x, zero_i, axis=0),
        b.op("Gather", x, b.const(-1, I64), axis=0),
        b.op("Gather", x, zero_i, axis=1),
        b.op("Gather", x, b.const(-1, I64), axis=1),
        axis=0,
    )  # (2W + 2H,)
    n_edges = b.op("Mul", b.op("Add", h, w), two_i)
    # every pixel when the picture is small, none otherwise (Slice to length 0)
    small_flat = b.op(
        "Slice",
        b.op("Reshape", x, b.const([-1], I64)),
        b.vec(zero_i),
        b.vec(b.op("Where", small, n_flat, zero_i)),
    )

    # ---- inversion: `if invert == "always" or (invert == "auto" and needs_inversion(gray))`
    if invert == "auto":
        # small pictures: `return float(gray.mean()) > 127.5`, i.e. 2 * sum > 255 * count (exact)
        total = b.op("ReduceSum", small_flat, keepdims=0)
        mean_bright = b.op(
            "Greater",
            b.op("Mul", total, b.const(2.0, F)),
            b.op("Mul", b.op("Cast", n_flat, to=F), b.const(255.0, F)),
        )
        # `border = concat([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])`: the edges
        # without the second copy of each corner; `2 * count_nonzero(border > 127) > border.size`
        corners = b.op(
            "Gather",
            b.op("Gather", x, b.const([0, -1], I64), axis=0),
            b.const([0, -1], I64),
            axis=1,
        )  # (2, 2)

        def n_above_127(values: str) -> str:
            bright = b.op("Cast", b.op("Greater", values, b.const(127.0, F)), to=I64)
            return b.op("ReduceSum", bright, keepdims=0)

        n_bright = b.op("Sub", n_above_127(edges), n_above_127(corners))
        n_border = b.op("Sub", n_edges, b.const(4, I64))
        border_bright = b.op("Greater", b.op("Mul", n_bright, two_i), n_border)
        flip = b.op(  # Where has no bool kernel in ONNX Runtime
            "Or",
            b.op("And", small, mean_bright),
            b.op("And", b.op("Not", small), border_bright),
        )
    else:
        flip = b.const(invert == "always", B)
    # `gray = 255 - gray`: applied below where each value is used (flip ? 255 - v : v)
    sign = b.op("Where", flip, b.const(-1.0, F), b.const(1.0, F))

    def flipped(values: str) -> str:
        return b.op("Where", flip, b.op("Sub", b.const(255.0, F), values), values)

    # ---- `if gray.shape == (size, size): return gray` (pass-through, made (size, size) for any input)
    is_square = b.op(
        "And", b.op("Equal", h, b.const(size, I64)), b.op("Equal", w, b.const(size, I64))
    )
    corner = b.op(
        "Slice", x, b.const([0, 0], I64), b.const([size, size], I64), b.const([0, 1], I64)
    )  # (min(H, 28), min(W, 28))
    fill = b.op("Relu", b.op("Sub", b.const([size, size], I64), b.op("Shape", corner)))
    as_is = flipped(b.op("Pad", corner, b.op("Concat", b.const([0, 0], I64), fill, axis=0)))

    # ---- `border = (the edges) if h > 2 and w > 2 else work.ravel()`
    n_values = b.op("Where", small, n_flat, n_edges)
    values = b.op(
        "Concat",
        small_flat,
        b.op("Slice", edges, b.vec(zero_i), b.vec(b.op("Where", small, zero_i, n_edges))),
        axis=0,
    )
    # `np.median(border)`: the mean of the two middle values of the sorted border
    ascending = b.ops("TopK", [values, b.vec(n_values)], 2, largest=0, sorted=1)[0]
    lo = b.op("Gather", ascending, b.op("Div", b.op("Sub", n_values, one_i), two_i))
    hi = b.op("Gather", ascending, b.op("Div", n_values, two_i))
    median = flipped(b.op("Mul", b.op("Add", lo, hi), b.const(0.5, F)))  # of the inverted gray
    # `work = np.clip(gray - median, 0, None)`; with gray = 255 - x that is clip(median' - x)
    # where median' = 255 - median: one Sub and one Mul by +-1 over the picture, all exact
    diff = b.op("Mul", b.op("Sub", x, flipped(median)), sign)  # (H, W), clipped later
    row_max = b.op("ReduceMax", diff, b.const([1], I64), keepdims=0)  # (H,)
    col_max = b.op("ReduceMax", diff, b.const([0], I64), keepdims=0)  # (W,)
    # `peak = float(work.max())`; `if peak <= 0: return zeros` (picked at the end)
    peak = b.op("Relu", b.op("ReduceMax", row_max, keepdims=0))
    blank = b.op("Not", b.op("Greater", peak, b.const(0.0, F)))
    safe_peak = b.op("Where", blank, b.const(1.0, F), peak)
    # `work *= 255.0 / peak` (the factor in float64 as Python's, then float32)
    factor = b.op("Cast", b.op("Div", b.const(255.0, D), b.op("Cast", safe_peak, to=D)), to=F)

    # ---- `ink = work > 0.2 * 255.0`; `rows = np.flatnonzero(ink.any(axis=1))` (and cols):
    # a row has ink when its largest value, scaled, is above 51 (scaling keeps the order)
    def ink_span(profile: str) -> tuple[str, str]:
        ink = b.op("Cast", b.op("Greater", b.op("Mul", profile, factor), b.const(51.0, F)), to=F)
        first = b.op("ArgMax", ink, axis=0, keepdims=1)  # rows[0]
        last = b.op("ArgMax", ink, axis=0, keepdims=1, select_last_index=1)  # rows[-1]
        return first, last

    (r0, r1), (c0, c1) = ink_span(row_max), ink_span(col_max)
    # `work = work[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]`, then clip and scale it
    one_v = b.const([1], I64)
    crop = b.op(
        "Slice",
        diff,
        b.op("Concat", r0, c0, axis=0),
        b.op("Concat", b.op("Add", r1, one_v), b.op("Add", c1, one_v), axis=0),
        b.const([0, 1], I64),
    )  # (ch, cw)
    crop = b.op("Mul", b.op("Relu", crop), factor)
    # `work[work < 0.1 * 255.0] = 0.0`
    crop = b.op("Where", b.op("Less", crop, b.const(0.1 * 255.0, F)), b.const(0.0, F), crop)

    # ---- `scale = pre.fit / max(ch, cw)`; `nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))`
    crop_shape = b.op("Shape", crop)
    ch, cw = b.dim(crop_shape, 0), b.dim(crop_shape, 1)
    scale = b.op("Div", b.const(float(fit), D), b.op("Cast", b.op("Max", ch, cw), to=D))

    def fitted_side(side: str) -> str:
        rounded = b.op("Round", b.op("Mul", b.op("Cast", side, to=D), scale))  # half to even
        return b.op("Max", b.op("Cast", rounded, to=I64), one_i)

    nh, nw = fitted_side(ch), fitted_side(cw)
    # `Image.fromarray(_round_to_uint8(work)).resize((nw, nh), LANCZOS)`: PIL resizes the
    # width, rounds to uint8, then the height, rounds to uint8
    u8 = b.op("Unsqueeze", b.to_uint8_range(crop), b.const([0, 1], I64))  # (1, 1, ch, cw)
    resize: dict[str, object] = {
        "mode": RESIZE_MODE,
        "antialias": 1,
        "exclude_outside": EXCLUDE_OUTSIDE,
        "coordinate_transformation_mode": "half_pixel",
    }
    if RESIZE_MODE == "cubic":
        resize["cubic_coeff_a"] = CUBIC_COEFF_A
    wide = b.op("Resize", u8, "", "", b.vec(one_i, one_i, ch, nw), **resize)
    wide = b.to_uint8_range(wide)  # (1, 1, ch, nw)
    tall = b.op("Resize", wide, "", "", b.vec(one_i, one_i, nh, nw), **resize)
    fitted = b.op("Squeeze", b.to_uint8_range(tall), b.const([0, 1], I64))  # (nh, nw)

    # ---- centre: `if float(fitted.sum()) <= 0: return zeros`
    total = b.op("ReduceSum", fitted, keepdims=0)
    empty = b.op("Not", b.op("Greater", total, b.const(0.0, F)))
    half = b.const(size / 2, D)
    if pre.centering == "center-of-mass":
        # `_center_of_mass`: (fitted.sum(axis=1) @ rows) / total, in float64
        safe_total = b.op("Cast", b.op("Where", empty, b.const(1.0, F), total), to=D)

        def mass_centre(side: str, axis: int) -> str:
            ramp = b.op("Cast", b.op("Range", zero_i, side, one_i), to=F)
            profile = b.op("ReduceSum", fitted, b.const([axis], I64), keepdims=0)
            moment = b.op("ReduceSum", b.op("Mul", profile, ramp), keepdims=0)  # exact in float32
            return b.op("Div", b.op("Cast", moment, to=D), safe_total)

        cy, cx = mass_centre(nh, 1), mass_centre(nw, 0)
    else:  # "bbox": `cy, cx = nh / 2, nw / 2`
        cy = b.op("Div", b.op("Cast", nh, to=D), b.const(2.0, D))
        cx = b.op("Div", b.op("Cast", nw, to=D), b.const(2.0, D))
    # `top = round(size / 2 - cy)`; `left = round(size / 2 - cx)`
    top = b.op("Cast", b.op("Round", b.op("Sub", half, cy)), to=I64)
    left = b.op("Cast", b.op("Round", b.op("Sub", half, cx)), to=I64)
    # paste with clipping at the field's edges: out[y, x] = fitted[y - top, x - left];
    # pad by `size` on every side, then take the (size, size) window at (size - top, size - left)
    padded = b.op("Pad", fitted, b.const([size, size, size, size], I64))
    start = b.op("Sub", b.const([size, size], I64), b.vec(top, left))
    placed = b.op(
        "Slice",
        padded,
        start,
        b.op("Add", start, b.const([size, size], I64)),
        b.const([0, 1], I64),
    )  # (28, 28)

    # ---- pick the branch Python took
    zeros = b.const(np.zeros((size, size), np.float32), F)
    digit = b.op("Where", b.op("Or", blank, empty), zeros, placed)
    digit = b.op("Where", is_square, as_is, digit)
    # `_foreground`: `255 - digit if pre.foreground == "black-on-white"`
    if pre.foreground == "black-on-white":
        digit = b.op("Sub", b.const(255.0, F), digit)
    return digit
