"""The bundled files the docs point a pip-only user at: ``bundled_model()`` and ``mnist-infer --list-models``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from mnist_edge.runtime import bundled_model, classify
from mnist_edge.runtime.bundled import bundled_models
from mnist_edge.runtime.cli import main
from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.layout import BUNDLED_NAMES

EXPECTED = {
    "fp32": ("mnist.onnx", "fp32", "image float32 [batch, 1, 28, 28]"),
    "int8": ("mnist.int8.onnx", "int8", "image float32 [batch, 1, 28, 28]"),
    "pixels": ("mnist.pixels.onnx", "fp32", "pixels uint8 [height, width]"),
    "pixels-int8": ("mnist.pixels.int8.onnx", "int8", "pixels uint8 [height, width]"),
}


def _digit_seven() -> np.ndarray:
    """A 7 drawn white on black, (64, 64) uint8."""
    picture = np.zeros((64, 64), np.uint8)
    picture[12:18, 14:50] = 255  # the bar
    for row in range(18, 54):  # the stem, slanting down to the left
        col = 46 - (row - 18) * 20 // 36
        picture[row, col - 3 : col + 3] = 255
    return picture


@pytest.mark.parametrize("name", list(EXPECTED), ids=list(EXPECTED))
def test_bundled_model_gives_a_file_that_runs_outside_the_clone(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no artifacts/, no images/: what a pip-only user has
    path = bundled_model(name)
    assert path.is_absolute() and path.is_file() and path.name == EXPECTED[name][0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if name.startswith("pixels"):
        probabilities, label = session.run(None, {"pixels": _digit_seven()})
        assert int(label) == 7 and probabilities.shape == (10,)
    else:
        assert classify([_digit_seven()], model=path)[0]["label"] == "7"


def test_the_pixels_files_metadata_is_beside_them() -> None:
    meta = json.loads((bundled_model("pixels").parent / "mnist.meta.json").read_text())
    assert meta["models"]["fp32"]["file"] == bundled_model("pixels").name
    assert meta["models"]["int8"]["file"] == bundled_model("pixels-int8").name


def test_default_is_fp32_and_unknown_names_are_refused() -> None:
    assert bundled_model() == bundled_model("fp32")
    with pytest.raises(
        ConfigError, match=r"no bundled model 'fp16'; the names are fp32, int8"
    ) as e:
        bundled_model("fp16")
    assert e.value.field == "name"


def test_bundled_models_are_described_from_the_files() -> None:
    models = bundled_models()
    assert [m.name for m in models] == list(BUNDLED_NAMES)
    for m in models:
        file, precision, graph_input = EXPECTED[m.name]
        assert (m.path.name, m.precision, m.input) == (file, precision, graph_input)
        assert m.size == m.path.stat().st_size > 10_000


def test_list_models_prints_every_file_and_needs_no_inputs() -> None:
    result = CliRunner().invoke(main, ["--list-models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "precision", "input", "size", "path"]
    for line, m in zip(lines[1:5], bundled_models(), strict=True):
        assert line.startswith(m.name + " ")
        assert m.precision in line and m.input in line
        assert f"{m.size / 1024:.1f} KiB" in line
        assert line.endswith(str(m.path))
    assert lines[5].endswith(str(bundled_model().parent / "mnist.meta.json"))
    assert len(lines) == 6


def test_list_models_wins_over_other_options_and_the_console_script_works() -> None:
    """Eager: inputs and a bad option after it do not matter; the installed command exits 0."""
    result = CliRunner().invoke(main, ["--list-models", "--model", "missing.onnx", "x.png"])
    assert result.exit_code == 0 and "pixels-int8" in result.output
    script = Path(sys.executable).with_name("mnist-infer")
    done = subprocess.run(
        [str(script), "--list-models"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert str(bundled_model("pixels-int8")) in done.stdout


def test_list_models_without_onnx_runtime_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pip install .`` without the cpu extra: the fix, not a traceback."""
    from mnist_edge.runtime import extras

    real = extras.importlib.util.find_spec
    monkeypatch.setattr(
        extras.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    result = CliRunner().invoke(main, ["--list-models"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: mnist-infer needs onnxruntime, which are not installed; install mnist-edge "
        "with the cpu extra (from a clone: pip install '.[cpu]')"
    ]
