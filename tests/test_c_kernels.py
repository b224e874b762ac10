"""Each C kernel of export/c/templates/ on its own, against ONNX Runtime on tiny graphs.

The templates are compiled with the host's ``cc`` (the export's warning flags) behind
the wrappers of tests/helpers/c_kernels/ and called through ctypes. Every graph is built
here with ``onnx.helper`` in the form the exported files use: fp32 Conv, Relu, MaxPool,
Gemm, Softmax; QDQ int8 with uint8 activations and per-channel int8 weights, which ONNX
Runtime fuses into QLinearConv, a uint8 MaxPool and QGemm (asserted on its optimized
graph). Integer results must be equal; float results agree within stated tolerances.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from mnist_edge.export.c.build import build_shared, host_cc
from mnist_edge.export.c.library import input_table
from mnist_edge.export.c.network import Quant, fold_zero_point, multipliers, read_network
from mnist_edge.runtime.errors import MnistEdgeError
from mnist_edge.runtime.layout import BUNDLED

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "export" / "c" / "templates"
HELPERS = REPO / "tests" / "helpers" / "c_kernels"
PTR = ctypes.c_void_p
INT = ctypes.c_int
FLOAT = ctypes.c_float
# Float kernels sum in their own order (ORT: im2col + SGEMM with FMA): a few float32 ulps
# of the largest partial sum apart.
FP32_RTOL, FP32_ATOL = 1e-5, 1e-5
SOFTMAX_ATOL = 2e-7  # ORT's vectorised exp against libm's expf, on probabilities <= 1


def _ptr(a: np.ndarray) -> int:
    assert a.flags.c_contiguous
    return a.ctypes.data


@pytest.fixture(scope="module")
def c_kernels(tmp_path_factory) -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """(fp32, int8): the templates compiled warning-free into two shared libraries."""
    try:
        host_cc()
    except MnistEdgeError as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("c_kernels")
    libs = []
    for name in ("fp32.c", "int8.c"):
        so = build_shared(HELPERS, out / f"{name[:-2]}.so", [f"-I{TEMPLATES}"], [name])
        libs.append(ctypes.CDLL(str(so)))
    fp32, int8 = libs
    fp32.call_conv_relu_pool.argtypes = [PTR, INT, INT, INT, PTR, PTR, INT, INT, INT, PTR]
    fp32.call_dense.argtypes = [PTR, INT, PTR, PTR, INT, PTR]
    fp32.call_scale_input.argtypes = [PTR, INT, FLOAT, PTR]
    fp32.call_softmax.argtypes = [PTR, INT, PTR]
    fp32.call_softmax.restype = INT
    int8.call_requantize.argtypes = [PTR, PTR, INT, INT, PTR]
    int8.call_conv_relu_pool_q.argtypes = [PTR, INT, INT, INT, PTR, PTR, PTR, INT, INT, INT, INT, PTR, PTR]  # fmt: skip
    int8.call_dense_q.argtypes = [PTR, INT, PTR, PTR, PTR, INT, PTR]
    int8.call_quantize_input.argtypes = [PTR, INT, PTR, PTR]
    return fp32, int8


def _session(nodes, inputs, outputs, inits, tmp_path: Path | None = None) -> ort.InferenceSession:
    """A CPU session on the graph; with ``tmp_path`` ORT saves its optimized graph there."""
    graph = helper.make_graph(nodes, "kernel", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if tmp_path is not None:
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])  # fmt: skip


def _optimized_ops(tmp_path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def _tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(value), name)


def _io(name: str, elem: int, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


# (in_h, in_w, in_c, out_c, k, pool): the model's two layers, odd sizes where the floor of
# the pool drops a row and a column, a 5x5 kernel with a 3x3 pool, no pool, a thin map. The
# int8 kernel takes 4 bytes and 4 channels a step: these filters (k * k * in_c bytes: 9, 288,
# 27, 45, 50, 4, 4) and channel counts (32, 64, 5, 7, 4, 3, 2) leave every remainder of both.
SHAPES = {
    "mnist-conv1 28x28x1-32": (28, 28, 1, 32, 3, 2),
    "mnist-conv2 13x13x32-64": (13, 13, 32, 64, 3, 2),
    "odd 9x7x3-5": (9, 7, 3, 5, 3, 2),
    "remainders 8x9x5-7": (8, 9, 5, 7, 3, 2),
    "k5 pool3 12x11x2-4": (12, 11, 2, 4, 5, 3),
    "k1 pool1 5x6x4-3": (5, 6, 4, 3, 1, 1),
    "thin 4x15x1-2 k2": (4, 15, 1, 2, 2, 2),
}


def _pooled(h: int, w: int, k: int, pool: int) -> tuple[int, int]:
    return (h - k + 1) // pool, (w - k + 1) // pool


# ---------------------------------------------------------------- fp32


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_conv_relu_pool_equals_onnx(c_kernels, shape) -> None:
    fp32, _ = c_kernels
    h, w, c, oc, k, pool = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.random((1, c, h, w), dtype=np.float32)
    weights = rng.normal(0, 0.3, (oc, c, k, k)).astype(np.float32)
    bias = rng.normal(0, 0.1, oc).astype(np.float32)
    ph, pw = _pooled(h, w, k, pool)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], kernel_shape=[k, k]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node(
            "MaxPool", ["relu"], ["y"], kernel_shape=[pool, pool], strides=[pool, pool]
        ),
    ]
    session = _session(
        nodes, [_io("x", TensorProto.FLOAT, [1, c, h, w])],
        [_io("y", TensorProto.FLOAT, [1, oc, ph, pw])], [_tensor("w", weights), _tensor("b", bias)],
    )  # fmt: skip
    want = session.run(None, {"x": x})[0][0].transpose(1, 2, 0)  # (ph, pw, oc)
    hwc = np.ascontiguousarray(x[0].transpose(1, 2, 0))
    ohwi = np.ascontiguousarray(weights.transpose(0, 2, 3, 1))
    got = np.full((ph, pw, oc), np.nan, np.float32)
    fp32.call_conv_relu_pool(_ptr(hwc), h, w, c, _ptr(ohwi), _ptr(bias), oc, k, pool, _ptr(got))
    np.testing.assert_allclose(got, want, rtol=FP32_RTOL, atol=FP32_ATOL)
    assert (want > 0).any() and (want == 0).any() == (got == 0).any()


DENSE = {"mnist 1600-10": (1600, 10), "7-3": (7, 3), "1-1": (1, 1), "333-17": (333, 17)}


@pytest.mark.parametrize("size", DENSE.values(), ids=DENSE.keys())
def test_dense_equals_gemm(c_kernels, size) -> None:
    fp32, _ = c_kernels
    n, m = size
    rng = np.random.default_rng(n * m)
    x = rng.random((1, n), dtype=np.float32)
    weights = rng.normal(0, 0.2, (m, n)).astype(np.float32)
    bias = rng.normal(0, 0.5, m).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    session = _session(
        [node], [_io("x", TensorProto.FLOAT, [1, n])], [_io("y", TensorProto.FLOAT, [1, m])],
        [_tensor("w", weights), _tensor("b", bias)],
    )  # fmt: skip
    want = session.run(None, {"x": x})[0][0]
    got = np.full(m, np.nan, np.float32)
    fp32.call_dense(_ptr(x), n, _ptr(weights), _ptr(bias), m, _ptr(got))
    np.testing.assert_allclose(got, want, rtol=FP32_RTOL, atol=FP32_ATOL)


LOGITS = {
    "random": np.random.default_rng(3).normal(0, 3, 10),
    "large": np.array([1000, 999, -1000, 998.5, 0, 3e4, 3e4 - 20, -3e4, 1e3, 2.5]),
    "beyond expf's range": np.array([100, 90, 88.8, -120, 0, 50, 103, -88, 1, 2]),
    "all equal": np.full(10, 7.25),
    "tie for the max": np.array([1, 5, 2, 5, 0, -1, 3, 4, 5, 0.5]),
    "one class": np.array([-3.0]),
}


@pytest.mark.parametrize("logits", LOGITS.values(), ids=LOGITS.keys())
def test_softmax_equals_onnx(c_kernels, logits) -> None:
    fp32, _ = c_kernels
    x = np.ascontiguousarray(logits, dtype=np.float32)[None]
    n = x.shape[1]
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    session = _session(
        [node], [_io("x", TensorProto.FLOAT, [1, n])], [_io("y", TensorProto.FLOAT, [1, n])], []
    )
    want = session.run(None, {"x": x})[0][0]
    got = np.full(n, np.nan, np.float32)
    label = fp32.call_softmax(_ptr(x), n, _ptr(got))
    assert label == int(np.argmax(x[0]))  # the first of tied maxima, as numpy and ORT's ArgMax
    np.testing.assert_allclose(got, want, rtol=0, atol=SOFTMAX_ATOL)
    assert np.isfinite(got).all() and abs(float(got.sum()) - 1) < 1e-6


def test_scale_input_equals_onnx(c_kernels) -> None:
    """pixel / divisor in float32, as the core model is fed (equal, not close)."""
    fp32, _ = c_kernels
    divisor = read_network(BUNDLED.model("fp32")).divisor
    pixels = np.arange(256, dtype=np.uint8)
    nodes = [
        helper.make_node("Cast", ["p"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["f", "d"], ["x"]),
    ]
    session = _session(
        nodes, [_io("p", TensorProto.UINT8, [256])], [_io("x", TensorProto.FLOAT, [256])],
        [_tensor("d", np.float32(divisor))],
    )  # fmt: skip
    want = session.run(None, {"p": pixels})[0]
    got = np.full(256, np.nan, np.float32)
    fp32.call_scale_input(_ptr(pixels), 256, divisor, _ptr(got))
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- int8 (QDQ, as mnist.int8.onnx)


def _qdq_conv_pool(
    shape: tuple[int, ...], x_quant: Quant, y_quant: Quant, tmp_path: Path, seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray], ort.InferenceSession]:
    """Q/DQ Conv -> Q/DQ MaxPool -> Q with random int8 weights, as the quantizer writes them.

    Returns the uint8 input (1, C, H, W), the weights and scales, and the session.
    """
    h, w, c, oc, k, pool = shape
    rng = np.random.default_rng(seed)
    xq = rng.integers(0, 256, (1, c, h, w), dtype=np.uint8)
    wq = rng.integers(-127, 128, (oc, c, k, k), dtype=np.int8)
    w_scale = rng.uniform(0.001, 0.02, oc).astype(np.float32)
    b_scale = (np.float32(x_quant.scale) * w_scale).astype(np.float32)
    bq = rng.integers(-5000, 5000, oc, dtype=np.int32)
    ph, pw = _pooled(h, w, k, pool)
    sx, zx = np.float32(x_quant.scale), np.uint8(x_quant.zero_point)
    sy, zy = np.float32(y_quant.scale), np.uint8(y_quant.zero_point)
    dq, q = "DequantizeLinear", "QuantizeLinear"
    nodes = [
        helper.make_node(dq, ["xq", "sx", "zx"], ["x"]),
        helper.make_node(dq, ["wq", "sw", "zw"], ["w"], axis=0),
        helper.make_node(dq, ["bq", "sb", "zb"], ["b"], axis=0),
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], kernel_shape=[k, k]),
        helper.make_node(q, ["conv", "sy", "zy"], ["conv_q"]),
        helper.make_node(dq, ["conv_q", "sy", "zy"], ["conv_dq"]),
        helper.make_node(
            "MaxPool", ["conv_dq"], ["pool"], kernel_shape=[pool, pool], strides=[pool, pool]
        ),
        helper.make_node(q, ["pool", "sy", "zy"], ["yq"]),
    ]
    inits = [
        _tensor("sx", sx), _tensor("zx", zx), _tensor("sy", sy), _tensor("zy", zy),
        _tensor("wq", wq), _tensor("sw", w_scale), _tensor("zw", np.zeros(oc, np.int8)),
        _tensor("bq", bq), _tensor("sb", b_scale), _tensor("zb", np.zeros(oc, np.int32)),
    ]  # fmt: skip
    session = _session(
        nodes, [_io("xq", TensorProto.UINT8, [1, c, h, w])],
        [_io("yq", TensorProto.UINT8, [1, oc, ph, pw])], inits, tmp_path,
    )  # fmt: skip
    return xq, {"wq": wq, "w_scale": w_scale, "bq": bq}, session


# (input quantization, output quantization): the model's (uint8 zero point 0 after the
# folded Relu), an input zero point to fold into the bias, an output zero point of 128.
QUANTS = {
    "relu zp0": (Quant(1 / 255, 0, np.uint8), Quant(0.05, 0, np.uint8)),
    "input zp 17": (Quant(0.02, 17, np.uint8), Quant(0.08, 0, np.uint8)),
    "output zp 128": (Quant(0.01, 3, np.uint8), Quant(0.03, 128, np.uint8)),
}


@pytest.mark.parametrize("quants", QUANTS.values(), ids=QUANTS.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_conv_relu_pool_q_equals_qlinearconv(c_kernels, shape, quants, tmp_path) -> None:
    """Every uint8 output equal to ORT's QLinearConv + uint8 MaxPool."""
    _, int8 = c_kernels
    h, w, c, oc, k, pool = shape
    x_quant, y_quant = quants
    xq, p, session = _qdq_conv_pool(shape, x_quant, y_quant, tmp_path, seed=sum(shape))
    ops = _optimized_ops(tmp_path)
    assert "QLinearConv" in ops and "Conv" not in ops, ops  # integer arithmetic, not float
    want = session.run(None, {"xq": xq})[0][0].transpose(1, 2, 0)  # (ph, pw, oc)
    ohwi = np.ascontiguousarray(p["wq"].transpose(0, 2, 3, 1))
    bias = fold_zero_point(ohwi, p["bq"], x_quant.zero_point)
    scales = multipliers(x_quant.scale, p["w_scale"], y_quant.scale)
    hwc = np.ascontiguousarray(xq[0].transpose(1, 2, 0))
    got = np.full(want.shape, 0xAB, np.uint8)
    patches = np.zeros(pool * pool * k * k * c, np.uint8)  # the scratch mnist_model.c plans
    int8.call_conv_relu_pool_q(
        _ptr(hwc), h, w, c, _ptr(ohwi), _ptr(bias), _ptr(scales), oc, k, pool,
        y_quant.zero_point, _ptr(patches), _ptr(got),
    )  # fmt: skip
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 2, "outputs all clamped: the case tests nothing"


