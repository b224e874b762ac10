"""``mnist-infer`` on a pixels-in model: each picture goes to the graph as it is, the records keep their shape."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.models import digit, pixels_model
from PIL import Image

from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.cli import main as mnist_infer
from mnist_edge.runtime.images import decode_image

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return pixels_model(tmp_path_factory.mktemp("pixels") / "mnist.pixels.onnx")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Pictures of several sizes and both polarities, and one file that is not a picture."""
    out = tmp_path_factory.mktemp("pictures")
    for i in range(12):
        img = digit(i)
        if i % 3 == 1:
            img = np.kron(255 - img, np.ones((3, 2), np.uint8))  # larger, dark on light
        Image.fromarray(img, mode="L").save(out / f"{i:02d}.png")
    (out / "broken.png").write_bytes(b"not a picture")
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("workers", ["0", "2"], ids=["in-process", "workers"])
def test_pixels_model_labels_every_picture_as_the_graph_does(model, folder, tmp_path, workers):
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(
        mnist_infer,
        [
            str(folder),
            "--model",
            str(model),
            "--workers",
            workers,
            "-o",
            str(out),
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 1, result.output  # the broken file fails, the others are labelled
    rows = _rows(out)
    assert len(rows) == 13 and list(rows[0]) == ["path", "label", "confidence", "error"]
    broken = [r for r in rows if r["path"].endswith("broken.png")]
    assert len(broken) == 1 and broken[0]["label"] == ""
    clf = Classifier(model)
    for row in rows:
        if row["path"].endswith("broken.png"):
            continue
        want = clf.classify_picture(decode_image(row["path"]))
        assert row["label"] == want.labels[0]
        assert float(row["confidence"]) == pytest.approx(float(want.confidences[0]), abs=1e-4)


def test_pixels_model_reads_arrays_image_by_image(model, tmp_path):
    images = np.stack([digit(i) for i in range(5)])  # (5, 28, 28) uint8
    np.save(tmp_path / "digits.npy", images)
    result = CliRunner().invoke(
        mnist_infer,
        [str(tmp_path / "digits.npy"), "--model", str(model), "--format", "jsonl", "-q"],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    clf = Classifier(model)
    assert [r["path"] for r in records] == [f"{tmp_path / 'digits.npy'}[{i}]" for i in range(5)]
    assert [r["label"] for r in records] == [clf.classify_picture(img).labels[0] for img in images]


def test_pixels_model_refuses_a_forced_inversion(model, folder):
    result = CliRunner().invoke(
        mnist_infer, [str(folder), "--model", str(model), "--invert", "never"]
    )
    assert result.exit_code == 2
    assert "--invert" in result.output and "pixels-in" in result.output
