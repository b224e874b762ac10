"""``mnist_edge.runtime.classify``: one call, the records ``mnist-infer --format jsonl`` prints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.models import digit, expected_probabilities, linear_model
from PIL import Image

import mnist_edge
import mnist_edge.runtime
from mnist_edge.runtime import classify
from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.cli import main
from mnist_edge.runtime.errors import ConfigError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return linear_model(tmp_path_factory.mktemp("model") / "mnist.onnx")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of pictures of several kinds, a .npy stack and a file that is no picture."""
    root = tmp_path_factory.mktemp("inputs")
    Image.fromarray(digit(0)).save(root / "0.png")
    Image.fromarray(255 - digit(1)).resize((90, 70)).save(root / "1-large-inverted.png")
    Image.fromarray(np.repeat(digit(2)[..., None], 3, axis=2)).save(root / "2-rgb.jpg")
    np.save(root / "stack.npy", np.stack([digit(3), digit(4)]))
    (root / "text.png").write_text("not a picture")
    return root


def _label(image: np.ndarray) -> str:
    return str(int(expected_probabilities(image[None])[0].argmax()))


def test_versions() -> None:
    assert mnist_edge.__version__ == mnist_edge.runtime.__version__
    assert mnist_edge.__version__[0].isdigit()


@pytest.mark.parametrize("top_k", [0, 3], ids=["plain", "top-k"])
def test_same_records_as_mnist_infer_jsonl(model, inputs, top_k) -> None:
    paths = [str(inputs), str(inputs / "0.png"), str(inputs / "missing.png")]
    args = [*paths, "--model", str(model), "--format", "jsonl", "--top-k", str(top_k or 1)]
    cli = CliRunner().invoke(main, args if top_k else args[:-2])
    assert cli.exit_code == 1  # text.png and missing.png fail
    expected = [json.loads(line) for line in cli.stdout.splitlines()]
    got = classify(paths, model=model, top_k=top_k)
    assert got == expected
    assert len(got) == 4 + 2 + 1 + 1  # the folder's 3 pictures, 2 stacked, 1 broken; then 2 more


def test_arrays_are_pictures_or_stacks(model) -> None:
    d0, d1, d2 = digit(0), digit(1), digit(2)
    records = classify(
        [d0, d0.astype(np.float32) / 255, np.stack([d1, d2]), np.stack([d1, d2])[:, None]],
        model=model,
    )
    assert [r["path"] for r in records] == [
        "<array 0>",
        "<array 1>",
        "<array 2>[0]",
        "<array 2>[1]",
        "<array 3>[0]",
        "<array 3>[1]",
    ]
    assert records[0] == {**records[1], "path": "<array 0>"}  # float in [0, 1] is the same picture
    assert [r["label"] for r in records] == [_label(d) for d in (d0, d0, d1, d2, d1, d2)]


def test_a_large_light_picture_array_is_made_mnist_style(model, inputs) -> None:
    picture = np.asarray(Image.open(inputs / "1-large-inverted.png"))
    (from_array,) = classify(picture, model=model)
    (from_file,) = classify(str(inputs / "1-large-inverted.png"), model=model)
    assert from_array["label"] == from_file["label"]  # one preprocessing for both
    assert from_array["confidence"] == from_file["confidence"]


def test_bad_arrays_are_error_records(model) -> None:
    records = classify([np.zeros((5, 5, 3), np.uint8), np.zeros(7), digit(0)], model=model)
    assert "colour picture" in records[0]["error"]
    assert "is not images" in records[1]["error"]
    assert records[2]["label"] == _label(digit(0))


def test_an_open_classifier_is_reused(model) -> None:
    clf = Classifier(model)
    assert classify([digit(5)], model=clf)[0]["label"] == _label(digit(5))


