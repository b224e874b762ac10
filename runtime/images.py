"""Decode image files and turn them into MNIST-style 28x28 digits (numpy + pillow only).

MNIST itself was made like this: grayscale, white digit on black, cropped to the
ink, scaled to fit a 20x20 box keeping the aspect ratio (anti-aliased), then put
in a 28x28 field so that the centre of mass sits at the centre.
:func:`preprocess` repeats those steps for any picture (photo, scan, drawing).
An image that is already 28x28 is taken as prepared: only inversion applies, so
MNIST test images saved as PNG give exactly the tensor path's predictions.

Everything here is a plain function of a path or an array, safe to run in a
worker process.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_edge.runtime.errors import ConfigError, MnistEdgeError
from mnist_edge.runtime.inputs import MAX_PIXELS, check_max_pixels
from mnist_edge.runtime.metadata import INVERT_MODES, Preprocessing

FOREGROUNDS = ("white-on-black", "black-on-white")
CENTERINGS = ("center-of-mass", "bbox")
_ORIENTATION = 0x0112  # EXIF tag


class ImageError(MnistEdgeError, ValueError):
    """An input could not be read as a digit image; the message is the reason."""


@dataclass(frozen=True)
class ImageOptions:
    """How files become model inputs.

    Attributes:
        preprocessing: the model's preprocessing (from its metadata).
        invert: ``"auto"`` inverts a dark-on-light picture, ``"always"``/``"never"`` force it.
        max_pixels: pictures with more pixels are refused (decompression bombs);
            default :data:`~mnist_edge.runtime.inputs.MAX_PIXELS`.
    """

    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    invert: str = "auto"
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        if self.invert not in INVERT_MODES:
            raise ConfigError(
                f"invert must be one of {', '.join(INVERT_MODES)}, not {self.invert!r}", "invert"
            )
        pre = self.preprocessing
        if pre.foreground not in FOREGROUNDS or pre.centering not in CENTERINGS:
            raise ConfigError(
                f"unsupported preprocessing foreground={pre.foreground!r} centering={pre.centering!r} "
                f"(this runtime knows {', '.join(FOREGROUNDS)}; {', '.join(CENTERINGS)})",
                "preprocessing",
            )
        check_max_pixels(self.max_pixels)


def over_limit(max_pixels: int, size: tuple[int, int] | None = None) -> ImageError:
    """The one error for a picture over ``max_pixels`` (``size``: its width and height, when known)."""
    what = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, " if size is not None else ""
    return ImageError(
        f"picture is {what}over the limit of {max_pixels:,} pixels "
        "(possible decompression bomb; max_pixels raises the limit)"
    )


# ---------------------------------------------------------------- decoding


def _round_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float pixels on the 0-255 scale -> uint8, rounding half up and clipping to [0, 255]."""
    shifted = pixels + 0.5
    np.clip(shifted, 0, 255, out=shifted)
    return shifted.astype(np.uint8)


