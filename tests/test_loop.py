"""The training loop: real-MNIST accuracy, outputs, resume equality, option checks."""

from __future__ import annotations

import io
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mnist_edge.train.checkpoint import CheckpointError, load_checkpoint
from mnist_edge.train.config import TrainConfig, TrainError, check_output_dir, resolve_device
from mnist_edge.train.data import Dataset
from mnist_edge.train.fit import evaluate
from mnist_edge.train.loop import make_splits, train
from mnist_edge.train.model import ConvNet
from mnist_edge.train.progress import ProgressBar

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Small, quick resume runs: 576 train + 64 validation images, 5 steps per epoch.
RESUME_RUN = {"train_limit": 640, "test_limit": 200, "progress": False}


def _synthetic(n_train: int = 60, n_test: int = 20) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(
        name="mnist",
        classes=tuple(str(i) for i in range(10)),
        train_images=torch.rand(n_train, 1, 28, 28, generator=g),
        train_labels=torch.arange(n_train) % 10,
        test_images=torch.rand(n_test, 1, 28, 28, generator=g),
        test_labels=torch.arange(n_test) % 10,
    )


@pytest.fixture(scope="module")
def one_epoch(mnist, tmp_path_factory):
    """A run stopped after epoch 1 of 2: its out dir holds only the resume point."""
    out = tmp_path_factory.mktemp("one_epoch")
    train(TrainConfig(out_dir=out, epochs=1, **RESUME_RUN), dataset=mnist)
    (out / "model.pt").unlink()  # as if killed before the end
    return out


@pytest.mark.slow
def test_short_real_run_beats_95_percent(trained_run):
    result, lines = trained_run
    assert result.test_accuracy > 0.95
    assert result.parameters == 34_826
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert result.history[-1].val_accuracy > 0.95
    assert any("Total params: 34,826" in line for line in lines), "summary is logged at the start"
    assert sum(line.startswith("Epoch ") and "val_accuracy" in line for line in lines) == 3


@pytest.mark.slow
def test_outputs_load_and_agree(trained_run, mnist):
    result, _ = trained_run
    raw = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert raw["complete"] is True and raw["epoch"] == 3
    assert raw["recipe"]["lr"] == 1e-3 and raw["recipe"]["batch_size"] == 128
    assert raw["dataset"]["name"] == "mnist" and raw["dataset"]["train_size"] == 10_800
    assert set(raw["versions"]) >= {"torch", "mnist_edge"}
    checkpoint = load_checkpoint(result.checkpoint)  # rebuilds the net from the file alone
    metrics = json.loads(result.metrics.read_text())
    assert metrics["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert metrics["device"] == "cpu" and len(metrics["history"]) == 3
    assert sum(map(sum, metrics["confusion_matrix"])) == 2_000
    assert metrics["seconds_per_epoch"] > 0
    for name in ("training.png", "confusion.png"):
        assert (result.checkpoint.parent / name).read_bytes()[:8] == PNG_MAGIC
    assert f"{result.test_accuracy:.4f}" in result.report.read_text()
    # The saved weights reproduce the reported test accuracy.
    test = evaluate(checkpoint.model, mnist.test_images[:2_000], mnist.test_labels[:2_000])
    assert test.accuracy == pytest.approx(result.test_accuracy)


@pytest.mark.slow
def test_resume_point_is_weights_only_loadable(one_epoch):
    raw = torch.load(one_epoch / "last.pt", map_location="cpu", weights_only=True)
    assert raw["complete"] is False and raw["epoch"] == 1
    state = raw["resume"]
    assert set(state) >= {"optimizer", "torch_rng", "shuffle_rng", "history"}
    assert state["optimizer"]["state"], "Adam moments are saved"
    assert isinstance(state["shuffle_rng"], torch.Tensor)


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_uninterrupted(mnist, one_epoch, tmp_path):
    full = train(TrainConfig(out_dir=tmp_path / "full", epochs=2, **RESUME_RUN), dataset=mnist)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(one_epoch, resumed_dir)
    resumed = train(
        TrainConfig(out_dir=resumed_dir, epochs=2, resume=True, **RESUME_RUN), dataset=mnist
    )
    a = torch.load(full.checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.checkpoint, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [replace(h, seconds=0) for h in full.history] == [
        replace(h, seconds=0) for h in resumed.history
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": 5e-4}, "different recipe: lr=0.0005"),
        ({"seed": 7}, "different recipe: seed=7"),
        ({"train_limit": 320}, "train_limit=320"),
    ],
    ids=["lr", "seed", "limit"],
)
def test_resume_refuses_a_different_recipe(mnist, one_epoch, change, message):
    config = replace(TrainConfig(out_dir=one_epoch, epochs=2, resume=True, **RESUME_RUN), **change)
    with pytest.raises(TrainError, match=message):
        train(config, dataset=mnist)


def test_resume_without_a_resume_point(tmp_path):
    with pytest.raises(TrainError, match="nothing to resume"):
        train(TrainConfig(out_dir=tmp_path, resume=True), dataset=_synthetic())


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"PK\x03\x04 not a zip"], ids=["empty", "text", "zip"]
)
def test_resume_from_a_corrupt_checkpoint(tmp_path, content):
    (tmp_path / "last.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"last\.pt"):
        train(TrainConfig(out_dir=tmp_path, resume=True), dataset=_synthetic())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1, got 0"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"val_split": 1.0}, r"val_split must be in \[0, 1\)"),
        ({"dataset": "cifar10"}, "unknown dataset 'cifar10'"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"train_limit": 0}, "train_limit must be at least 1"),
    ],
    ids=["epochs", "batch", "lr", "val-split", "dataset", "device", "limit"],
)
def test_config_names_the_bad_value_when_made(change, message):
    with pytest.raises(TrainError, match=message):
        replace(TrainConfig(), **change)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_an_error():
    with pytest.raises(TrainError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(TrainError, match="unknown device 'cuda:x'"):
        resolve_device("cuda:x")


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrainError, match="not writable"):
        check_output_dir(blocker / "out")


