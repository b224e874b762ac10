"""Read and write IDX files (the format MNIST ships in), with numpy only.

IDX layout: two zero bytes, a type code, the number of dimensions, one
big-endian uint32 per dimension, then the data in C order (big-endian).
Files ending in ``.gz`` are (de)compressed transparently.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from mnist_edge.runtime.atomic import atomic_path
from mnist_edge.runtime.errors import MnistEdgeError

# type code -> numpy dtype (big-endian where it matters)
_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KINDS = {(dt.kind, dt.itemsize): code for code, dt in _CODES.items()}


class IdxFormatError(MnistEdgeError, ValueError):
    """The bytes are not a valid IDX file."""


def _open(path: Path, mode: str):
    return gzip.open(path, mode) if path.suffix == ".gz" else open(path, mode)


def decode_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file.

    Raises:
        IdxFormatError: the header is wrong or the payload has the wrong size.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxFormatError(f"{name}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _CODES:
        raise IdxFormatError(f"{name}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _CODES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IdxFormatError(
            f"{name}: IDX payload is {len(data) - header} bytes, header says {expected}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a native-endian array."""
    path = Path(path)
    with _open(path, "rb") as f:
        data = f.read()
    return decode_idx(data, str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """Encode an array as IDX bytes (uint8, int8, int16, int32, float32, float64)."""
    array = np.asarray(array)
    code = _KINDS.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise IdxFormatError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=_CODES[code]).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file atomically (temp file in the same folder + rename)."""
    payload = encode_idx(array)
    with atomic_path(path) as tmp:
        if Path(path).suffix == ".gz":
            with gzip.GzipFile(tmp, mode="wb", mtime=0) as f:
                f.write(payload)
        else:
            tmp.write_bytes(payload)