def _requantize_cases() -> dict[str, tuple[np.ndarray, float, int]]:
    """name: (int32 accumulators, y_scale with x_scale = w_scale = 1, output zero point)."""
    rng = np.random.default_rng(7)
    near = np.arange(-5, 6)
    ties = np.concatenate([2 * near + 1, 509 + near, 511 + 2 * near, -511 + near]).astype(np.int32)
    quarter = np.concatenate([4 * near + 2, 4 * near + 1, 1018 + near, 1022 + near])
    wide = rng.integers(-(2**24), 2**24, 200).astype(np.int32)  # float32-exact accumulators
    huge = np.array([2**31 - 1, -(2**31), 2**30, -(2**30), 2**24 + 1, -(2**24) - 1], np.int32)
    return {
        "halves: ties to even, clamp at 0 and 255": (ties, 2.0, 0),
        "quarters around 255": (quarter.astype(np.int32), 4.0, 0),
        "halves, zero point 128": (np.concatenate([ties, ties - 256]), 2.0, 128),
        "halves, zero point 255": (ties - 512, 2.0, 255),
        "random scale, wide accumulators": (wide, 3.7e4, 0),
        "random scale, zero point 77": (wide, 5.3e4, 77),
        "int32 extremes": (huge, 1.0, 10),
    }