def _to_gray(img: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 (H, W); transparency composited on a background that contrasts with the ink."""
    mode = img.mode
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "RGBA", "RGBa"):
        # float32 throughout, in place where it can be: a big picture needs few copies
        rgba = np.asarray(img.convert("RGBA"))  # uint8 (H, W, 4)
        alpha = rgba[..., 3].astype(np.float32)
        alpha /= 255.0
        gray = rgba[..., 0] * np.float32(0.299)
        gray += rgba[..., 1] * np.float32(0.587)
        gray += rgba[..., 2] * np.float32(0.114)
        del rgba
        weight = float(alpha.sum())
        gray *= alpha  # the picture over black
        # The ink is the opaque part; lay it on black if it is bright, on white if it is dark.
        ink = float(gray.sum() / weight) if weight > 0 else 0.0
        if ink < 128:  # on white: add 255 * (1 - alpha)
            np.subtract(1.0, alpha, out=alpha)
            alpha *= 255.0
            gray += alpha
        return _round_to_uint8(gray)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        else:  # 32-bit int or float: scale the actual range
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return _round_to_uint8(arr)
    if mode != "L":
        img = img.convert("L")
    # frombuffer: skips numpy's __array_interface__ round trip (faster on small images)
    return np.frombuffer(img.tobytes(), np.uint8).reshape(img.height, img.width)


def decode_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read one picture file as uint8 grayscale (H, W), EXIF orientation applied.

    Raises:
        ImageError: unreadable, not an image, truncated/corrupt, or over ``max_pixels``.
    """
    with _bomb_checks(max_pixels):
        return _decode(path, max_pixels)


_PIL_LIMIT = threading.Lock()


@contextlib.contextmanager
def _bomb_checks(max_pixels: int) -> Iterator[None]:
    """PIL's own decompression-bomb check, set from ``max_pixels``, with its warning made an error.

    PIL warns past ``Image.MAX_IMAGE_PIXELS`` (and raises past twice that) with its
    own number. That limit is raised to ``max_pixels`` (never lowered: threads may
    decode with other limits), so PIL speaks only of pictures over ours, and
    :func:`_open` words its error with our number (:func:`over_limit`).
    """
    check_max_pixels(max_pixels)
    pil = Image.MAX_IMAGE_PIXELS
    if pil is not None and pil < max_pixels:
        with _PIL_LIMIT:
            pil = Image.MAX_IMAGE_PIXELS
            if pil is not None and pil < max_pixels:
                Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def decode_image_bytes(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read one picture held in memory (an upload, an object-store blob) as uint8 (H, W).

    The same formats, checks and errors as :func:`decode_image`.

    Raises:
        ImageError: empty, not an image, truncated/corrupt, or over ``max_pixels``.
    """
    with _bomb_checks(max_pixels):
        return _decode_bytes(data, max_pixels)


def _decode_bytes(data: bytes, max_pixels: int) -> np.ndarray:
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    return _open(io.BytesIO(data), max_pixels)


def _decode(path: str | os.PathLike[str], max_pixels: int) -> np.ndarray:
    """:func:`decode_image` inside :func:`_bomb_checks` (entered once per batch)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ImageError(f"cannot read image: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError("is a directory")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise ImageError("not a regular file (FIFO, device or socket)")
    if info.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    return _open(path, max_pixels)


def _open(source: str | os.PathLike[str] | io.BytesIO, max_pixels: int) -> np.ndarray:
    """Decode a checked file path or in-memory file -> uint8 (H, W)."""
    try:
        with Image.open(source) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise over_limit(max_pixels, (width, height))
            # getexif() is cheap next to decoding; transposing copies, so only when needed
            if img.getexif().get(_ORIENTATION, 1) not in (0, 1):
                img = ImageOps.exif_transpose(img)
            return _to_gray(img)  # first frame of an animation
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise over_limit(max_pixels) from None  # PIL's limit is ours (or above): _bomb_checks
    except UnidentifiedImageError:
        raise ImageError("not an image (unknown or unsupported file format)") from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ImageError(f"cannot read image: {reason}") from None
    except (ValueError, SyntaxError, EOFError, MemoryError, struct.error) as exc:
        raise ImageError(f"corrupt image: {exc or type(exc).__name__}") from None


# ---------------------------------------------------------------- preprocessing


def needs_inversion(gray: np.ndarray) -> bool:
    """True when the picture looks dark-on-light: its border is mostly bright."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return float(gray.mean()) > 127.5
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return 2 * int(np.count_nonzero(border > 127)) > border.size  # median above mid-grey


def _center_of_mass(img: np.ndarray) -> tuple[float, float]:
    total = float(img.sum())
    rows = np.arange(img.shape[0], dtype=np.float64)
    cols = np.arange(img.shape[1], dtype=np.float64)
    return (
        float(img.sum(axis=1) @ rows) / total,
        float(img.sum(axis=0) @ cols) / total,
    )


def preprocess(gray: np.ndarray, options: ImageOptions = ImageOptions()) -> np.ndarray:
    """MNIST-style preprocessing of a grayscale picture.

    Args:
        gray: uint8 (H, W), any size.
        options: target size/fit from the model's preprocessing, and the inversion mode.

    Returns:
        uint8 (size, size) white-on-black digit. A picture already ``size`` x ``size``
        is returned unchanged except for inversion.
    """
    pre = options.preprocessing
    if options.invert == "always" or (options.invert == "auto" and needs_inversion(gray)):
        gray = 255 - gray
    size = pre.size
    if gray.shape == (size, size):
        return _foreground(np.ascontiguousarray(gray, dtype=np.uint8), pre)

    work = gray.astype(np.float32)
    # Photos and scans: background is rarely exactly black, subtract it and stretch.
    h, w = work.shape
    border = (
        np.concatenate([work[0], work[-1], work[:, 0], work[:, -1]])
        if h > 2 and w > 2
        else work.ravel()
    )
    work -= float(np.median(border))
    np.maximum(work, 0.0, out=work)  # in place: no second float copy of a big photo
    peak = float(work.max())
    if peak <= 0:
        return _foreground(np.zeros((size, size), dtype=np.uint8), pre)  # blank picture
    work *= 255.0 / peak
    ink = work > 0.2 * 255.0  # (H, W) bool
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    work = work[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    work[work < 0.1 * 255.0] = 0.0  # drop faint noise inside the box

    ch, cw = work.shape
    scale = pre.fit / max(ch, cw)
    nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
    box = Image.fromarray(_round_to_uint8(work), mode="L")
    fitted = np.asarray(box.resize((nw, nh), Image.Resampling.LANCZOS), dtype=np.float32)

    out = np.zeros((size, size), dtype=np.float32)
    if float(fitted.sum()) <= 0:
        return _foreground(out.astype(np.uint8), pre)
    if pre.centering == "center-of-mass":
        cy, cx = _center_of_mass(fitted)  # MNIST puts it at pixel (14, 14)
    else:  # "bbox": the middle of the fitted box
        cy, cx = nh / 2, nw / 2
    top = round(size / 2 - cy)
    left = round(size / 2 - cx)
    # paste with clipping at the field's edges
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + nh, size), min(left + nw, size)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = fitted[y0 - top : y1 - top, x0 - left : x1 - left]
    return _foreground(_round_to_uint8(out), pre)


def _foreground(digit: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """White-on-black (as made here) -> what the model wants."""
    return 255 - digit if pre.foreground == "black-on-white" else digit


def load_image(path: str | os.PathLike[str], options: ImageOptions = ImageOptions()) -> np.ndarray:
    """Decode and preprocess one picture file -> uint8 (28, 28).

    Raises:
        ImageError: the file cannot be used (the message says why).
    """
    return preprocess(decode_image(path, options.max_pixels), options)


def load_batch(
    paths: list[str], options: ImageOptions = ImageOptions()
) -> tuple[np.ndarray, list[str | None]]:
    """Decode and preprocess many picture files (the unit of work of a decoder process).

    Returns:
        images: uint8 (len(paths), size, size); zeros where the file failed.
        errors: per path, ``None`` or the reason it failed.
    """
    return _batch(paths, _decode, options)


def load_bytes_batch(
    blobs: list[bytes], options: ImageOptions = ImageOptions()
) -> tuple[np.ndarray, list[str | None]]:
    """:func:`load_batch` for pictures held in memory (uploads, object-store blobs)."""
    return _batch(blobs, _decode_bytes, options)


def _batch(
    items: list[str] | list[bytes],
    decode: Callable[[Any, int], np.ndarray],
    options: ImageOptions,
) -> tuple[np.ndarray, list[str | None]]:
    size = options.preprocessing.size
    images = np.zeros((len(items), size, size), dtype=np.uint8)
    errors: list[str | None] = [None] * len(items)
    with _bomb_checks(options.max_pixels):
        for i, item in enumerate(items):
            try:
                images[i] = preprocess(decode(item, options.max_pixels), options)
            except ImageError as exc:
                errors[i] = str(exc)
    return images, errors
