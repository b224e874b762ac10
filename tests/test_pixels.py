"""The pixels-in model: mnist-infer's preprocessing inside the graph (export/pixels.py).

Graph tests use a tiny linear core built in code; agreement with the Python
path on real digits uses the shared briefly trained model; one small export
checks the files, their metadata, ``mnist.meta.json`` and the mobile report.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.models import digit, linear_core
from onnx import TensorProto, helper
from PIL import Image

from mnist_edge.export import pixels_export
from mnist_edge.export.artifacts import check_artifacts
from mnist_edge.export.config import ExportConfig
from mnist_edge.export.pipeline import export_onnx
from mnist_edge.export.pixels import (
    OPSET,
    PixelsModelError,
    build_pixels_model,
    build_preprocessing_model,
)
from mnist_edge.export.pixels_check import (
    PixelsTolerance,
    check_graph,
    check_pixels,
    validation_pictures,
)
from mnist_edge.export.verify import ValidationError
from mnist_edge.runtime.images import ImageOptions, preprocess
from mnist_edge.runtime.meta_json import MetaJson, MetaJsonError
from mnist_edge.runtime.metadata import ModelMetadata, Preprocessing

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
PRE = Preprocessing()


def tiny_core() -> onnx.ModelProto:
    """An opset-18 core: image (batch, 1, 28, 28) -> softmax(flatten @ W), with mnist-edge metadata."""
    return linear_core(ModelMetadata(source_sha256="ab" * 32))


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def pixels_session() -> ort.InferenceSession:
    return _session(build_pixels_model(tiny_core(), PRE))


@pytest.fixture(scope="module")
def core_session() -> ort.InferenceSession:
    return _session(tiny_core())


def _python_path(core: ort.InferenceSession, picture: np.ndarray, **options) -> np.ndarray:
    """mnist-infer: preprocess, / 255, the core -> (10,)."""
    prepared = preprocess(picture, ImageOptions(PRE, **options)).astype(np.float32) / 255.0
    return core.run(None, {"image": prepared[None, None]})[0][0]


def exact_fit_picture(height: int, width: int, box: tuple[int, int], background: int, seed: int):
    """A digit-like picture whose ink box is exactly ``box`` with 20 on its long side (no resize needed).

    Strokes at ``background + 200``, faint noise (under 10% of the contrast) everywhere.
    """
    rng = np.random.default_rng(seed)
    img = np.full((height, width), background, np.int32)
    img += rng.integers(0, 12, (height, width))  # faint noise: dropped or below the ink threshold
    bh, bw = box
    y, x = int(rng.integers(0, height - bh)), int(rng.integers(0, width - bw))
    ink = np.zeros((bh, bw), bool)
    ink[0, :] = ink[-1, :] = ink[:, 0] = True  # the box's edges pin its size
    ink[rng.random((bh, bw)) < 0.3] = True
    stroke = background + 120 + rng.integers(0, 80, (bh, bw))
    region = img[y : y + bh, x : x + bw]
    region[ink] = stroke[ink]
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the graph


def test_graph_is_standard_onnx_at_opset_18():
    model = build_pixels_model(tiny_core(), PRE)
    onnx.checker.check_model(model, full_check=True)
    assert {(o.domain or "", o.version) for o in model.opset_import} == {("", 18)}
    for node in model.graph.node:
        assert node.domain in ("", "ai.onnx"), node
        schema = onnx.defs.get_schema(node.op_type, OPSET, "")  # raises for unknown ops
        assert schema.since_version <= OPSET
    assert check_graph(model) == []
    resize = [n for n in model.graph.node if n.op_type == "Resize"]
    assert resize and all(
        helper.get_attribute_value(a) == 1
        for n in resize
        for a in n.attribute
        if a.name == "antialias"
    )


def test_interface_and_metadata_are_kept():
    core = tiny_core()
    model = build_pixels_model(core, PRE)
    (inp,) = model.graph.input
    assert inp.name == "pixels" and inp.type.tensor_type.elem_type == TensorProto.UINT8
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["height", "width"]
    assert [o.name for o in model.graph.output] == ["probabilities", "label"]
    assert {p.key: p.value for p in model.metadata_props} == {
        p.key: p.value for p in core.metadata_props
    }
    assert len(core.graph.input) == 1 and core.graph.input[0].name == "image"  # core untouched


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (1, 50), (50, 1), (2, 2), (3, 3), (28, 28), (500, 300), (37, 211)],
    ids=lambda s: f"{s[0]}x{s[1]}",
)
@pytest.mark.parametrize("polarity", ["dark-on-light", "light-on-dark"])
def test_any_size_and_polarity_runs(pixels_session, core_session, shape, polarity):
    rng = np.random.default_rng(sum(shape))
    picture = (rng.random(shape) < 0.2).astype(np.uint8) * 230
    if polarity == "dark-on-light":
        picture = 255 - picture
    probs, label = pixels_session.run(None, {"pixels": picture})
    assert probs.shape == (10,) and probs.dtype == np.float32
    assert label.shape == () and label.dtype == np.int64 and int(label) == int(probs.argmax())
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    if shape in ((1, 1), (28, 28)):  # no resize: the same numbers
        np.testing.assert_allclose(probs, _python_path(core_session, picture), atol=1e-6)


@pytest.mark.parametrize(
    "picture",
    [
        np.zeros((1, 1), np.uint8),
        np.zeros((40, 30), np.uint8),
        np.full((40, 30), 255, np.uint8),
        np.full((64, 64), 128, np.uint8),
        np.full((1, 80), 7, np.uint8),
    ],
    ids=["1x1-black", "black", "white", "grey", "1x80-flat"],
)
def test_blank_picture_gives_what_mnist_infer_gives(pixels_session, core_session, picture):
    assert not preprocess(picture).any()  # the Python path's blank digit
    digit_session = _session(build_preprocessing_model(PRE))
    assert not digit_session.run(None, {"pixels": picture})[0].any()
    probs, label = pixels_session.run(None, {"pixels": picture})
    expected = _python_path(core_session, picture)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert int(label) == int(expected.argmax())


@pytest.mark.parametrize("box", [(20, 20), (20, 9), (13, 20)], ids=["square", "tall", "wide"])
@pytest.mark.parametrize("background", [0, 30, 60], ids=["black", "dark-grey", "grey"])
@pytest.mark.parametrize("invert_picture", [False, True], ids=["as-drawn", "inverted"])
def test_preprocessing_equals_python_pixel_for_pixel(box, background, invert_picture):
    """Where no resizing is needed (ink box 20 on its long side) the graph is exact."""
    session = _session(build_preprocessing_model(PRE))
    for seed in range(4):
        picture = exact_fit_picture(61, 47, box, background, seed)
        if invert_picture:
            picture = 255 - picture
        expected = preprocess(picture, ImageOptions(PRE))
        got = session.run(None, {"pixels": picture})[0]
        np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("invert", ["always", "never", "auto"])
@pytest.mark.parametrize(
    "pre",
    [PRE, Preprocessing(fit=28, centering="bbox"), Preprocessing(foreground="black-on-white")],
    ids=["mnist", "fashion-style", "black-on-white"],
)
def test_options_follow_the_python_ones(invert, pre):
    session = _session(build_preprocessing_model(pre, invert))
    drawn = exact_fit_picture(70, 50, (pre.fit, pre.fit // 2), 30, 5)  # light on dark, no resize
    # pictures that come out light-on-dark after the inversion rule (else no digit is found)
    pictures = {"auto": [drawn, 255 - drawn], "always": [255 - drawn], "never": [drawn]}[invert]
    for picture in (digit(3), 255 - digit(4), *pictures):
        expected = preprocess(picture, ImageOptions(pre, invert=invert)).astype(np.float32)
        np.testing.assert_array_equal(session.run(None, {"pixels": picture})[0], expected)


@pytest.mark.parametrize("size", [(56, 56), (100, 80), (300, 300), (13, 9)], ids=str)
def test_resized_digits_stay_close_to_python(size):
    """Resize (cubic, antialiased) stands in for PIL's LANCZOS: a few grey levels apart on average."""
    session = _session(build_preprocessing_model(PRE))
    diffs = []
    for seed in range(6):
        picture = np.asarray(Image.fromarray(digit(seed)).resize(size, Image.Resampling.BICUBIC))
        expected = preprocess(picture).astype(np.float32)
        diffs.append(np.abs(session.run(None, {"pixels": picture})[0] - expected).mean())
    assert np.mean(diffs) < 2.0, diffs