REQUANTIZE = _requantize_cases()


@pytest.mark.parametrize("case", REQUANTIZE.values(), ids=REQUANTIZE.keys())
def test_requantize_equals_qlinearconv(c_kernels, case, tmp_path) -> None:
    """requantize() at the rounding and clamping boundaries, against QLinearConv's output.

    A 1x1 QLinearConv on one zero pixel with one output channel per accumulator: each
    channel's int32 bias is the accumulator, and the output is ORT's requantization of it.
    """
    _, int8 = c_kernels
    acc, y_scale, zero = case
    n = len(acc)
    inits = [
        _tensor("x_scale", np.float32(1)), _tensor("x_zero", np.uint8(0)),
        _tensor("w", np.ones((n, 1, 1, 1), np.int8)), _tensor("w_scale", np.ones(n, np.float32)),
        _tensor("w_zero", np.zeros(n, np.int8)), _tensor("y_scale", np.float32(y_scale)),
        _tensor("y_zero", np.uint8(zero)), _tensor("bias", acc),
    ]  # fmt: skip
    node = helper.make_node(
        "QLinearConv",
        ["x", "x_scale", "x_zero", "w", "w_scale", "w_zero", "y_scale", "y_zero", "bias"],
        ["y"],
    )
    session = _session(
        [node], [_io("x", TensorProto.UINT8, [1, 1, 1, 1])],
        [_io("y", TensorProto.UINT8, [1, n, 1, 1])], inits,
    )  # fmt: skip
    want = session.run(None, {"x": np.zeros((1, 1, 1, 1), np.uint8)})[0].reshape(-1)
    scales = multipliers(1.0, np.ones(n, np.float32), y_scale)
    got = np.full(n, 0xAB, np.uint8)
    int8.call_requantize(_ptr(acc), _ptr(scales), n, zero, _ptr(got))
    np.testing.assert_array_equal(got, want)


