"""The front-end glue the three commands share: which option an error blames, and one records function."""

from __future__ import annotations

import warnings
from pathlib import Path

import click
import numpy as np
import pytest

from mnist_edge.runtime.classifier import Predictions
from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.frontend import ModelChoice, model_errors
from mnist_edge.runtime.messages import Prediction, Result, results
from mnist_edge.runtime.session import ModelError, ProviderError, SessionConfig


@pytest.mark.parametrize(
    ("choice", "option"),
    [
        (ModelChoice(), "--model"),
        (ModelChoice(int8=True), "--int8"),
        (ModelChoice(Path("m.onnx")), "--model"),
        (ModelChoice(Path("m.onnx"), int8=True), "--model"),
    ],
    ids=["default", "default-int8", "model", "model-int8"],
)
def test_a_bad_model_blames_the_option_that_chose_it(choice, option):
    with pytest.raises(click.BadParameter) as info, model_errors(choice):
        raise ModelError("model file x not found")
    assert info.value.param_hint == option
    assert "--model" in info.value.format_message()
    assert "make " not in info.value.format_message()  # true after a pip install too


def test_provider_and_config_errors_blame_their_option():
    with pytest.raises(click.BadParameter) as info, model_errors(ModelChoice()):
        raise ProviderError("provider 'cuda' is not available here")
    assert info.value.param_hint == "--provider"
    with pytest.raises(click.BadParameter) as info, model_errors(ModelChoice()):
        SessionConfig(threads=0)
    assert info.value.param_hint == "--threads"
    with pytest.raises(click.BadParameter) as info, model_errors(ModelChoice(), {"x": "--why"}):
        raise ConfigError("x is bad", "x")
    assert info.value.param_hint == "--why"
    with pytest.raises(click.UsageError), model_errors(ModelChoice()):
        raise ConfigError("no field")


def test_warnings_while_opening_reach_stderr(capsys):
    with model_errors(ModelChoice()):
        warnings.warn("no metadata", UserWarning, stacklevel=1)
    assert "warning: no metadata" in capsys.readouterr().err


def test_records_and_results_keep_the_input_order():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    records = Predictions.from_probabilities(probs, ("a", "b", "c")).records(top_k=2)
    assert records[0] == Prediction(
        "b", pytest.approx(0.7), (("b", pytest.approx(0.7)), ("c", pytest.approx(0.2)))
    )
    assert [r.label for r in records] == ["b", "a"]
    out = results(["x", "bad", "y"], [None, "unreadable", None], records)
    assert out[1] == Result("bad", error="unreadable")
    assert [(r.path, r.label) for r in out] == [("x", "b"), ("bad", None), ("y", "a")]
    with pytest.raises(ValueError, match="fewer predictions"):
        results(["x", "y", "z"], [None, None, None], records)
    with pytest.raises(ValueError, match="more predictions"):
        results(["x"], [None], records)