def test_bad_core_and_arguments_are_refused():
    core = tiny_core()
    with pytest.raises(PixelsModelError, match="invert must be one of"):
        build_pixels_model(core, PRE, invert="sometimes")
    uint8_core = tiny_core()
    uint8_core.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    with pytest.raises(PixelsModelError, match="must be float32"):
        build_pixels_model(uint8_core, PRE)
    renamed = tiny_core()
    renamed.graph.input[0].name = "x"
    with pytest.raises(PixelsModelError, match="must take 'image'"):
        build_pixels_model(renamed, PRE)


def test_graph_check_catches_custom_ops():
    model = build_pixels_model(tiny_core(), PRE)
    model.graph.node.append(
        helper.make_node("Gelu", ["probabilities"], ["extra"], domain="com.microsoft")
    )
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert any("non-standard operators: com.microsoft:Gelu" in f for f in check_graph(model))


# ---------------------------------------------------------------- mnist.meta.json


def test_meta_json_round_trip_and_errors():
    text = json.dumps(
        {
            "format": 1,
            "dataset": "mnist",
            "labels": [str(i) for i in range(10)],
            "model_version": "1+abc",
            "source_sha256": "ab" * 32,
            "recipe": {"epochs": 15},
            "versions": {"onnx": "1"},
            "models": {
                "fp32": {
                    "file": "mnist.pixels.onnx",
                    "bytes": 10,
                    "test_accuracy": 0.99,
                    "agreement": 0.998,
                    "ort_file": None,
                    "input": "pixels",
                    "outputs": ["probabilities", "label"],
                }
            },
        }
    )
    meta = MetaJson.from_json(text)
    assert meta.models["fp32"].file == "mnist.pixels.onnx" and meta.models["fp32"].ort_file is None
    assert json.loads(meta.to_json()) == json.loads(text)
    with pytest.raises(MetaJsonError, match="format 2"):
        MetaJson.from_json(text.replace('"format": 1', '"format": 2'))
    with pytest.raises(MetaJsonError, match="'bytes' is missing or not int"):
        MetaJson.from_json(text.replace('"bytes": 10', '"bytes": "10"'))
    with pytest.raises(MetaJsonError, match="not JSON"):
        MetaJson.from_json("{")