DENSE_Q = {"mnist 1600-10 zp0": (1600, 10, 0), "7-3 zp 9": (7, 3, 9), "333-17 zp 128": (333, 17, 128)}  # fmt: skip


@pytest.mark.parametrize("case", DENSE_Q.values(), ids=DENSE_Q.keys())
def test_dense_q_equals_qgemm(c_kernels, case, tmp_path) -> None:
    """The Q/DQ Gemm with a float output (ORT's QGemm), equal to the last bit."""
    _, int8 = c_kernels
    n, m, zx = case
    rng = np.random.default_rng(n + m)
    sx = np.float32(0.037)
    xq = rng.integers(0, 256, (1, n), dtype=np.uint8)
    wq = rng.integers(-127, 128, (m, n), dtype=np.int8)
    w_scale = rng.uniform(0.001, 0.01, m).astype(np.float32)
    bq = rng.integers(-20000, 20000, m, dtype=np.int32)
    dq = "DequantizeLinear"
    nodes = [
        helper.make_node(dq, ["xq", "sx", "zx"], ["x"]),
        helper.make_node(dq, ["wq", "sw", "zw"], ["w"], axis=0),
        helper.make_node(dq, ["bq", "sb", "zb"], ["b"], axis=0),
        helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1),
    ]
    inits = [
        _tensor("sx", sx), _tensor("zx", np.uint8(zx)), _tensor("wq", wq),
        _tensor("sw", w_scale), _tensor("zw", np.zeros(m, np.int8)), _tensor("bq", bq),
        _tensor("sb", (sx * w_scale).astype(np.float32)), _tensor("zb", np.zeros(m, np.int32)),
    ]  # fmt: skip
    session = _session(
        nodes, [_io("xq", TensorProto.UINT8, [1, n])], [_io("y", TensorProto.FLOAT, [1, m])],
        inits, tmp_path,
    )  # fmt: skip
    assert "QGemm" in _optimized_ops(tmp_path)
    want = session.run(None, {"xq": xq})[0][0]
    got = np.full(m, np.nan, np.float32)
    bias = fold_zero_point(wq, bq, zx)
    scales = multipliers(float(sx), w_scale)
    int8.call_dense_q(_ptr(xq), n, _ptr(wq), _ptr(bias), _ptr(scales), m, _ptr(got))
    np.testing.assert_array_equal(got, want)


