"""int8 quantization: the calibration reader and the QDQ graph it produces (tiny net built in code)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from mnist_edge.export.onnx import torch_to_onnx
from mnist_edge.export.parity import open_session, run_session
from mnist_edge.export.quantize import ImageCalibrationReader, QuantizeConfig, quantize_int8
from mnist_edge.export.spec import GraphSpec
from mnist_edge.train.model import ConvNet


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (250, 1, 28, 28)) / 255.0).astype(np.float32)  # (250, 1, 28, 28)


@pytest.fixture(scope="module")
def fp32() -> onnx.ModelProto:
    torch.manual_seed(0)
    return torch_to_onnx(ConvNet().eval(), GraphSpec())


@pytest.fixture(scope="module")
def int8(fp32, images) -> onnx.ModelProto:
    return quantize_int8(fp32, images, GraphSpec())


def _drain(reader: ImageCalibrationReader) -> list[dict[str, np.ndarray]]:
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch)
    return batches


@pytest.mark.parametrize(
    ("spec", "batch_size", "shape", "dtype", "count"),
    [
        (GraphSpec(), 100, (100, 1, 28, 28), np.float32, 2),  # the 50 left over are dropped
        (GraphSpec(), 1000, (250, 1, 28, 28), np.float32, 1),  # batch capped at the image count
        (GraphSpec(fixed_batch=8), 100, (8, 1, 28, 28), np.float32, 31),
        (GraphSpec(uint8_input=True), 125, (125, 28, 28), np.uint8, 2),
    ],
    ids=["float", "capped", "fixed-batch", "uint8"],
)
def test_reader_yields_whole_batches_in_the_graph_format(
    images, spec, batch_size, shape, dtype, count
):
    reader = ImageCalibrationReader(images, spec, batch_size)
    batches = _drain(reader)
    assert len(batches) == count
    assert all(
        list(b) == ["image"] and b["image"].shape == shape and b["image"].dtype == dtype
        for b in batches
    )
    reader.rewind()
    assert len(_drain(reader)) == count


def test_quantized_graph_is_qdq_with_per_channel_7bit_weights(int8):
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 5
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in int8.graph.initializer}
    int8_weights = [a for a in inits.values() if a.dtype == np.int8 and a.ndim >= 2]
    assert {w.shape[0] for w in int8_weights} >= {32, 64, 10}  # both convs and the dense layer
    assert all(
        np.abs(w.astype(int)).max() == 64 for w in int8_weights
    )  # reduce_range: 7 bits, symmetric
    conv_dq = [
        n
        for n in int8.graph.node
        if n.op_type == "DequantizeLinear"
        and inits.get(n.input[0]) is not None
        and inits[n.input[0]].dtype == np.int8
        and inits[n.input[0]].ndim == 4
    ]
    assert conv_dq and all(inits[n.input[1]].shape[0] > 1 for n in conv_dq)  # one scale per channel


def test_softmax_sees_float_logits(int8):
    producer = {o: n for n in int8.graph.node for o in n.output}
    softmax = next(n for n in int8.graph.node if n.op_type == "Softmax")
    assert producer[softmax.input[0]].op_type == "Gemm"  # no Q/DQ on the logits


def test_quantize_leaves_its_input_untouched(fp32, images):
    before = fp32.SerializeToString()
    quantize_int8(fp32, images, GraphSpec(), QuantizeConfig(calibration_images=100))
    assert fp32.SerializeToString() == before


def test_quantized_model_runs_and_tracks_fp32(fp32, int8, images):
    spec = GraphSpec()
    p32 = run_session(open_session(fp32.SerializeToString()), spec, images)
    p8 = run_session(open_session(int8.SerializeToString()), spec, images)
    assert p8.shape == (250, 10) and p8.dtype == np.float32
    np.testing.assert_allclose(p8.sum(1), 1.0, atol=1e-5)
    assert np.abs(p8 - p32).max() < 0.05


def test_too_few_calibration_images_is_an_error(fp32, images):
    with pytest.raises(ValueError, match="fewer than one batch"):
        quantize_int8(fp32, images[:3], GraphSpec(fixed_batch=8))
