"""Shared fixtures: real MNIST (offline mirror when needed) and a briefly trained model."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST dataset as tensors (prepared into the repo's data/ on first use)."""
    from mnist_edge.train.data import DataConfig, load_dataset

    return load_dataset(DataConfig(dataset="mnist", data_dir=DATA_DIR))
