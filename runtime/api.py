"""Classify pictures in one call: :func:`classify` (also ``mnist_edge.runtime.classify``).

It runs the same steps as ``mnist-infer`` (:mod:`~mnist_edge.runtime.stream`'s
decoding and batching, :func:`~mnist_edge.runtime.output.json_record`), in this
process, and returns what ``mnist-infer --format jsonl`` prints, one dict per line.

Light at import (numpy, pillow and ONNX Runtime load on the first call), so
``import mnist_edge.runtime`` stays quick for the CLIs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Union

from mnist_edge.runtime.inputs import MAX_PIXELS

if TYPE_CHECKING:
    import numpy as np

    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.images import ImageOptions
    from mnist_edge.runtime.messages import Classified, Decoded

Input = Union[str, "os.PathLike[str]", "np.ndarray"]


def classify(
    inputs: Input | Iterable[Input],
    model: str | os.PathLike[str] | Classifier | None = None,
    top_k: int = 0,
    *,
    int8: bool = False,
    invert: str = "auto",
    provider: str = "auto",
    max_pixels: int = MAX_PIXELS,
) -> list[dict[str, Any]]:
    """Label digit pictures: files, folders, globs, ``.npy``/IDX files, or numpy arrays.

    Example::

        from mnist_edge.runtime import classify
        classify(["images/0000-label7.png", digit])   # digit: uint8 (28, 28)
        # [{"path": "images/0000-label7.png", "label": "7", "confidence": 0.99...},
        #  {"path": "<array 1>", "label": "2", "confidence": 0.98...}]

    Args:
        inputs: one input or a list of them, each a path (a picture of any size
            and kind, a folder searched recursively, a glob, a ``.npy`` or IDX
            file of many digits) or an array: one grayscale picture (H, W), or
            a stack (N, H, W) / (N, 1, H, W); uint8, or float in [0, 1].
            Pictures are made MNIST-style as ``mnist-infer`` makes them.
        model: an ONNX file (the pixels-in files too), an open :class:`~mnist_edge.runtime.classifier.Classifier`
            (reused across calls), or ``None`` for the default: ``artifacts/mnist.onnx``
            when it exists in the working folder, else the bundled reference model.
        top_k: also list the K most probable labels per picture: 0 (none) to the
            model's number of classes.
        int8: with ``model=None`` (or a path), use the int8 file (``NAME.int8.onnx``,
            :func:`~mnist_edge.runtime.layout.int8_sibling`).
        invert: ``"auto"`` inverts dark-on-light pictures; ``"always"``/``"never"``
            force it (MNIST-style white-on-black input needs ``auto`` or ``never``).
        provider: ONNX Runtime execution provider (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
        max_pixels: a picture with more pixels gets an error record instead of being
            decoded (a guard against decompression bombs); default
            :data:`~mnist_edge.runtime.inputs.MAX_PIXELS`.

    Returns:
        One record per picture, in input order (a folder or array file gives one
        per picture inside it): ``{"path", "label", "confidence"}`` plus
        ``"top_k": [{"label", "confidence"}, ...]`` when ``top_k`` > 0, or
        ``{"path", "error"}`` for an input that could not be read. Arrays are named
        ``<array I>`` (``<array I>[J]`` for the J-th of a stack), I being their
        position in ``inputs``.

    Raises:
        ModelError: the model is missing or not an mnist-edge classifier.
        ProviderError: the provider is not available.
        ConfigError: ``top_k`` outside 0 to the model's classes, ``max_pixels`` < 1,
            an unknown ``invert``, or a forced one for a pixels-in model
            (``mnist.pixels.onnx``: its graph preprocesses and decides).
    """
    import numpy as np

    from mnist_edge.runtime.classifier import check_top_k
    from mnist_edge.runtime.layout import model_path
    from mnist_edge.runtime.output import json_record
    from mnist_edge.runtime.session import SessionConfig
    from mnist_edge.runtime.stream import PipelineConfig, classify_chunks, open_model

    config = PipelineConfig(workers=0, top_k=top_k, invert=invert, max_pixels=max_pixels)
    if isinstance(inputs, (str, os.PathLike, np.ndarray)):
        inputs = [inputs]
    items = list(inputs)
    if model is None or isinstance(model, (str, os.PathLike)):
        model = model_path(model, int8)
    classifier, options = open_model(model, SessionConfig(provider=provider), invert, max_pixels)
    top_k = check_top_k(top_k, len(classifier.classes))
    chunks = _chunks(items, classifier, options, config.chunk_size)
    return [json_record(r, top_k) for r in classify_chunks(chunks, classifier, config)]


def _chunks(
    items: list[Input], classifier: Classifier, options: ImageOptions, chunk_size: int
) -> Iterator[Decoded | Classified]:
    """Each input decoded (or, for a pixels-in model, classified) as ``mnist-infer`` does it, in order."""
    import numpy as np

    from mnist_edge.runtime.stream import decode_here

    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            yield from decode_here([os.fspath(item)], classifier, options, chunk_size)
        else:
            yield from _array(f"<array {i}>", np.asarray(item), classifier, options, chunk_size)


def _array(
    name: str, array: np.ndarray, classifier: Classifier, options: ImageOptions, chunk_size: int
) -> Iterator[Decoded | Classified]:
    """An in-memory picture (H, W) as ``name``, or a stack as ``name[j]``."""
    import numpy as np

    from mnist_edge.runtime.arrays import image_stack
    from mnist_edge.runtime.images import ImageError
    from mnist_edge.runtime.messages import Decoded
    from mnist_edge.runtime.stream import array_chunks

    size = options.preprocessing.size
    try:
        if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[1] > 4:
            raise ImageError(
                f"array of shape {array.shape} looks like a colour picture; pass grayscale (H, W)"
            )
        stack = image_stack(array)  # (N, H, W)
    except ImageError as exc:
        yield Decoded([name], np.zeros((1, size, size), np.uint8), [str(exc)])
        return
    chunks = array_chunks(name, stack, classifier, options, chunk_size)
    if array.ndim == 2:  # one picture: named as given, not as the first of a stack
        yield from (replace(chunk, paths=[name]) for chunk in chunks)
    else:
        yield from chunks