def test_invert_and_top_k_are_checked(model) -> None:
    with pytest.raises(ConfigError, match="invert"):
        classify([digit(0)], model=model, invert="sometimes")
    with pytest.raises(ConfigError, match="top_k"):
        classify([digit(0)], model=model, top_k=-1)
    (never,) = classify([255 - digit(7)], model=model, invert="never")
    assert never["label"] == _label(255 - digit(7))


@pytest.mark.parametrize(
    "top_k", [11, -1, 2.5, True, "3"], ids=["11", "negative", "float", "bool", "text"]
)
def test_top_k_outside_0_to_the_classes_is_refused_not_cut(model, top_k) -> None:
    message = f"top_k must be 0 (none) to 10 (the model's classes), not {top_k!r}"
    with pytest.raises(ConfigError) as info:
        classify([digit(0)], model=model, top_k=top_k)
    assert str(info.value) == message and info.value.field == "top_k"
    predictions = Classifier(model).predict(digit(0)[None])
    with pytest.raises(ConfigError) as info:
        predictions.records(top_k)
    assert str(info.value) == message
    (every,) = classify([digit(0)], model=model, top_k=10)
    assert sorted(t["label"] for t in every["top_k"]) == [str(i) for i in range(10)]


def test_max_pixels_refuses_bigger_picture_files(model, tmp_path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(digit(3)).resize((60, 50)).save(path)  # 3,000 pixels
    (refused,) = classify(path, model=model, max_pixels=2999)
    assert "60x50 = 3,000 pixels, over the limit of 2,999 pixels" in refused["error"]
    (taken,) = classify(path, model=model, max_pixels=3000)
    assert taken["label"] == classify(path, model=model)[0]["label"]
    with pytest.raises(ConfigError, match="max_pixels must be a whole number >= 1, not 0"):
        classify(path, model=model, max_pixels=0)


def test_pipeline_takes_none_for_the_default_model_and_refuses_what_is_no_path(
    model, tmp_path, monkeypatch
) -> None:
    from mnist_edge.runtime.layout import model_path
    from mnist_edge.runtime.session import ModelError
    from mnist_edge.runtime.stream import Pipeline, PipelineConfig

    monkeypatch.chdir(tmp_path)  # no artifacts/ here: the bundled model
    Image.fromarray(digit(2)).save(tmp_path / "2.png")
    with Pipeline(None, "2.png", PipelineConfig(workers=0)) as pipeline:  # one path: one input
        assert pipeline.classifier.path == model_path(None)
        assert [r.path for r in pipeline] == ["2.png"]
    for bad in (42, ["m.onnx"]):
        with pytest.raises(ModelError, match="model must be the path of an ONNX file"):
            Pipeline(bad, ["2.png"], PipelineConfig(workers=0))
    with pytest.raises(ModelError, match="model must be the path of an ONNX file"):
        Classifier(None)


def test_a_missing_model_raises(tmp_path) -> None:
    from mnist_edge.runtime.session import ModelError

    with pytest.raises(ModelError):
        classify([digit(0)], model=tmp_path / "none.onnx")


def test_a_pixels_in_model_gets_the_pictures_as_they_are(inputs) -> None:
    """The bundled mnist.pixels.onnx: same labels as the batched file on the same inputs."""
    from mnist_edge.runtime.layout import BUNDLED
    from mnist_edge.tools.samples import drawn_digits

    images, labels = drawn_digits(4)
    pictures = [
        255 - images[0],
        np.asarray(Image.fromarray(images[1]).resize((80, 80))),
        images[2:],
    ]
    fp32 = classify(pictures, model=BUNDLED.model())
    pixels = classify(pictures, model=BUNDLED.model("fp32", pixels=True))
    assert [r["path"] for r in pixels] == [r["path"] for r in fp32]
    assert [r["label"] for r in pixels] == [r["label"] for r in fp32] == [str(x) for x in labels]
    with pytest.raises(ConfigError, match="pixels-in"):
        classify(pictures, model=BUNDLED.model("fp32", pixels=True), invert="never")
