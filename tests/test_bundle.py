"""The bundled reference model (runtime/models): what ships, how it is made, and the default-model rule.

The files load in plain ONNX Runtime, their metadata names the checkpoint and
the reference recipe that made them, and on the test set (when data/ is there)
they score what their metadata says. ``make bundle`` (export/bundle.py) copies
only an export that passed validation. With no ``artifacts/`` in the working
folder, ``mnist-infer`` and :func:`mnist_edge.runtime.classify` use the bundle.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tomllib
from helpers.models import linear_model

from mnist_edge.runtime import layout
from mnist_edge.runtime.metadata import ModelMetadata

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"
BUNDLED = layout.BUNDLED
MODELS = ("fp32", "int8")


def _bundle_files() -> tuple[str, ...]:
    from mnist_edge.export.bundle import BUNDLE_FILES

    return BUNDLE_FILES


def _props(path: Path) -> dict[str, str]:
    return ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map


def _reference_recipe() -> dict:
    from mnist_edge.train.config import TrainConfig

    return json.loads(json.dumps(TrainConfig().recipe()))


@pytest.fixture(scope="module")
def test_set(mnist) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test digits uint8 (10000, 28, 28) and labels, read from data/ (numpy only).

    ``mnist`` (conftest) prepares data/ first, from the verified mirror when offline.
    """
    from mnist_edge.tools.samples import load_test_set

    return load_test_set(DATA_DIR)