def test_validation_is_the_last_fraction_like_keras():
    splits = make_splits(_synthetic(60, 20), TrainConfig(val_split=0.1), torch.device("cpu"))
    assert len(splits.train_labels) == 54 and len(splits.val_labels) == 6
    assert torch.equal(splits.val_labels, torch.arange(54, 60) % 10)
    limited = make_splits(
        _synthetic(60, 20), TrainConfig(train_limit=30, test_limit=5), torch.device("cpu")
    )
    assert (len(limited.train_labels), len(limited.val_labels), len(limited.test_labels)) == (
        27,
        3,
        5,
    )


def test_synthetic_run_without_validation(tmp_path):
    config = TrainConfig(out_dir=tmp_path, epochs=1, batch_size=16, val_split=0.0, progress=False)
    result = train(config, dataset=_synthetic())
    assert result.history[0].val_loss is None
    assert {p.name for p in tmp_path.iterdir()} >= {
        "model.pt",
        "last.pt",
        "metrics.json",
        "report.md",
        "training.png",
        "confusion.png",
    }


def test_evaluate_counts_correct_predictions():
    net = ConvNet().eval()
    images = torch.rand(30, 1, 28, 28)
    with torch.no_grad():
        predicted = net(images).argmax(1)
    labels = predicted.clone()
    labels[:10] = (labels[:10] + 1) % 10  # 10 of 30 wrong
    result = evaluate(net, images, labels, batch_size=7)
    assert result.accuracy == pytest.approx(20 / 30)
    assert torch.equal(result.predictions, predicted)
    assert result.loss > 0


def test_outputs_use_given_folder(tmp_path):
    out = tmp_path / "nested" / "out"
    train(TrainConfig(out_dir=out, epochs=1, progress=False), dataset=_synthetic())
    assert json.loads((out / "metrics.json").read_text())["dataset"]["train_size"] == 54
    assert Path(out / "model.pt").is_file()


def test_progress_bar_draws_and_erases():
    stream = io.StringIO()
    bar = ProgressBar(10, "Epoch 1/2", stream=stream, min_interval=0.0)
    calls = []
    for step in range(1, 11):
        bar.update(step, lambda: calls.append(1) or {"loss": 0.5, "accuracy": 0.75})
    bar.close()
    text = stream.getvalue()
    assert "Epoch 1/2  10/10 [" in text and "loss: 0.5000 - accuracy: 0.7500" in text
    assert len(calls) == 10 and text.endswith("\r")


def test_progress_bar_skips_values_between_redraws():
    bar = ProgressBar(100, stream=io.StringIO(), min_interval=3600.0)
    calls = []
    for step in range(1, 100):
        bar.update(step, lambda: calls.append(1) or {})
    assert len(calls) == 1, "values (a host sync on CUDA) are read only when drawing"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_with_amp(mnist, tmp_path):
    config = TrainConfig(
        out_dir=tmp_path,
        device="cuda",
        amp=True,
        epochs=2,
        train_limit=6_400,
        test_limit=2_000,
        progress=False,
    )
    result = train(config, dataset=mnist)
    assert result.device.startswith("cuda")
    assert result.test_accuracy > 0.9
    checkpoint = load_checkpoint(result.checkpoint)
    assert next(checkpoint.model.parameters()).device.type == "cpu"


def test_bf16_autocast_runs_on_cpu(tmp_path):
    config = TrainConfig(out_dir=tmp_path, epochs=1, batch_size=16, amp=True, progress=False)
    result = train(config, dataset=_synthetic())
    assert math.isfinite(result.history[0].loss) and math.isfinite(result.test_loss)
    assert load_checkpoint(result.checkpoint).model.conv1.weight.dtype == torch.float32