# ---------------------------------------------------------------- with the trained model


@pytest.fixture(scope="module")
def trained_core(trained_checkpoint) -> onnx.ModelProto:
    from mnist_edge.export.onnx import torch_to_onnx
    from mnist_edge.export.spec import GraphSpec
    from mnist_edge.train.checkpoint import load_checkpoint

    return torch_to_onnx(load_checkpoint(trained_checkpoint).model, GraphSpec())


@pytest.mark.slow
def test_agrees_with_mnist_infer_on_real_digits(trained_core, mnist):
    digits = np.rint(mnist.test_images[:40, 0].numpy() * 255).astype(np.uint8)
    pictures = validation_pictures(digits, mnist.test_labels[:40].numpy(), 40)
    assert len(pictures) == 40 * 16 and {"test-300-inverted", "off-centre"} <= set(
        pictures.variants
    )
    report = check_pixels(
        build_pixels_model(trained_core, PRE),
        trained_core.SerializeToString(),
        pictures,
        PRE,
        PixelsTolerance(),
        name="mnist.pixels.onnx",
        precision="fp32",
    )
    assert report.ok, report.failures
    assert report.agreement >= 0.995
    assert abs(report.accuracy - report.reference_accuracy) <= 0.002
    assert report.reference_accuracy > 0.9  # the pictures are readable digits
    assert report.by_variant["test-28"]["agreement"] == 1.0  # pass-through: the same input


