"""The validator: graph checks and parity with tolerances, on a tiny untrained net built in code."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import pytest
import torch

from mnist_edge.export.onnx import torch_to_onnx
from mnist_edge.export.parity import ParityReport, Reference, Tolerance, open_session, run_session
from mnist_edge.export.spec import GraphSpec
from mnist_edge.export.verify import ValidationError, check_graph, raise_for_failures, validate
from mnist_edge.train.model import ConvNet, ProbabilityModel


@pytest.fixture(scope="module")
def net() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet().eval()


@pytest.fixture(scope="module")
def fp32(net: ConvNet) -> onnx.ModelProto:
    return torch_to_onnx(net, GraphSpec())


@pytest.fixture(scope="module")
def reference(net: ConvNet) -> Reference:
    gen = torch.Generator().manual_seed(1)
    images = (
        torch.randint(0, 256, (64, 1, 28, 28), generator=gen).float() / 255.0
    )  # (64, 1, 28, 28)
    labels = torch.randint(0, 10, (64,), generator=gen)
    return Reference.from_model(ProbabilityModel(net), images, labels)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_exported_graph_passes_every_check(fp32, reference):
    report = validate(fp32, reference, GraphSpec(), Tolerance(), name="m", precision="fp32")
    assert report.ok, report.failures
    assert report.input_shape == ["batch", 1, 28, 28]
    assert report.output_shape == ["batch", 10]
    assert report.max_abs_diff <= 1e-5
    assert report.accuracy == reference.accuracy
    assert report.agreement == 1.0


def test_graph_has_no_dropout_and_named_batch_axis(fp32):
    ops = {n.op_type for n in fp32.graph.node}
    assert "Dropout" not in ops
    assert fp32.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not any(n.metadata_props for n in fp32.graph.node)  # no exporter stack traces


def test_check_graph_collects_every_problem(fp32):
    bad = _copy(fp32)
    bad.graph.input[0].name = "pixels"  # dangling: nodes still read "image"
    bad.graph.node.append(onnx.helper.make_node("Dropout", ["probabilities"], ["dropped"]))
    bad.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    failures = check_graph(bad, GraphSpec())
    text = "\n".join(failures)
    assert "onnx.checker" in text
    assert "graph inputs are ['pixels']" in text
    assert "training-only nodes remain: Dropout" in text
    assert "weights stored outside the file" in text


def test_check_graph_rejects_wrong_interface(fp32):
    failures = check_graph(fp32, GraphSpec(fixed_batch=4, uint8_input=True))
    assert any("has type FLOAT, expected UINT8" in f for f in failures)
    assert any("has shape ['batch', 1, 28, 28], expected [4, 28, 28]" in f for f in failures)


def test_tampered_weights_fail_parity(fp32, reference):
    bad = _copy(fp32)
    weight = next(t for t in bad.graph.initializer if t.name.endswith("dense.weight"))
    values = onnx.numpy_helper.to_array(weight).copy()
    values[0] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    report = validate(
        bad, reference, GraphSpec(), Tolerance(max_abs_diff=1e-5), name="bad", precision="fp32"
    )
    assert not report.ok
    assert any("exceeds tolerance 1e-05" in f for f in report.failures)
    assert report.max_abs_diff > 1e-3


@pytest.mark.parametrize(
    ("tolerance", "expected"),
    [
        (Tolerance(max_abs_diff=1e-9), "exceeds tolerance"),
        (Tolerance(max_abs_diff=None, max_accuracy_drop=0.0, min_agreement=1.01), "argmax agrees"),
    ],
    ids=["max-diff", "agreement"],
)
def test_tolerances_are_applied(fp32, reference, tolerance, expected):
    noisy = Reference(
        reference.images, reference.labels, reference.probabilities + np.float32(1e-6)
    )
    report = validate(fp32, noisy, GraphSpec(), tolerance, name="m", precision="fp32")
    assert any(expected in f for f in report.failures), report.failures


def test_accuracy_drop_is_a_failure(fp32, reference):
    # A "PyTorch" that is right on every image; the untrained ONNX net is not.
    labels = (reference.probabilities.argmax(1) + 1) % 10
    perfect = Reference(reference.images, labels, np.eye(10, dtype=np.float32)[labels])
    report = validate(
        fp32, perfect, GraphSpec(), Tolerance(None, 0.002, 0.0), name="m", precision="int8"
    )
    assert report.reference_accuracy == 1.0
    assert any("points below PyTorch's 1.0000" in f for f in report.failures), report.failures


def test_validation_error_lists_all_failures():
    reports = [
        ParityReport("a.onnx", "fp32", 1, failures=["x bad"]),
        ParityReport("b.onnx", "int8", 1, failures=["y bad"]),
    ]
    with pytest.raises(ValidationError) as info:
        raise_for_failures(reports)
    assert info.value.failures == ["a.onnx: x bad", "b.onnx: y bad"]
    assert "a.onnx: x bad" in str(info.value) and "b.onnx: y bad" in str(info.value)
    raise_for_failures([ParityReport("ok.onnx", "fp32", 1)])  # no failures: no error


@pytest.mark.parametrize("rows", [1, 5, 64], ids=["one", "partial", "exact"])
def test_fixed_batch_pads_the_last_batch(net, reference, rows):
    spec = GraphSpec(fixed_batch=8, uint8_input=True)
    session = open_session(torch_to_onnx(net, spec).SerializeToString())
    probs = run_session(session, spec, reference.images[:rows])
    np.testing.assert_allclose(probs, reference.probabilities[:rows], atol=1e-5)


def test_uint8_feed_is_exact(reference):
    pixels = GraphSpec(uint8_input=True).feed(reference.images)
    assert pixels.dtype == np.uint8 and pixels.shape == (64, 28, 28)
    np.testing.assert_array_equal(pixels.astype(np.float32) / 255.0, reference.images[:, 0])


def test_unreadable_file_is_reported_not_raised(tmp_path, reference):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    report = validate(junk, reference, GraphSpec(), Tolerance(), name="junk", precision="fp32")
    assert not report.ok
    assert "cannot read" in report.failures[0] or "cannot load" in report.failures[0]


def test_export_order_is_conv_relu_pool_and_matches_the_training_order(net, fp32, reference):
    # Training pools before relu; the file runs Conv -> Relu -> MaxPool (fusable, one
    # QLinearConv per block in int8). The reference here is the training order.
    ops = [n.op_type for n in fp32.graph.node]
    assert ops[:6] == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool"]
    report = validate(fp32, reference, GraphSpec(), Tolerance(), name="m", precision="fp32")
    assert report.ok and report.max_abs_diff <= 1e-5
    x = torch.from_numpy(reference.images)  # (64, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net(x), net(x, relu_before_pool=True))  # they commute exactly
