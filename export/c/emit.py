"""C text for one :class:`~mnist_edge.export.c.network.Network`: ``mnist_model.c`` and ``mnist.h``.

The kernels are hand-written C in ``templates/`` (pasted in verbatim); what is
generated here is only the model's part: named sizes, the weights as
``static const`` arrays, and ``mnist_classify`` calling the kernels on two
planned buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from mnist_edge.export.c.network import Network

PER_LINE = {np.dtype(np.float32): 6, np.dtype(np.int32): 8, np.dtype(np.int8): 16, np.dtype(np.uint8): 16}  # fmt: skip
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.int32): "int32_t", np.dtype(np.int8): "int8_t", np.dtype(np.uint8): "uint8_t"}  # fmt: skip
PIXELS = 784
CLASSES = 10


def template(name: str) -> str:
    """The text of ``templates/<name>`` (a C kernel file)."""
    return (resources.files("mnist_edge.export.c") / "templates" / name).read_text()


def c_float(v: float) -> str:
    """A float32 as a C literal that reads back bit-exact."""
    if not np.isfinite(v):
        raise ValueError(f"weight {v} is not finite")
    text = f"{float(np.float32(v)):.9g}"
    return (text if any(ch in text for ch in ".e") else text + ".0") + "f"


def c_array(name: str, values: np.ndarray, size: str) -> str:
    """``static const <type> name[size] = {...};`` with a few values a line."""
    flat = values.reshape(-1)
    fmt = c_float if flat.dtype == np.float32 else (lambda v: str(int(v)))
    per = PER_LINE[flat.dtype]
    lines = [
        "    " + ", ".join(fmt(v) for v in flat[i : i + per]) + ","
        for i in range(0, len(flat), per)
    ]
    body = "\n".join(lines)
    return f"static const {C_TYPES[flat.dtype]} {name}[{size}] = {{\n{body}\n}};\n"


@dataclass(frozen=True)
class Plan:
    """The buffers ``mnist_classify`` keeps on its stack.

    ``a`` and ``b`` are the two activation buffers the layers ping-pong between (elements
    each); ``patches`` the int8 conv kernel's scratch, bytes (0 for fp32).
    """

    a: int
    b: int
    element_bytes: int
    patches: int = 0

    @property
    def bytes(self) -> int:
        return (self.a + self.b) * self.element_bytes + self.patches


def plan(net: Network) -> Plan:
    """Layer i reads buffer i % 2 and writes the other: the input and every second output share one.

    The int8 conv kernel copies the inputs under one pooled output (pool * pool patches of
    k * k * in_c bytes) into ``patches``: the largest layer's size, shared by all.
    """
    sizes = [net.height * net.width] + [c.out_h * c.out_w * c.out_c for c in net.convs]
    a = max(sizes[0::2])
    b = max(sizes[1::2])
    if net.precision == "fp32":
        return Plan(a, b, 4)
    patches = max(c.pool**2 * c.kernel**2 * c.in_c for c in net.convs)
    return Plan(a, b, 1, patches)


def sizes_enum(net: Network, p: Plan) -> str:
    rows = [f"    INPUT_H = {net.height},", f"    INPUT_W = {net.width},"]
    for i, c in enumerate(net.convs, 1):
        rows += [
            f"    CONV{i}_IN_C = {c.in_c},",
            f"    CONV{i}_OUT_C = {c.out_c},",
            f"    CONV{i}_K = {c.kernel},",
            f"    POOL{i} = {c.pool},",
            f"    POOL{i}_H = {c.out_h},",
            f"    POOL{i}_W = {c.out_w},",
        ]
    rows += [
        f"    DENSE_IN = {net.dense.inputs},",
        f"    CLASSES = {net.classes},",
        f"    BUFFER_A = {p.a}, /* the input, then every second layer's output */",
        f"    BUFFER_B = {p.b}" + ("," if p.patches else ""),
    ]
    if p.patches:
        rows.append(f"    PATCHES = {p.patches} /* conv_relu_pool_q's scratch */")
    return "/* Sizes, read from the ONNX file. */\nenum {\n" + "\n".join(rows) + "\n};\n"


def weights(net: Network, input_table: np.ndarray | None) -> str:
    parts: list[str] = []
    if net.precision == "fp32":
        parts.append(f"static const float pixel_divisor = {c_float(net.divisor)};\n")
    else:
        if input_table is None:
            raise ValueError("an int8 network needs its input table")
        parts.append("/* QuantizeLinear(pixel / divisor) for every pixel value, by ONNX Runtime. */\n")  # fmt: skip
        parts.append(c_array("input_table", input_table.astype(np.uint8), "256"))
    for i, c in enumerate(net.convs, 1):
        size = f"CONV{i}_OUT_C * CONV{i}_K * CONV{i}_K * CONV{i}_IN_C"
        parts.append(c_array(f"conv{i}_weights", c.weights, size))
        parts.append(c_array(f"conv{i}_bias", c.bias, f"CONV{i}_OUT_C"))
        if c.scales is not None:
            parts.append(c_array(f"conv{i}_scales", c.scales, f"CONV{i}_OUT_C"))
    d = net.dense
    parts.append(c_array("dense_weights", d.weights, "CLASSES * DENSE_IN"))
    parts.append(c_array("dense_bias", d.bias, "CLASSES"))
    if d.scales is not None:
        parts.append(c_array("dense_scales", d.scales, "CLASSES"))
    return "\n".join(parts)


def classify(net: Network) -> str:
    int8 = net.precision == "int8"
    elem = "uint8_t" if int8 else "float"
    body = [
        f"    {elem} a[BUFFER_A];",
        f"    {elem} b[BUFFER_B];",
        *(["    uint8_t patches[PATCHES];"] if int8 else []),
        "    float logits[CLASSES];",
        "",
        "    quantize_input(pixels, INPUT_H * INPUT_W, input_table, a);"
        if int8
        else "    scale_input(pixels, INPUT_H * INPUT_W, pixel_divisor, a);",
    ]
    h, w = "INPUT_H", "INPUT_W"
    for i, c in enumerate(net.convs, 1):
        src, dst = ("a", "b") if i % 2 else ("b", "a")
        args = f"{src}, {h}, {w}, CONV{i}_IN_C, conv{i}_weights, conv{i}_bias"
        if int8:
            zero = c.out_quant.zero_point if c.out_quant else 0
            call = f"conv_relu_pool_q({args}, conv{i}_scales,\n                     CONV{i}_OUT_C, CONV{i}_K, POOL{i}, {zero}, patches, {dst});"  # fmt: skip
        else:
            call = f"conv_relu_pool({args},\n                   CONV{i}_OUT_C, CONV{i}_K, POOL{i}, {dst});"
        body.append(f"    {call}")
        h, w = f"POOL{i}_H", f"POOL{i}_W"
    last = "b" if len(net.convs) % 2 else "a"
    if int8:
        body.append(f"    dense_q({last}, DENSE_IN, dense_weights, dense_bias, dense_scales, CLASSES, logits);")  # fmt: skip
    else:
        body.append(f"    dense({last}, DENSE_IN, dense_weights, dense_bias, CLASSES, logits);")
    body.append("    return softmax(logits, CLASSES, probabilities);")
    return (
        f"int mnist_classify(const unsigned char pixels[{PIXELS}], float probabilities[{CLASSES}])\n"
        "{\n" + "\n".join(body) + "\n}\n"
    )


def model_source(net: Network, source: str, input_table: np.ndarray | None) -> str:
    """The whole ``mnist_model.c``."""
    if net.height * net.width != PIXELS or net.classes != CLASSES:
        raise ValueError(f"the model takes {net.height}x{net.width} and gives {net.classes} classes; mnist.h declares 28x28 -> 10")  # fmt: skip
    kernels = template("kernels_int8.c" if net.precision == "int8" else "kernels_fp32.c")
    return "\n".join(
        [
            f"/* mnist_model.c: {source} ({net.precision}) as C99, written by `mnist-export --c`.\n"
            " * The weights, shapes and scales are the ONNX file's; regenerate rather than edit. */\n",
            '#include <math.h>\n#include <stdint.h>\n#include <string.h>\n\n#include "mnist.h"\n',
            sizes_enum(net, plan(net)),
            weights(net, input_table),
            kernels,
            template("softmax.c"),
            "/* The planned buffers: the layers ping-pong between a and b on the caller's stack. */",
            classify(net),
        ]
    )


def header(net: Network, source: str, frame_api: str, memory: list[str]) -> str:
    """The whole ``mnist.h``: the memory figures, ``mnist_classify`` and B's frame API fragment."""
    notes = "\n".join(f" *   {line}" for line in memory)
    return f"""/* mnist.h: MNIST digit classifier, {source} ({net.precision}) as a C99 library.
 * Written by `mnist-export --c`; standard headers and libm only, no malloc, no I/O, no OS.
 *
 * Memory:
{notes}
 */
#ifndef MNIST_H
#define MNIST_H

#ifdef __cplusplus
extern "C" {{
#endif

/* 28x28 MNIST-style grey pixels (white digit on black, row-major); returns the label 0-9 */
int mnist_classify(const unsigned char pixels[{PIXELS}], float probabilities[{CLASSES}]);

{frame_api.strip()}

#ifdef __cplusplus
}}
#endif

#endif
"""
