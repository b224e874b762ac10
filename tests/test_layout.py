"""The artifact layout (runtime/layout.py): one owner for every file name."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_edge.runtime.layout import Artifacts, int8_sibling, model_name


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({}, "mnist.onnx"),
        ({"precision": "int8"}, "mnist.int8.onnx"),
        ({"fixed_batch": 8, "uint8_input": True}, "mnist.batch8.uint8.onnx"),
        ({"precision": "int8", "fixed_batch": 1, "suffix": ".ort"}, "mnist.int8.batch1.ort"),
        ({"pixels": True}, "mnist.pixels.onnx"),
        ({"pixels": True, "precision": "int8"}, "mnist.pixels.int8.onnx"),
    ],
    ids=["fp32", "int8", "edge-variant", "ort", "pixels", "pixels-int8"],
)
def test_model_names(kwargs, name) -> None:
    assert model_name(**kwargs) == name


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of fp32, int8"):
        model_name("fp16")


def test_artifacts_folder_paths(tmp_path: Path) -> None:
    art = Artifacts(tmp_path)
    assert art.checkpoint == tmp_path / "model.pt"
    assert art.resume == tmp_path / "last.pt"
    assert art.model("int8") == tmp_path / "mnist.int8.onnx"
    assert Artifacts().model() == Path("artifacts/mnist.onnx")


def test_int8_sibling() -> None:
    assert int8_sibling("models/m.onnx") == Path("models/m.int8.onnx")
    assert int8_sibling("mnist.pixels.onnx") == Path("mnist.pixels.int8.onnx")


VARIANTS = [
    {},
    {"fixed_batch": 8},
    {"uint8_input": True},
    {"fixed_batch": 1, "uint8_input": True},
    {"pixels": True},
    {"suffix": ".ort"},
    {"fixed_batch": 8, "uint8_input": True, "suffix": ".ort"},
]


@pytest.mark.parametrize("kwargs", VARIANTS, ids=[model_name(**k) for k in VARIANTS])
def test_the_int8_sibling_is_the_file_export_writes(kwargs) -> None:
    fp32, int8 = model_name("fp32", **kwargs), model_name("int8", **kwargs)
    assert int8_sibling(f"models/{fp32}") == Path(f"models/{int8}")


@pytest.mark.parametrize(
    "name", ["m.int8.onnx", "mnist.pixels.int8.onnx", "mnist.int8.batch8.onnx", "mnist.int8.ort"]
)
def test_an_int8_file_is_its_own_int8_sibling(name) -> None:
    assert int8_sibling(f"models/{name}") == Path(f"models/{name}")


@pytest.mark.parametrize("name", ["model", "model.bin", "mnist.onnx.bak"])
def test_a_name_that_is_no_model_file_names_no_int8_file(name) -> None:
    from mnist_edge.runtime.errors import ModelError

    with pytest.raises(ModelError, match=r"does not end in \.onnx or \.ort") as info:
        int8_sibling(f"models/{name}")
    assert info.value.field == "model"


def test_model_path_is_what_the_clis_run(tmp_path, monkeypatch) -> None:
    from mnist_edge.runtime.layout import model_path

    monkeypatch.chdir(tmp_path)  # an export here (tests/test_bundle.py: without one)
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "mnist.onnx").write_bytes(b"an export")
    assert model_path(None) == Path("artifacts/mnist.onnx")
    assert model_path(None, int8=True) == Path("artifacts/mnist.int8.onnx")
    assert model_path("m/x.onnx") == Path("m/x.onnx")
    assert model_path("m/x.onnx", int8=True) == Path("m/x.int8.onnx")
