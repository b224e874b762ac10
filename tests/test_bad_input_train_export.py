"""Bad input to mnist-train, mnist-export and mnist-samples: one ``Error:`` line, no traceback, exit 2 or 1.

Every case fails before any long work (no training, no export), so these run in
well under a second each.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mnist_edge.export.cli import main as export_main
from mnist_edge.tools.samples import main as samples_main
from mnist_edge.train.cli import main as train_main


def _one_error(result, exit_code: int) -> str:
    """The single ``Error:`` line of ``result``, after checking the exit code and no traceback."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture
def file_in_the_way(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--test-limit", "0"], "Invalid value for --test-limit: test_limit must be at least 1"),
        (["--train-limit", "-5"], "Invalid value for --train-limit"),
        (["--dataset", "cifar"], "Invalid value for '--dataset': 'cifar' is not one of"),
        (["--epochs", "0"], "Invalid value for --epochs"),
        (["--val-split", "1.5"], "Invalid value for --val-split"),
        (["--device", "tpu"], "Invalid value for --device: unknown device 'tpu'"),
        (["--resume"], "Invalid value for --resume: nothing to resume"),
    ],
    ids=["test-limit", "train-limit", "dataset", "epochs", "val-split", "device", "resume"],
)
def test_train_bad_option(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(train_main, ["--out-dir", str(tmp_path / "out"), *args])
    assert message in _one_error(result, 2)


def test_train_out_dir_that_cannot_be_made(file_in_the_way: Path) -> None:
    result = CliRunner().invoke(train_main, ["--out-dir", str(file_in_the_way / "out")])
    assert "Invalid value for --out-dir: output folder" in _one_error(result, 2)


def test_train_data_dir_that_is_a_file(file_in_the_way: Path, tmp_path: Path) -> None:
    args = ["--data-dir", str(file_in_the_way), "--out-dir", str(tmp_path / "o")]
    result = CliRunner().invoke(train_main, args)
    assert "--data-dir" in _one_error(result, 2)


def test_export_missing_checkpoint(tmp_path: Path) -> None:
    result = CliRunner().invoke(export_main, ["--checkpoint", str(tmp_path / "none.pt")])
    line = _one_error(result, 2)
    assert "none.pt does not exist; train one with mnist-train" in line
    assert "from a clone: make train" in line  # true for a pip install and for a clone


def test_export_unreadable_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a torch file")
    result = CliRunner().invoke(
        export_main, ["--checkpoint", str(bad), "--out-dir", str(tmp_path / "out")]
    )
    assert f"checkpoint {bad} is unreadable" in _one_error(result, 1)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--test-limit", "0"], "--test-limit"),
        (["--eval-limit", "0"], "--test-limit"),  # the old spelling is blamed by the new name
        (["--int8-max-drop", "1"], "--int8-max-drop"),
        (["--pixels-images", "0"], "--pixels-images"),
        (["--int8-target", "avx9"], "--int8-target"),
    ],
    ids=["test-limit", "eval-limit", "int8-max-drop", "pixels-images", "int8-target"],
)
def test_export_bad_option(tmp_path: Path, args: list[str], option: str) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")  # never read: the options fail first
    result = CliRunner().invoke(export_main, ["--checkpoint", str(ckpt), *args])
    assert option in _one_error(result, 2)


def test_export_out_dir_that_cannot_be_made(tmp_path: Path, file_in_the_way: Path) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")  # the folder is checked before the checkpoint is read
    result = CliRunner().invoke(
        export_main, ["--checkpoint", str(ckpt), "--out-dir", str(file_in_the_way / "out")]
    )
    assert "Invalid value for --out-dir: output folder" in _one_error(result, 2)
    assert not (file_in_the_way.parent / "out").exists()


@pytest.mark.parametrize("count", ["0", "-1"])
def test_samples_count_below_one(tmp_path: Path, count: str) -> None:
    result = CliRunner().invoke(samples_main, [str(tmp_path / "o"), "--count", count])
    assert "Invalid value for '--count'" in _one_error(result, 2)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "where", ["file", "under-a-file", "proc"], ids=["file", "under-a-file", "proc"]
)
def test_samples_folder_that_cannot_be_written(file_in_the_way: Path, where: str) -> None:
    if where == "proc" and not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    target = {
        "file": file_in_the_way,
        "under-a-file": file_in_the_way / "x",
        "proc": Path("/proc/mnist-edge-samples"),
    }[where]
    result = CliRunner().invoke(samples_main, [str(target), "--count", "1"])
    assert "OUT_DIR" in _one_error(result, 2)


def test_samples_first_file_is_label7_with_or_without_mnist(tmp_path: Path) -> None:
    """Drawn digits start as the MNIST test set does, so the docs' images/0000-label7.png exists."""
    result = CliRunner().invoke(
        samples_main, [str(tmp_path / "o"), "--count", "5", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "o").glob("????-label?.png"))
    assert names == [
        "0000-label7.png",
        "0001-label2.png",
        "0002-label1.png",
        "0003-label0.png",
        "0004-label4.png",
    ]
