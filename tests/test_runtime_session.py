"""Providers, sessions and the Classifier (runtime/session.py)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from helpers.models import digit, expected_probabilities, linear_model

from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.metadata import ModelMetadata
from mnist_edge.runtime.session import (
    MissingMetadataWarning,
    ModelError,
    ProviderError,
    SessionConfig,
    resolve_provider,
)

IMAGES = np.stack([digit(i) for i in range(12)])  # (12, 28, 28) uint8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return linear_model(tmp_path_factory.mktemp("m") / "linear.onnx")


def test_auto_picks_the_best_available():
    assert resolve_provider("auto", ["CPUExecutionProvider"]) == "CPUExecutionProvider"
    assert (
        resolve_provider("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
        == "CUDAExecutionProvider"
    )
    assert (
        resolve_provider("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
        == "CUDAExecutionProvider"
    )
    assert (
        resolve_provider("CPUExecutionProvider", ["CPUExecutionProvider"]) == "CPUExecutionProvider"
    )


def test_unavailable_provider_names_what_is_available_and_the_gpu_extra():
    with pytest.raises(ProviderError) as info:
        resolve_provider("cuda", ["CPUExecutionProvider"])
    message = str(info.value)
    assert "not available" in message and "cpu" in message and "[gpu]" in message


def test_unknown_provider_is_an_error():
    with pytest.raises(ProviderError, match="unknown provider 'gpu9'"):
        resolve_provider("gpu9", ["CPUExecutionProvider"])


def test_predictions_match_the_graph(model):
    clf = Classifier(model, provider="cpu")
    pred = clf.predict(IMAGES)
    want = expected_probabilities(IMAGES)
    np.testing.assert_allclose(pred.probabilities, want, rtol=1e-4, atol=1e-6)
    assert list(pred.indices) == list(want.argmax(axis=1))
    assert pred.labels == [str(i) for i in want.argmax(axis=1)]
    np.testing.assert_allclose(pred.confidences, want.max(axis=1), rtol=1e-4)
    assert clf.provider == "CPUExecutionProvider"


@pytest.mark.parametrize("n", [1, 7, 1000], ids=["b1", "b7", "b1000"])
def test_batch_sizes_run(model, n):
    clf = Classifier(model)
    images = np.resize(IMAGES, (n, 28, 28))
    assert clf.predict(images).probabilities.shape == (n, 10)


def test_float_and_channel_inputs_agree_with_uint8(model):
    clf = Classifier(model)
    a = clf.predict(IMAGES).probabilities
    b = clf.predict(IMAGES[:, None].astype(np.float32) / 255).probabilities
    np.testing.assert_array_equal(a, b)


def test_wrong_image_shape_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        Classifier(model).predict(np.zeros((2, 32, 32), np.uint8))


def test_static_batch_model_is_padded_and_chunked(tmp_path):
    path = linear_model(tmp_path / "static.onnx", batch=4)
    clf = Classifier(path)
    assert clf.static_batch == 4
    got = clf.predict(IMAGES[:10]).probabilities  # 4 + 4 + 2 (padded)
    np.testing.assert_allclose(got, expected_probabilities(IMAGES[:10]), rtol=1e-4, atol=1e-6)


def test_uint8_input_model(tmp_path):
    clf = Classifier(linear_model(tmp_path / "u8.onnx", input_dtype="uint8"))
    assert clf.metadata.preprocessing.input_dtype == "uint8"
    np.testing.assert_allclose(
        clf.predict(IMAGES).probabilities, expected_probabilities(IMAGES), rtol=1e-4, atol=1e-6
    )


def test_io_binding_gives_the_same_results(model):
    plain = Classifier(model, config=SessionConfig(io_binding=False)).predict(IMAGES)
    bound = Classifier(model, config=SessionConfig(io_binding=True)).predict(IMAGES)
    np.testing.assert_array_equal(plain.probabilities, bound.probabilities)


def test_labels_come_from_metadata(tmp_path):
    labels = tuple("abcdefghij")
    clf = Classifier(linear_model(tmp_path / "l.onnx", metadata=ModelMetadata(labels=labels)))
    assert set(clf.predict(IMAGES).labels) <= set(labels)


def test_model_without_metadata_warns_once_and_uses_mnist_defaults(tmp_path):
    path = linear_model(tmp_path / "foreign.onnx", metadata=None)
    with pytest.warns(MissingMetadataWarning, match="no mnist-edge metadata") as record:
        clf = Classifier(path)
    assert len(record) == 1
    assert clf.classes == tuple(str(i) for i in range(10))
    assert not clf.metadata.from_file


def test_missing_model_is_named(tmp_path):
    """The library names the file; the CLI adds how to make one (tests/test_infer_cli.py)."""
    with pytest.raises(ModelError, match=r"model file .*nope.onnx not found$"):
        Classifier(tmp_path / "nope.onnx")


def test_corrupt_model_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07garbage" * 20)
    with pytest.raises(ModelError, match="not a valid ONNX model") as info:
        Classifier(path)
    assert "\n" not in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="onnxruntime has no CUDA here",
)
def test_cuda_matches_cpu(model):
    gpu = Classifier(model, provider="cuda")
    assert gpu.provider == "CUDAExecutionProvider"
    np.testing.assert_allclose(
        gpu.predict(IMAGES).probabilities,
        Classifier(model).predict(IMAGES).probabilities,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "provider, words",
    [
        ("cuda", ["the gpu extra", "pip install '.[gpu]'", "onnxruntime-gpu"]),
        ("tensorrt", ["the gpu extra", "pip install '.[gpu]'", "onnxruntime-gpu"]),
        ("openvino", ["the openvino extra", "pip install '.[openvino]'", "onnxruntime-openvino"]),
        ("directml", ["pip install onnxruntime-directml", "no mnist-edge extra"]),
        ("qnn", ["pip install onnxruntime-qnn", "no mnist-edge extra"]),
        ("rocm", ["no mnist-edge extra"]),
    ],
)
def test_a_missing_provider_names_the_install_that_brings_it(provider, words, monkeypatch) -> None:
    from mnist_edge.runtime import extras

    monkeypatch.setattr(extras, "installed_ort_distributions", lambda: ["onnxruntime"])
    with pytest.raises(ProviderError) as info:
        resolve_provider(provider, available=["CPUExecutionProvider"])
    message = str(info.value)
    assert all(w in message for w in words), message
    if provider != "rocm":  # the builds share one folder: the installed one goes first
        assert "`pip uninstall -y onnxruntime`" in message, message
    assert provider == "openvino" or "openvino" not in message, message
