"""End to end with the real convnet and real MNIST digits: PNG files give the tensor path's predictions.

Uses torch only here, to export a ``ConvNet`` with the project's exporter
(weights do not matter for parity); the runtime itself never imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mnist_edge.runtime.atomic import atomic_write_bytes
from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.cli import main
from mnist_edge.runtime.idx import write_idx
from mnist_edge.runtime.metadata import ModelMetadata
from mnist_edge.tools.samples import SamplesError, load_test_set, write_samples

N = 300


def _export(net, path: Path) -> Path:
    """``ConvNet`` -> ONNX with the project's exporter (dynamic ``batch``) and default metadata."""
    pytest.importorskip("torch")
    from mnist_edge.export.onnx import MODEL_VERSION, set_metadata, torch_to_onnx
    from mnist_edge.export.spec import GraphSpec

    model = torch_to_onnx(net, GraphSpec())
    set_metadata(model, ModelMetadata().to_props(), "test model", MODEL_VERSION)
    atomic_write_bytes(path, model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def convnet_onnx(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    from mnist_edge.train.model import ConvNet

    torch.manual_seed(0)
    return _export(ConvNet(), tmp_path_factory.mktemp("convnet") / "mnist.onnx")


@pytest.fixture(scope="module")
def trained_onnx(trained_checkpoint, tmp_path_factory) -> Path:
    """The briefly trained checkpoint from conftest, exported."""
    from mnist_edge.train.checkpoint import load_checkpoint

    return _export(
        load_checkpoint(trained_checkpoint).model,
        tmp_path_factory.mktemp("trained") / "mnist.onnx",
    )


@pytest.mark.slow
def test_mnist_pngs_give_exactly_the_tensor_paths_predictions(mnist, convnet_onnx, tmp_path):
    tensors = mnist.test_images[:N].numpy()  # (N, 1, 28, 28) float32 in [0, 1]
    pixels = np.rint(tensors[:, 0] * 255).astype(np.uint8)  # (N, 28, 28)
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(tmp_path / f"{i:04d}.png")
    want = Classifier(convnet_onnx).predict(tensors)

    for batch_size in ("1", "256"):
        result = CliRunner().invoke(
            main,
            [
                str(tmp_path),
                "--model",
                str(convnet_onnx),
                "--format",
                "jsonl",
                "--batch-size",
                batch_size,
            ],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert [Path(r["path"]).name for r in rows] == [f"{i:04d}.png" for i in range(N)]
        assert [r["label"] for r in rows] == want.labels
        assert np.array_equal(
            np.array([r["confidence"] for r in rows], np.float32), want.confidences
        )


@pytest.mark.slow
def test_photo_like_variants_get_the_digits_label(mnist, trained_onnx, tmp_path):
    """Inverted, coloured, larger, JPEG and transparent versions of real digits read as the digit."""
    pixels = np.rint(mnist.test_images[:40, 0].numpy() * 255).astype(np.uint8)
    labels = mnist.test_labels[:40].numpy()
    write_samples(tmp_path, pixels, labels, count=40, variant_count=40)
    result = CliRunner().invoke(
        main,
        [str(tmp_path), "--model", str(trained_onnx), "--format", "jsonl"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r["label"] for r in map(json.loads, result.stdout.splitlines())}
    for variant in ("inverted.png", "rgba.png", "plain.bmp"):  # same pixels after decoding: exact
        assert all(
            rows[f"{i:04d}-label{labels[i]}-{variant}"] == rows[f"{i:04d}-label{labels[i]}.png"]
            for i in range(40)
        )
    for variant in ("rgb.png", "large.png", "photo.jpg"):  # resampled: nearly all
        agree = sum(
            rows[f"{i:04d}-label{labels[i]}-{variant}"] == rows[f"{i:04d}-label{labels[i]}.png"]
            for i in range(40)
        )
        assert agree >= 36, (variant, agree)


def _fake_mnist(data_dir: Path, n: int = 30) -> np.ndarray:
    raw = data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 6:22, 10:18] = rng.integers(100, 255, (n, 16, 8))
    write_idx(raw / "t10k-images-idx3-ubyte", images)
    write_idx(raw / "t10k-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return images


def test_samples_need_data(tmp_path):
    with pytest.raises(SamplesError, match="not found; prepare the MNIST dataset there first"):
        load_test_set(tmp_path)


def test_samples_are_all_readable_and_variants_match_their_digit(tmp_path):
    from helpers.models import linear_model

    images = _fake_mnist(tmp_path / "data")
    loaded, labels = load_test_set(tmp_path / "data")
    out = tmp_path / "images"
    written = write_samples(out, loaded, labels, count=10, variant_count=2)
    assert len(written) == 10 + 2 * 6 and all(p.is_file() for p in written)
    model = linear_model(tmp_path / "m.onnx")
    result = CliRunner().invoke(
        main, [str(out), "--model", str(model), "--format", "jsonl"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert len(rows) == len(written)
    plain = Classifier(model).predict(images[:10])
    assert rows["0000-label0.png"]["label"] == plain.labels[0]
    # the inverted variant is inverted back and is the same digit exactly
    assert rows["0001-label1-inverted.png"]["label"] == plain.labels[1]
    assert rows["0001-label1-inverted.png"]["confidence"] == rows["0001-label1.png"]["confidence"]
