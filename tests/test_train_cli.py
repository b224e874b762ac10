"""``mnist-train``: help, one-line errors before any long work, a tiny end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mnist_edge.train import cli, loop


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def no_data_loading(monkeypatch):
    """Fail loudly if a command gets as far as loading the dataset."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the dataset was loaded before the bad option was reported")

    monkeypatch.setattr(loop, "_load_dataset", refuse)


def test_help_lists_the_options(runner):
    result = runner.invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--val-split",
        "--device",
        "--resume",
        "--out",
        "--data-dir",
        "--prepare-only",
        "--train-limit",
        "--quiet",
    ):
        assert option in result.output


def _bad_options(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "last.pt").write_bytes(b"not a checkpoint")
    return {
        "epochs-0": (["--epochs", "0"], "epochs must be at least 1, got 0"),
        "batch-0": (["--batch-size", "0"], "batch_size must be at least 1"),
        "lr-negative": (["--lr", "-1"], "lr must be a positive number"),
        "val-split-1": (["--val-split", "1"], "val_split must be in [0, 1)"),
        "dataset": (["--dataset", "cifar10"], "'cifar10' is not one of 'mnist', 'fashion-mnist'"),
        "device": (["--device", "tpu"], "unknown device 'tpu'"),
        "unwritable-out": (["--out-dir", str(blocker / "out")], "is not writable"),
        "corrupt-resume": (["--out-dir", str(corrupt), "--resume"], "last.pt is unreadable"),
        "nothing-to-resume": (
            ["--out-dir", str(tmp_path / "empty"), "--resume"],
            "nothing to resume",
        ),
    }


BAD = [
    "epochs-0",
    "batch-0",
    "lr-negative",
    "val-split-1",
    "dataset",
    "device",
    "unwritable-out",
    "corrupt-resume",
    "nothing-to-resume",
]


# Errors the library finds (corrupt or missing resume point) name an option too.
OPTION_AT_FAULT = {
    "epochs-0": "--epochs",
    "batch-0": "--batch-size",
    "lr-negative": "--lr",
    "val-split-1": "--val-split",
    "dataset": "--dataset",
    "device": "--device",
    "unwritable-out": "--out-dir",
    "nothing-to-resume": "--resume",
}


@pytest.mark.parametrize("case", BAD, ids=BAD)
def test_bad_option_exits_2_with_one_error_line(runner, tmp_path, no_data_loading, case):
    args, message = _bad_options(tmp_path)[case]
    result = runner.invoke(cli.main, ["--out-dir", str(tmp_path / "out"), *args])
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1 and message in lines[0], result.output
    if case in OPTION_AT_FAULT:  # a bad option value: exit 2, as every mnist-edge command
        assert result.exit_code == 2, result.output
        assert (
            lines[0]
            .replace("'", "")
            .startswith(f"Error: Invalid value for {OPTION_AT_FAULT[case]}:")
        )
    else:  # a file that cannot be read is no usage error
        assert result.exit_code == 1, result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(runner, tmp_path, no_data_loading):
    result = runner.invoke(cli.main, ["--device", "cuda", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: Invalid value for --device: device 'cuda' requested but no CUDA GPU is "
        "available; use device cpu or auto"
    )


def test_unknown_dataset_with_prepare_only(runner, tmp_path):
    result = runner.invoke(
        cli.main, ["--prepare-only", "--dataset", "nope", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "'nope' is not one of 'mnist', 'fashion-mnist'" in result.output


def test_old_option_spelling_still_works_but_is_not_shown(runner, tmp_path, no_data_loading):
    help_text = runner.invoke(cli.main, ["--help"]).output
    assert "--out-dir" in help_text and "--out " not in help_text and "--out," not in help_text
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    result = runner.invoke(cli.main, ["--out", str(blocker / "out")])
    assert result.exit_code == 2, result.output
    assert "Invalid value for --out-dir: output folder" in result.output


def test_help_and_option_errors_come_before_torch_loads() -> None:
    """``mnist-train --help`` answers at once: importing the command loads no torch."""
    code = "import sys, mnist_edge.train.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_dataset_names_match_the_data_module() -> None:
    from mnist_edge.train.config import DATASETS
    from mnist_edge.train.data import DATASETS as SPECS

    assert tuple(SPECS) == DATASETS


def test_prepare_only_with_data_present(runner, mnist):
    data_dir = Path(__file__).resolve().parents[1] / "data"
    result = runner.invoke(cli.main, ["--prepare-only", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "mnist is ready in" in result.output


def test_interrupt_keeps_the_resume_hint(runner, tmp_path, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    result = runner.invoke(cli.main, ["--out-dir", str(tmp_path)])
    assert result.exit_code == 130
    assert "mnist-train --resume" in result.output


@pytest.mark.slow
def test_tiny_run_end_to_end(runner, tmp_path, mnist, monkeypatch):
    monkeypatch.setattr(loop, "_load_dataset", lambda *_: mnist)
    args = [
        "--out-dir",
        str(tmp_path),
        "--epochs",
        "1",
        "--train-limit",
        "640",
        "--test-limit",
        "200",
        "--quiet",
    ]
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("test_accuracy=")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["recipe"]["train_limit"] == 640 and len(metrics["history"]) == 1
    resumed = runner.invoke(cli.main, [*args, "--epochs", "2", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert len(json.loads((tmp_path / "metrics.json").read_text())["history"]) == 2