@pytest.fixture(scope="module")
def pixels_pictures(test_set):
    """The pictures export validated the pixels-in files on (their metadata's test_images)."""
    pytest.importorskip("onnx")
    from mnist_edge.export.pixels_check import validation_pictures

    stated = int(_props(BUNDLED.model("fp32", pixels=True))["mnist_edge.test_images"])
    variants = 16  # pictures made of each test digit (export/pixels_check.py)
    pictures = validation_pictures(*test_set, stated // variants)
    assert len(pictures) == stated
    return pictures


# ---------------------------------------------------------------- what ships


@pytest.mark.parametrize("name", _bundle_files())
def test_bundled_file_is_there_and_packaged(name: str) -> None:
    assert (layout.BUNDLED_DIR / name).is_file()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["mnist_edge.runtime"]
    assert any(fnmatch.fnmatch(f"models/{name}", p) for p in patterns)


def test_bundled_models_load_in_plain_onnx_runtime() -> None:
    shapes = {}
    for pixels in (False, True):
        for precision in MODELS:
            path = BUNDLED.model(precision, pixels=pixels)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            inp = session.get_inputs()[0]
            shapes[path.name] = (inp.type, inp.shape)
            x = np.zeros((28, 28), np.uint8) if pixels else np.zeros((3, 1, 28, 28), np.float32)
            probs = session.run(["probabilities"], {inp.name: x})[0]
            assert probs.shape == ((10,) if pixels else (3, 10))
    assert shapes["mnist.onnx"] == ("tensor(float)", ["batch", 1, 28, 28])
    assert shapes["mnist.pixels.int8.onnx"] == ("tensor(uint8)", ["height", "width"])


def test_bundled_metadata_is_complete_and_names_checkpoint_and_recipe() -> None:
    meta = json.loads(BUNDLED.meta_json.read_text())
    sha = meta["source_sha256"]
    assert len(sha) == 64 and int(sha, 16) >= 0
    assert meta["recipe"] == _reference_recipe()
    for pixels in (False, True):
        for precision in MODELS:
            path = BUNDLED.model(precision, pixels=pixels)
            props = _props(path)
            parsed = ModelMetadata.from_props(props)
            assert parsed.from_file and parsed.precision == precision, path.name
            assert parsed.source_sha256 == sha, path.name  # one checkpoint made them all
            assert dict(parsed.recipe) == _reference_recipe(), path.name
            assert props["mnist_edge.validation"] == "passed", path.name
            assert parsed.labels == tuple(str(i) for i in range(10)) and parsed.dataset == "mnist"
            assert parsed.test_accuracy is not None and parsed.test_accuracy > 0.98
            assert int(props["mnist_edge.test_images"]) > 0
            assert parsed.model_version.endswith(sha[:12])
            assert {"torch", "onnx", "onnxruntime", "mnist_edge"} <= set(parsed.versions)
    for precision in MODELS:  # the web page reads the pixels-in files' numbers here
        entry = meta["models"][precision]
        pixels = BUNDLED.model(precision, pixels=True)
        assert entry["file"] == pixels.name and entry["bytes"] == pixels.stat().st_size


@pytest.mark.parametrize("precision", MODELS)
def test_bundled_model_scores_its_stated_accuracy_on_the_test_set(precision: str, test_set) -> None:
    from mnist_edge.runtime.classifier import Classifier

    images, labels = test_set
    clf = Classifier(BUNDLED.model(precision))
    assert clf.metadata.recipe["test_limit"] is None  # stated on the whole test set
    accuracy = float((clf.predict(images).indices == labels).mean())
    assert accuracy == pytest.approx(clf.metadata.test_accuracy, abs=5e-5)  # stated to 4 digits


@pytest.mark.parametrize("precision", MODELS)
def test_bundled_pixels_model_scores_its_stated_accuracy(precision: str, pixels_pictures) -> None:
    """The pixels-in files state their accuracy on export's validation pictures: those again."""
    from mnist_edge.export.pixels_check import open_picture_session

    path = BUNDLED.model(precision, pixels=True)
    props = _props(path)
    assert int(props["mnist_edge.test_images"]) == len(pixels_pictures)
    session = open_picture_session(path)
    got = np.array([session.run(["label"], {"pixels": p})[0] for p in pixels_pictures.pixels])
    accuracy = float((got == pixels_pictures.labels).mean())
    assert accuracy == pytest.approx(float(props["test_accuracy"]), abs=5e-5)


# ---------------------------------------------------------------- make bundle


def _export_report(source: Path, sha: str) -> dict:
    """The parts of export.json :func:`check_bundle` reads, as a passing export writes them."""
    files = []
    for name in _bundle_files()[:-1]:
        size = (source / name).stat().st_size
        files.append({"file": name, "written": True, "size_bytes": size, "parity": {"ok": True}})
    return {"ok": True, "failures": [], "checkpoint_sha256": sha, "files": files}


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    """A copy of the bundled files with the export report a passing export writes."""
    source = tmp_path / "artifacts"
    source.mkdir()
    for name in _bundle_files():
        shutil.copyfile(layout.BUNDLED_DIR / name, source / name)
    sha = json.loads((source / layout.META_JSON).read_text())["source_sha256"]
    (source / layout.EXPORT_REPORT).write_text(json.dumps(_export_report(source, sha)))
    return source


def test_bundle_copies_a_validated_export(export_dir: Path, tmp_path: Path) -> None:
    from mnist_edge.export.bundle import bundle

    dest = tmp_path / "models"
    report = bundle(export_dir, dest)
    assert [p.name for p in report.files] == list(_bundle_files())
    for name in _bundle_files():
        assert (dest / name).read_bytes() == (export_dir / name).read_bytes()
    assert report.test_accuracy["mnist.onnx"] > 0.98
    assert sorted(p.name for p in dest.iterdir()) == sorted(_bundle_files())  # no temp files


def _tamper(source: Path, case: str) -> str:
    """Break one thing in ``source``; returns words the refusal must contain."""
    report_path = source / layout.EXPORT_REPORT
    report = json.loads(report_path.read_text())
    if case == "export-failed":
        report["ok"] = False
        report["failures"] = ["mnist.int8.onnx: accuracy drop too large"]
        words = "says the export failed validation"
    elif case == "file-failed":
        report["files"][1]["parity"]["ok"] = False
        words = "mnist.int8.onnx: not validated"
    elif case == "file-changed":
        report["files"][0]["size_bytes"] += 1
        words = "mnist.onnx: changed since the export validated it"
    elif case == "missing":
        (source / "mnist.pixels.onnx").unlink()
        words = "mnist.pixels.onnx not found"
    elif case == "other-recipe":
        import onnx

        path = source / "mnist.int8.onnx"
        model = onnx.load(str(path))
        for prop in model.metadata_props:
            if prop.key == "mnist_edge.recipe":
                prop.value = json.dumps({**json.loads(prop.value), "epochs": 3})
        onnx.save(model, str(path))
        report["files"][1]["size_bytes"] = path.stat().st_size
        words = "mnist.int8.onnx: not the reference recipe (epochs=3)"
    else:  # other-checkpoint
        meta = json.loads((source / layout.META_JSON).read_text())
        meta["source_sha256"] = "0" * 64
        (source / layout.META_JSON).write_text(json.dumps(meta))
        words = "mnist.meta.json: exported from another checkpoint"
    report_path.write_text(json.dumps(report))
    return words


TAMPERED = [
    "export-failed",
    "file-failed",
    "file-changed",
    "missing",
    "other-recipe",
    "other-checkpoint",
]


@pytest.mark.parametrize("case", TAMPERED, ids=TAMPERED)
def test_bundle_refuses_what_failed_validation(export_dir: Path, tmp_path: Path, case: str) -> None:
    pytest.importorskip("onnx")
    from mnist_edge.export.bundle import BundleError, bundle

    words = _tamper(export_dir, case)
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "mnist.onnx").write_bytes(b"the bundle before")
    with pytest.raises(BundleError) as info:
        bundle(export_dir, dest)
    assert any(words in failure for failure in info.value.failures), info.value.failures
    assert [p.name for p in dest.iterdir()] == ["mnist.onnx"]  # nothing copied
    assert (dest / "mnist.onnx").read_bytes() == b"the bundle before"


