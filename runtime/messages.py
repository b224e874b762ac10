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
class Result:
    """The outcome for one input: a prediction, or an error."""

    path: str
    error: str | None = None
    label: str | None = None
    confidence: float | None = None
    top_k: tuple[tuple[str, float], ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None