@pytest.fixture(scope="module")
def exported(trained_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("pixels-artifacts")
    config = ExportConfig(
        data_dir=DATA_DIR, test_limit=200, pixels_images=15, ort=True, int8_max_drop=0.02
    )
    return out, export_onnx(trained_checkpoint, out, config), config


@pytest.mark.slow
def test_export_writes_pixels_files_with_metadata(exported, trained_checkpoint):
    out, report, _ = exported
    for precision, name in (("fp32", "mnist.pixels.onnx"), ("int8", "mnist.pixels.int8.onnx")):
        session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        props = session.get_modelmeta().custom_metadata_map
        meta = ModelMetadata.from_props(props)
        assert meta.from_file and meta.precision == precision
        assert meta.source_sha256 == hashlib.sha256(trained_checkpoint.read_bytes()).hexdigest()
        assert props["mnist_edge.validation"] == "passed"
        assert "pixels" in props["mnist_edge.input"]
        probs, label = session.run(None, {"pixels": np.full((90, 70), 255, np.uint8)})
        assert probs.shape == (10,) and label.shape == ()
        twin = ort.InferenceSession(str(out / name.replace(".onnx", ".ort")))
        picture = 255 - np.asarray(Image.fromarray(digit(1)).resize((64, 64)))
        assert int(twin.run(None, {"pixels": picture})[1]) == int(
            session.run(None, {"pixels": picture})[1]
        )
    ops = (out / "mnist.required_operators.config").read_text()
    assert "Resize" in ops and "TopK" in ops
    assert report.meta_json == out / "mnist.meta.json"


@pytest.mark.slow
def test_meta_json_describes_the_written_files(exported, trained_checkpoint):
    out, report, _ = exported
    raw = json.loads((out / "mnist.meta.json").read_text())
    assert set(raw) == {
        "format", "dataset", "labels", "model_version", "source_sha256", "recipe", "versions", "models",
    }  # fmt: skip
    meta = MetaJson.from_json((out / "mnist.meta.json").read_text())
    assert (
        meta.source_sha256 == hashlib.sha256(trained_checkpoint.read_bytes()).hexdigest()
        and meta.dataset == "mnist"
    )
    assert meta.labels == tuple(str(i) for i in range(10))
    assert set(meta.models) == {"fp32", "int8"}
    for precision, entry in meta.models.items():
        path = out / entry.file
        assert entry.bytes == path.stat().st_size
        assert entry.ort_file == path.with_suffix(".ort").name and (out / entry.ort_file).is_file()
        assert (entry.input, entry.outputs) == ("pixels", ("probabilities", "label"))
        parity = next(f.parity for f in report.files if f.path == path)
        assert entry.agreement == pytest.approx(parity.agreement) and entry.agreement >= 0.995
        assert entry.test_accuracy == pytest.approx(parity.accuracy)
        assert precision in ("fp32", "int8")


@pytest.mark.slow
def test_export_json_records_mobile_usability(exported):
    out, _, _ = exported
    files = {f["file"]: f for f in json.loads((out / "export.json").read_text())["files"]}
    for name in ("mnist.onnx", "mnist.int8.onnx", "mnist.pixels.onnx", "mnist.pixels.int8.onnx"):
        mobile = files[name]["mobile"]
        assert set(mobile["as_is"]) == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}
        for coverage in (*mobile["as_is"].values(), *mobile["fixed_shapes"].values()):
            assert 0 <= coverage["supported_nodes"] <= coverage["nodes"]
            assert coverage["verdict"] in ("YES", "MAYBE", "NO")
    # the dynamic batch axis keeps NNAPI off the fp32 file; fixed, it takes it all
    fp32 = files["mnist.onnx"]["mobile"]
    assert fp32["dynamic_inputs"] == ["image"]
    assert fp32["as_is"]["NNAPI"]["supported_nodes"] == 0
    assert fp32["fixed_shapes"]["NNAPI"]["percent"] == 100.0
    assert files["mnist.pixels.onnx"]["pixels"] and not files["mnist.onnx"]["pixels"]


@pytest.mark.slow
def test_make_parity_rechecks_the_pixels_files(exported, trained_checkpoint):
    out, _, config = exported
    reports = {r.name: r for r in check_artifacts(trained_checkpoint, out, config)}
    for name in ("mnist.pixels.onnx", "mnist.pixels.int8.onnx", "mnist.pixels.ort"):
        assert reports[name].ok and reports[name].images == 15 * 16, reports[name].failures


@pytest.mark.slow
def test_export_refuses_a_broken_pixels_graph(trained_checkpoint, tmp_path, monkeypatch):
    real = pixels_export.build_pixels_model

    def never_inverts(core: onnx.ModelProto, pre: Preprocessing) -> onnx.ModelProto:
        return real(core, pre, invert="never")  # dark-on-light pictures come out wrong

    monkeypatch.setattr(pixels_export, "build_pixels_model", never_inverts)
    config = ExportConfig(data_dir=DATA_DIR, test_limit=100, pixels_images=10, int8=False)
    with pytest.raises(ValidationError) as info:
        export_onnx(trained_checkpoint, tmp_path / "out", config)
    assert any(
        f.startswith("mnist.pixels.onnx: label agrees with mnist-infer's Python path on")
        for f in info.value.failures
    ), info.value.failures
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
