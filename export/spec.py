"""The interface every exported file has: input ``image``, output ``probabilities``.

:class:`GraphSpec` describes one variant (dynamic or fixed batch, float or
uint8 input). The exporter builds to it (:mod:`.onnx`), the quantizer
calibrates through it (:mod:`.quantize`), and the validator checks files
against it (:mod:`.verify`, :mod:`.parity`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BATCH_AXIS = "batch"
BATCH_SIZES = (1, 7, 1000)


@dataclass(frozen=True)
class GraphSpec:
    """The interface an exported file must have.

    Attributes:
        fixed_batch: static batch size, or ``None`` for the named dynamic ``batch`` axis.
        uint8_input: input is raw uint8 pixels ``[batch, 28, 28]`` (scaled inside the graph)
            instead of float32 ``[batch, 1, 28, 28]`` in [0, 1].
        num_classes: width of the output.
        image_size: side of the square input image.
    """

    fixed_batch: int | None = None
    uint8_input: bool = False
    num_classes: int = 10
    image_size: int = 28

    @property
    def batch_dim(self) -> int | str:
        return self.fixed_batch if self.fixed_batch is not None else BATCH_AXIS

    @property
    def input_shape(self) -> tuple[int | str, ...]:
        side = self.image_size
        if self.uint8_input:
            return (self.batch_dim, side, side)
        return (self.batch_dim, 1, side, side)

    @property
    def output_shape(self) -> tuple[int | str, ...]:
        return (self.batch_dim, self.num_classes)

    @property
    def input_elem_type(self) -> int:
        return onnx.TensorProto.UINT8 if self.uint8_input else onnx.TensorProto.FLOAT

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes a file of this spec must run."""
        return (self.fixed_batch,) if self.fixed_batch is not None else BATCH_SIZES

    def feed(self, images: np.ndarray) -> np.ndarray:
        """Turn float images (N, 1, H, W) in [0, 1] into this spec's input array."""
        if not self.uint8_input:
            return images
        pixels = np.rint(images * 255.0).astype(np.uint8)  # exact: images are uint8 / 255
        return pixels.reshape(len(images), self.image_size, self.image_size)  # (N, H, W)
