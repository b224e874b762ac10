"""Arrays of many digits: `.npy` and IDX files, and batching them (numpy only)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mnist_edge.runtime.idx import IdxFormatError, read_idx
from mnist_edge.runtime.images import ImageError


def is_array_file(path: str | os.PathLike[str]) -> bool:
    """True for files that hold many images (``.npy``, IDX such as ``t10k-images-idx3-ubyte[.gz]``)."""
    name = os.fspath(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith((".npy", ".idx", "-ubyte", ".ubyte"))


def open_array_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Open a ``.npy`` or IDX file of digits, memory-mapped where possible.

    Returns:
        array (N, H, W): uint8, or float in [0, 1]. A single (H, W) image or
        (N, 1, H, W) stack is reshaped to (N, H, W).

    Raises:
        ImageError: unreadable, not an array file, or a shape that is not images.
    """
    path = Path(path)
    try:
        if path.name.lower().endswith(".npy"):
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            array = read_idx(path)
    except (IdxFormatError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt array file: {exc}") from None
    except OSError as exc:
        raise ImageError(f"cannot read array file: {exc.strerror or exc}") from None
    return image_stack(array)


def image_stack(array: np.ndarray) -> np.ndarray:
    """An array of grayscale digits as (N, H, W): one (H, W) image or an (N, 1, H, W) stack reshaped.

    Raises:
        ImageError: a shape that is not images, or a dtype that is not numeric.
    """
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1] < 1 or array.shape[2] < 1:
        raise ImageError(
            f"array of shape {tuple(array.shape)} is not images (want (N, H, W) or (N, 1, H, W))"
        )
    if array.dtype.kind not in "uif":
        raise ImageError(f"array dtype {array.dtype} is not numeric")
    return array


def array_to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8, or float in [0, 1] -> uint8 (N, H, W), rounding floats."""
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images)
    if images.dtype.kind == "f":
        return np.clip(np.asarray(images, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip(images, 0, 255).astype(np.uint8)


def batches(
    array: np.ndarray, size: int, *, pad_last: bool = False
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(batch, real_rows)`` slices of ``size`` rows along axis 0.

    With ``pad_last`` the last batch is zero-padded to ``size`` rows, for models
    with a static batch dimension; ``real_rows`` says how many rows are real.
    """
    for start in range(0, len(array), size):
        batch = array[start : start + size]
        rows = len(batch)
        if pad_last and rows < size:
            pad = np.zeros((size - rows, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        yield batch, rows
