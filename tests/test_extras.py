"""Commands name the extra they lack instead of failing with an import traceback."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mnist_edge.runtime import extras


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch):
    """Make the given top-level modules look uninstalled."""

    def hide(*names: str) -> None:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            extras.importlib.util,
            "find_spec",
            lambda name, *a: None if name in names else real(name, *a),
        )

    return hide


def test_nothing_is_reported_when_every_module_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name, *a: object())
    for extra in extras.EXTRAS:
        assert extras.missing_modules(extra) == []
    extras.require_extras("mnist-export", "export", "cpu")  # does not raise


def test_missing_extra_names_modules_and_the_fix(without) -> None:
    without("torch", "onnx")
    with pytest.raises(extras.MissingExtraError) as info:
        extras.require_extras("mnist-export", "export", "cpu")
    message = str(info.value)
    assert "mnist-export needs onnx, torch" in message
    assert "pip install '.[export]'" in message  # only the extra that is missing
    assert "with the export extra" in message and "make " not in message  # true after pip too
    assert "\n" not in message


@pytest.mark.parametrize(
    "module, args, extra",
    [
        ("mnist_edge.train.cli", ["--epochs", "1"], "train"),
        ("mnist_edge.export.cli", [], "export"),
    ],
    ids=["mnist-train", "mnist-export"],
)
def test_cli_without_its_extra_is_one_line(without, module, args, extra) -> None:
    without("torch")
    main = importlib.import_module(module).main
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert f"[{extra}]" in result.output and "torch" in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")


def test_mnist_serve_without_the_serve_extra_is_one_line(without) -> None:
    from mnist_edge.runtime.serve.cli import main

    without("fastapi", "uvicorn")
    result = CliRunner().invoke(main, ["--model", "any.onnx"])
    assert result.exit_code == 1
    assert "mnist-serve needs fastapi, uvicorn" in result.output and "[serve]" in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")


def test_the_runtime_imports_no_web_framework() -> None:
    """A runtime-only install (`pip install '.[cpu]'`) never needs the `serve` extra."""
    code = (
        "import sys, mnist_edge.runtime.cli, mnist_edge.runtime.stream, mnist_edge.runtime.classifier, "
        "mnist_edge.runtime.output, mnist_edge.runtime.serve, mnist_edge.runtime.serve.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'uvicorn', 'starlette', "
        "'python_multipart', 'pydantic', 'anyio'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
