"""The training run's options, and the checks on them that need no data.

:class:`TrainConfig` is passed whole to :func:`mnist_edge.train.loop.train`
and checks its values when it is made (as every mnist-edge config does);
:func:`resolve_device` and :func:`check_output_dir` run before any long work,
so a bad option fails in well under a second with a :class:`TrainError` naming it.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.layout import DEFAULT_DATA_DIR, DEFAULT_DIR

if TYPE_CHECKING:  # torch loads lazily: the CLI reads these defaults before it is needed
    import torch

DEVICES = ("auto", "cpu", "cuda")
DATASETS = ("mnist", "fashion-mnist")
"""The datasets :mod:`mnist_edge.train.data` knows (named here, torch-free, for the CLI's choices)."""
# The fields of TrainConfig that define a run's result (stored as its recipe).
RECIPE_KEYS = (
    "dataset",
    "epochs",
    "batch_size",
    "lr",
    "val_split",
    "seed",
    "train_limit",
    "test_limit",
    "channels_last",
    "amp",
    "compile",
)


class TrainError(ConfigError):
    """A training option is invalid or cannot be honoured; the message names it and the fix."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. The defaults are the reference recipe.

    Attributes:
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: where the dataset is prepared (see :mod:`mnist_edge.train.data`).
        out_dir: where ``model.pt``, ``last.pt``, ``metrics.json`` and the report go.
        epochs: passes over the training split.
        batch_size: training batch size (the last batch of an epoch may be smaller).
        lr: Adam learning rate.
        val_split: fraction of the training set, taken from its end, held out for validation.
        seed: seeds model init, dropout and the per-epoch shuffle.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        train_limit: use only the first N training images (quick runs, tests).
        test_limit: use only the first N test images.
        resume: continue from ``out_dir/last.pt``.
        progress: draw a per-epoch progress bar on stderr.
        channels_last: NHWC weights/activations (faster pooling on CPU and tensor cores on CUDA).
        amp: bfloat16 autocast (CUDA, or a CPU with native bf16 such as AVX512-BF16/AMX).
        compile: wrap the model in ``torch.compile`` for training.
        eval_batch_size: batch size for validation and test passes.
    """

    dataset: str = "mnist"
    data_dir: Path = DEFAULT_DATA_DIR
    out_dir: Path = DEFAULT_DIR
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    val_split: float = 0.1
    seed: int = 42
    device: str = "auto"
    train_limit: int | None = None
    test_limit: int | None = None
    resume: bool = False
    progress: bool = True
    channels_last: bool = True
    amp: bool = False
    compile: bool = False
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        """Check the values that need no I/O.

        Raises:
            TrainError: the first bad value, named with the fix.
        """
        if self.dataset not in DATASETS:  # the names train.data knows, without loading torch
            raise TrainError(
                f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}", "dataset"
            )
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if value < 1:
                raise TrainError(f"{name} must be at least 1, got {value}", name)
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainError(f"{name} must be at least 1 (or unset for all), got {value}", name)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainError(f"lr must be a positive number, got {self.lr}", "lr")
        if not 0 <= self.val_split < 1:
            raise TrainError(f"val_split must be in [0, 1), got {self.val_split}", "val_split")
        _parse_device(self.device)

    def recipe(self) -> dict[str, Any]:
        """The JSON-able recipe stored in checkpoints and metrics."""
        out: dict[str, Any] = {k: getattr(self, k) for k in RECIPE_KEYS}
        out.update(optimizer="Adam", loss="cross_entropy", validation="last fraction of train")
        return out


def _parse_device(name: str) -> str:
    """Check a device option: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; return it.

    Raises:
        TrainError: any other string.
    """
    base, sep, index = name.partition(":")
    if base not in DEVICES or (
        sep and (base != "cuda" or not (index.isascii() and index.isdigit()))
    ):
        raise TrainError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N", "device")
    return name


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        TrainError: the name is not a device option (see :func:`_parse_device`),
            or CUDA was requested but is not available.
    """
    import torch

    if _parse_device(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(
                f"device {name!r} requested but no CUDA GPU is available; use device cpu or auto",
                "device",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TrainError(
                f"device {name!r} does not exist ({torch.cuda.device_count()} GPU(s)); use cuda:0",
                "device",
            )
    return device


def check_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and prove a file can be written there.

    Raises:
        TrainError: it cannot be created or written.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TrainError(
            f"output folder {out_dir} is not writable ({reason}); choose a writable folder",
            "out_dir",
        ) from exc
