"""Photo-like pictures of a digit: what export validates the pixels-in models against.

A pixels-in model must agree with ``mnist-infer``'s Python preprocessing on the
kinds of pictures users send, not only on MNIST's own 28x28 digits; these are
those kinds, drawn from one digit. numpy and Pillow only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def variants(digit: np.ndarray) -> dict[str, tuple[Image.Image, str]]:
    """Photo-like versions of one uint8 (28, 28) digit: name -> (image, PIL format)."""
    gray = Image.fromarray(digit, mode="L")
    inverted = Image.fromarray(255 - digit, mode="L")
    ink = np.array([20, 30, 120], dtype=np.float32)  # blue ink on yellowish paper
    paper = np.array([250, 240, 200], dtype=np.float32)
    alpha = (digit.astype(np.float32) / 255.0)[..., None]
    rgb = Image.fromarray((paper * (1 - alpha) + ink * alpha).astype(np.uint8), mode="RGB")
    large = Image.new("L", (160, 120), 255)
    large.paste(inverted.resize((84, 84), Image.Resampling.BICUBIC), (50, 20))
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., 3] = digit  # black strokes on a transparent background
    return {
        "inverted.png": (inverted, "PNG"),
        "rgb.png": (rgb, "PNG"),
        "large.png": (large, "PNG"),
        "photo.jpg": (large.convert("RGB"), "JPEG"),
        "rgba.png": (Image.fromarray(rgba, mode="RGBA"), "PNG"),
        "plain.bmp": (gray, "BMP"),
    }