def _bundled_input() -> tuple[Quant, float]:
    net = read_network(BUNDLED.model("int8"))
    assert net.input_quant is not None
    return net.input_quant, net.divisor


INPUTS = {
    "mnist.int8.onnx": _bundled_input,
    "1/255 zp 0": lambda: (Quant(1 / 255, 0, np.uint8), 255.0),
    "0.0078 zp 128": lambda: (Quant(0.0078, 128, np.uint8), 255.0),
    "coarse 0.1 zp 3": lambda: (Quant(0.1, 3, np.uint8), 255.0),
}


@pytest.mark.parametrize("make", INPUTS.values(), ids=INPUTS.keys())
def test_quantize_input_equals_quantizelinear(c_kernels, make) -> None:
    """The table lookup gives QuantizeLinear(Cast(pixel) / divisor) for every pixel value."""
    _, int8 = c_kernels
    quant, divisor = make()
    pixels = np.concatenate([np.arange(256), np.random.default_rng(5).integers(0, 256, 784)])
    pixels = pixels.astype(np.uint8)
    n = len(pixels)
    nodes = [
        helper.make_node("Cast", ["p"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["f", "d"], ["x"]),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
    ]
    inits = [
        _tensor("d", np.float32(divisor)), _tensor("s", np.float32(quant.scale)),
        _tensor("z", np.uint8(quant.zero_point)),
    ]  # fmt: skip
    session = _session(
        nodes, [_io("p", TensorProto.UINT8, [n])], [_io("q", TensorProto.UINT8, [n])], inits
    )
    want = session.run(None, {"p": pixels})[0]
    table = np.ascontiguousarray(input_table(quant, divisor), dtype=np.uint8)
    got = np.full(n, 0xAB, np.uint8)
    int8.call_quantize_input(_ptr(pixels), n, _ptr(table), _ptr(got))
    np.testing.assert_array_equal(got, want)
