"""The console commands agree: --version and -h on all, one name per idea, exit 2 for bad values.

Also ``mnist-samples``, which works outside the repository (digits drawn when
there is no MNIST test set), and the ``--invert`` help that warns about MNIST-style input.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest
import tomllib
from click.testing import CliRunner

from mnist_edge.runtime import __version__

REPO = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
NAMES = sorted(SCRIPTS)


def _command(name: str) -> click.Command:
    module, attr = SCRIPTS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def test_every_tool_has_a_console_command() -> None:
    assert NAMES == [
        "mnist-export",
        "mnist-infer",
        "mnist-samples",
        "mnist-serve",
        "mnist-train",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_version_and_short_help(name: str) -> None:
    command = _command(name)
    version = CliRunner().invoke(command, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"{name}, version {__version__}"
    assert CliRunner().invoke(command, ["-h"]).exit_code == 0


BAD_VALUES = {
    "mnist-train": ["--epochs", "0"],
    "mnist-export": ["--opset", "12"],
    "mnist-infer": ["x.png", "--batch-size", "0"],
    "mnist-serve": ["--port", "70000"],
    "mnist-samples": ["--count", "-1"],
}


@pytest.mark.parametrize("name", NAMES)
def test_a_bad_option_value_exits_2(name: str, tmp_path: Path) -> None:
    args = BAD_VALUES[name]
    if name == "mnist-train":
        args = [*args, "--out-dir", str(tmp_path)]
    result = CliRunner().invoke(_command(name), args)
    assert result.exit_code == 2, result.output
    assert "Error: Invalid value for " in result.output


@pytest.mark.parametrize(
    ("name", "shown", "old", "args"),
    [
        ("mnist-train", "--out-dir", "--out", ["--prepare-only"]),
        ("mnist-export", "--test-limit", "--eval-limit", []),
    ],
    ids=["train-out-dir", "export-test-limit"],
)
def test_one_name_per_idea_with_the_old_spelling_hidden(name, shown, old, args) -> None:
    command = _command(name)
    help_text = CliRunner().invoke(command, ["--help"]).output
    assert shown in help_text and f"{old} " not in help_text and f"{old}," not in help_text
    (param,) = [p for p in command.params if shown in p.opts]
    assert old in param.opts  # still parsed
    ctx = command.make_context(name, [old, "7" if "limit" in old else "x", *args])
    assert ctx.params[param.name] in (7, Path("x"))


def test_test_limit_means_the_same_in_train_and_export() -> None:
    for name in ("mnist-train", "mnist-export"):
        assert any("--test-limit" in p.opts for p in _command(name).params), name


def test_dataset_choices_are_listed() -> None:
    (dataset,) = [p for p in _command("mnist-train").params if p.name == "dataset"]
    assert isinstance(dataset.type, click.Choice)
    assert tuple(dataset.type.choices) == ("mnist", "fashion-mnist")


@pytest.mark.parametrize("name", ["mnist-infer", "mnist-serve"])
def test_invert_help_warns_about_mnist_style_input(name: str) -> None:
    (invert,) = [p for p in _command(name).params if p.name == "invert"]
    assert "always inverts every one" in invert.help and "MNIST-style" in invert.help
    assert "never leaves them" in invert.help


def test_mnist_samples_works_outside_the_repository(tmp_path: Path) -> None:
    """No data/ here: the command draws its digits, and the bundled model reads them right."""
    from mnist_edge.runtime import classify

    script = Path(sys.executable).with_name("mnist-samples")
    proc = subprocess.run(
        [script, "out", "--count", "10"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "drawn digits (data has no MNIST test set)" in proc.stderr
    written = sorted((tmp_path / "out").iterdir())
    assert len(written) == 10 + 3 * 6
    records = classify([str(p) for p in written])
    for record in records:
        want = Path(record["path"]).name.split("-label")[1][0]
        assert record["label"] == want, record


def test_drawn_digits_are_read_right_by_the_bundled_model() -> None:
    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.layout import BUNDLED
    from mnist_edge.tools.samples import drawn_digits

    images, labels = drawn_digits(100, seed=1)
    assert images.shape == (100, 28, 28) and sorted(set(labels.tolist())) == list(range(10))
    predictions = Classifier(BUNDLED.model()).predict(images)
    assert (predictions.indices == labels).mean() >= 0.97


def test_samples_all_needs_the_test_set(tmp_path: Path) -> None:
    from mnist_edge.tools.samples import main

    result = CliRunner().invoke(main, [str(tmp_path / "o"), "--all", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--all" in result.output
    # the fix names a command, true after a pip install as in a clone
    assert f"mnist-train --prepare-only --data-dir {tmp_path}" in result.output


# Config fields that no option sets (computed, or library-only), and options that are no field.
NO_OPTION = {
    "mnist-train": {"progress", "eval_batch_size"},
    "mnist-export": {
        "int8_min_agreement",
        "batch_size",
        "pixels_min_agreement",
        "pixels_max_accuracy_gap",
    },
}
NO_FIELD = {
    "mnist-train": {"--prepare-only", "--quiet", "--help", "--version"},
    "mnist-export": {"--checkpoint", "--out-dir", "--parity-only", "--c", "--help", "--version"},
}


@pytest.mark.parametrize("name", ["mnist-train", "mnist-export"])
def test_config_fields_are_named_like_their_options(name: str) -> None:
    """One name per setting: field ``test_limit`` is option ``--test-limit``, and so on."""
    import dataclasses

    from mnist_edge.export.config import ExportConfig
    from mnist_edge.runtime.command import option_for
    from mnist_edge.train.config import TrainConfig

    config = TrainConfig if name == "mnist-train" else ExportConfig
    fields = {f.name for f in dataclasses.fields(config)}
    shown = {
        next(o for o in p.opts if o.startswith("--"))
        for p in _command(name).params
        if isinstance(p, click.Option)
    }
    for field in fields - NO_OPTION[name]:
        assert option_for(field) in shown, field
    for option in shown - NO_FIELD[name]:
        assert option.removeprefix("--").replace("-", "_") in fields, option


def test_checkpoint_recipe_keys_are_train_option_names() -> None:
    """Checkpoints store their recipe by field name: each is an mnist-train option as it is spelt now."""
    from mnist_edge.train.config import RECIPE_KEYS

    shown = {o for p in _command("mnist-train").params for o in p.opts}
    assert {f"--{k.replace('_', '-')}" for k in RECIPE_KEYS} <= shown
