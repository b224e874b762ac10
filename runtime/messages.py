"""The typed messages that pass between the steps of the stream (inputs -> decode -> classify).

:class:`~mnist_edge.runtime.inputs.Source` (one input) is grouped into a
:data:`Unit` of work; decoding a unit gives :class:`Decoded` digits, or
:class:`Classified` probabilities when a worker process also ran the model;
classifying gives one :class:`Result` per input. Each crosses process
boundaries as a plain picklable dataclass.

numpy is only named in annotations here, so the CLI can import this module
before it starts its worker processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnist_edge.runtime.inputs import Source

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Files:
    """Picture files to decode together (one task for a worker process)."""

    paths: list[str]


@dataclass(frozen=True)
class ArrayFile:
    """A ``.npy`` or IDX file: one result per image inside it."""

    path: str


@dataclass(frozen=True)
class Failed:
    """An input that failed before decoding (missing path, empty folder, ...)."""

    source: Source


Unit = Files | ArrayFile | Failed


@dataclass(frozen=True)
class Decoded:
    """Consecutive inputs as MNIST-style digits.

    Attributes:
        paths: k input names.
        images: uint8 (k, size, size); zeros where ``errors[i]`` is set.
        errors: per input, ``None`` or why it failed.
    """

    paths: list[str]
    images: np.ndarray
    errors: list[str | None]


@dataclass(frozen=True)
class Classified:
    """Consecutive inputs that a worker process decoded and classified.

    Attributes:
        paths: k input names.
        probabilities: float32 (k, classes); zeros where ``errors[i]`` is set.
        errors: per input, ``None`` or why it failed.
    """

    paths: list[str]
    probabilities: np.ndarray
    errors: list[str | None]


@dataclass(frozen=True)
class Prediction:
    """What the model says of one image (made by ``Predictions.records``).

    Attributes:
        label: the winning class's label.
        confidence: its probability.
        top_k: the K most probable ``(label, probability)``, most probable first; empty if not asked.
    """

    label: str
    confidence: float
    top_k: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Result:
    """The outcome for one input: a prediction, or an error."""

    path: str
    error: str | None = None
    label: str | None = None
    confidence: float | None = None
    top_k: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, path: str, prediction: Prediction) -> Result:
        """The result of an input that the model classified."""
        return cls(
            path, label=prediction.label, confidence=prediction.confidence, top_k=prediction.top_k
        )

    @property
    def ok(self) -> bool:
        return self.error is None


def results(
    paths: Sequence[str], errors: Sequence[str | None], predictions: Iterable[Prediction]
) -> list[Result]:
    """One :class:`Result` per input, in order: an error where ``errors[i]`` is set, else the next prediction.

    ``predictions`` holds one entry per input without an error, in input order
    (what classifying the decodable inputs gives). The local engine, the server
    and the Ray engine all turn predictions into records here.

    Raises:
        ValueError: fewer or more predictions than inputs without an error.
    """
    if len(paths) != len(errors):
        raise ValueError(f"{len(paths)} paths but {len(errors)} error slots")
    remaining = iter(predictions)
    out: list[Result] = []
    for path, error in zip(paths, errors, strict=True):
        if error is not None:
            out.append(Result(path, error=error))
            continue
        prediction = next(remaining, None)
        if prediction is None:
            raise ValueError(f"no prediction for {path}: fewer predictions than decoded inputs")
        out.append(Result.of(path, prediction))
    if next(remaining, None) is not None:
        raise ValueError("more predictions than decoded inputs")
    return out
