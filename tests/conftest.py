"""Shared fixtures: real MNIST (offline mirror when needed) and a briefly trained model."""

from __future__ import annotations

import os
from pathlib import Path

# Spin-waiting OpenMP threads make torch many times slower when another process
# shares the cores; mnist-train sets the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST dataset as tensors (prepared into the repo's data/ on first use)."""
    from mnist_edge.train.data import DataConfig, load_dataset

    return load_dataset(DataConfig(dataset="mnist", data_dir=DATA_DIR))


@pytest.fixture(scope="session")
def trained_run(mnist, tmp_path_factory):
    """The real training loop, briefly: 3 epochs (255 steps) on the first 12k MNIST images.

    Returns ``(TrainResult, log lines)``; the model reaches > 0.95 test accuracy.
    """
    from mnist_edge.train.config import TrainConfig
    from mnist_edge.train.loop import train

    out = tmp_path_factory.mktemp("trained")
    config = TrainConfig(
        out_dir=out, data_dir=DATA_DIR, epochs=3, train_limit=12_000, test_limit=2_000,
        progress=False,
    )  # fmt: skip
    lines: list[str] = []
    return train(config, dataset=mnist, log=lines.append), lines


@pytest.fixture(scope="session")
def trained_checkpoint(trained_run) -> Path:
    """Path of the model.pt written by :func:`trained_run`."""
    return trained_run[0].checkpoint