def test_bundle_command_lists_every_reason_and_exits_1(export_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mnist_edge.export.bundle import main

    _tamper(export_dir, "export-failed")
    _tamper(export_dir, "missing")
    out = tmp_path / "models"
    result = CliRunner().invoke(main, ["--artifacts", str(export_dir), "--out-dir", str(out)])
    assert result.exit_code == 1
    assert "  - mnist.pixels.onnx not found" in result.output
    assert "  - " in result.output.split("not found", 1)[1]  # the second reason too
    assert "cannot be bundled" in result.output and not out.exists()


# ---------------------------------------------------------------- the default model


def test_default_model_is_artifacts_when_it_has_one_else_the_bundle(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert layout.model_path(None) == BUNDLED.model()
    assert layout.model_path(None, int8=True) == BUNDLED.model("int8")
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "mnist.int8.onnx").write_bytes(b"an int8 file alone")
    assert layout.model_path(None, int8=True) == BUNDLED.model("int8")  # never a mix
    linear_model(tmp_path / "artifacts" / "mnist.onnx")
    assert layout.model_path(None) == Path("artifacts/mnist.onnx")
    assert layout.model_path(None, int8=True) == Path("artifacts/mnist.int8.onnx")
    assert layout.model_path("m.onnx", int8=True) == Path("m.int8.onnx")


def _first_digit() -> tuple[np.ndarray, int]:
    """The first MNIST test digit when data/ is there, else a drawn one; with its label."""
    from mnist_edge.tools.samples import SamplesError, drawn_digits, load_test_set

    try:
        images, labels = load_test_set(DATA_DIR)
    except SamplesError:
        images, labels = drawn_digits(1)
    return images[0], int(labels[0])


def test_mnist_infer_works_in_an_empty_folder(tmp_path: Path) -> None:
    from PIL import Image

    image, label = _first_digit()
    Image.fromarray(image).save(tmp_path / "digit.png")
    script = Path(sys.executable).with_name("mnist-infer")
    proc = subprocess.run(
        [script, "digit.png", "--format", "jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["path"] == "digit.png" and record["label"] == str(label)
    assert f"model {BUNDLED.model()} (fp32)" in proc.stderr


def test_python_api_works_in_an_empty_folder(tmp_path: Path, monkeypatch) -> None:
    from mnist_edge.runtime import classify

    image, label = _first_digit()
    monkeypatch.chdir(tmp_path)
    (record,) = classify(image)
    assert record["label"] == str(label) and record["path"] == "<array 0>"
    (int8,) = classify([image], int8=True)
    assert int8["label"] == record["label"]
