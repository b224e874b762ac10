"""The :class:`Classifier`: an mnist-edge ONNX model that labels preprocessed digits.

Reads labels and preprocessing from the model's metadata, feeds float32
``[N, 1, H, W]`` or uint8 ``[N, H, W]`` inputs, pads and chunks for models
with a fixed batch size, and uses IOBinding on GPU providers.

It also runs the pixels-in model (``mnist.pixels[.int8].onnx``: input uint8
``[height, width]``, the preprocessing inside the graph, one picture per call):
``Classifier.pixels_in`` is then true and :meth:`Classifier.classify_picture`
takes a decoded grayscale picture as it is.
"""

from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mnist_edge.runtime.arrays import array_to_uint8, batches
from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.messages import Prediction
from mnist_edge.runtime.metadata import ModelMetadata
from mnist_edge.runtime.session import (
    GPU_PROVIDERS,
    MissingMetadataWarning,
    ModelError,
    SessionConfig,
    create_session,
)


def check_top_k(top_k: object, classes: int) -> int:
    """``top_k`` as an int when a model of ``classes`` classes can list that many labels.

    The one range (0, for none, to the number of classes) and the one refusal for
    ``top_k`` everywhere: :meth:`Predictions.records`, :class:`~mnist_edge.runtime.stream.Pipeline`,
    :func:`~mnist_edge.runtime.classify`, ``mnist-infer --top-k`` and ``mnist-serve``'s ``?top_k=``.

    Raises:
        ConfigError: (field ``top_k``) not a whole number from 0 to ``classes``.
    """
    if (
        isinstance(top_k, bool)
        or not isinstance(top_k, numbers.Integral)
        or not 0 <= int(top_k) <= classes
    ):
        raise ConfigError(
            f"top_k must be 0 (none) to {classes} (the model's classes), not {top_k!r}", "top_k"
        )
    return int(top_k)


@dataclass(frozen=True)
class Predictions:
    """Results for N images.

    Attributes:
        indices: int64 (N,) winning class per image.
        probabilities: float32 (N, classes).
        classes: label text per class index (from the model's metadata).
    """

    indices: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray, classes: tuple[str, ...]) -> Predictions:
        """Wrap float32 (N, classes) probabilities (e.g. from a worker) with their winning classes."""
        return cls(probabilities.argmax(axis=1), probabilities, classes)

    @property
    def labels(self) -> list[str]:
        return [self.classes[i] for i in self.indices.tolist()]

    @property
    def confidences(self) -> np.ndarray:
        """float32 (N,) probability of the winning class."""
        return self.probabilities[np.arange(len(self.indices)), self.indices]

    def top_k(self, k: int) -> np.ndarray:
        """int64 (N, k) class indices, most probable first (ties: lower index first)."""
        return np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]

    def records(self, top_k: int = 0) -> list[Prediction]:
        """One :class:`~mnist_edge.runtime.messages.Prediction` per image, in order.

        Args:
            top_k: also list the K most probable labels; 0: none.

        Raises:
            ConfigError: ``top_k`` is not 0 to the number of classes (:func:`check_top_k`).
        """
        top_k = check_top_k(top_k, len(self.classes))
        labels = self.labels
        confidences = self.confidences.tolist()
        if top_k <= 0:
            return [
                Prediction(label, conf) for label, conf in zip(labels, confidences, strict=True)
            ]
        best = self.top_k(top_k).tolist()  # (N, k)
        probs = self.probabilities
        return [
            Prediction(
                labels[i],
                confidences[i],
                tuple((self.classes[j], float(probs[i, j])) for j in best[i]),
            )
            for i in range(len(labels))
        ]


class Classifier:
    """An mnist-edge ONNX model ready to classify preprocessed digits.

    Args:
        model: path to the ``.onnx`` file.
        provider: shorthand for ``config.provider``.
        config: the rest of the session settings (default :class:`SessionConfig`).

    Attributes:
        pixels_in: the file is a pixels-in model: use :meth:`classify_picture`
            (one decoded picture per call); :meth:`predict` and :meth:`run` refuse it.

    Raises:
        ModelError, ProviderError: see :func:`create_session`; also an input or
            output layout that is not ``[N, 1, H, W]``/``[N, H, W]`` -> ``[N, classes]``
            or the pixels-in ``[height, width]`` uint8 -> ``[classes]``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        provider: str | None = None,
        config: SessionConfig | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)):
            raise ModelError(
                f"model must be the path of an ONNX file (str or os.PathLike), not {model!r}"
            )
        config = config or SessionConfig()
        if provider is not None:
            config = replace(config, provider=provider)
        self.path = Path(model)
        self.session = create_session(self.path, config)
        self.provider = self.session.get_providers()[0]
        try:
            self.metadata = ModelMetadata.from_props(
                self.session.get_modelmeta().custom_metadata_map
            )
        except ValueError as exc:
            raise ModelError(f"{self.path}: {exc}; export it again with this mnist-edge") from None
        if not self.metadata.from_file:
            warnings.warn(
                f"{self.path} has no mnist-edge metadata; using MNIST labels 0-9 and MNIST preprocessing",
                MissingMetadataWarning,
                stacklevel=2,
            )
        self._check_io()
        use_binding = (
            config.io_binding if config.io_binding is not None else self.provider in GPU_PROVIDERS
        )
        self._binding = self.session.io_binding() if use_binding else None

    def _check_io(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelError(f"{self.path}: expected one image input and a probabilities output")
        inp = inputs[0]
        self.input_name = inp.name
        self.output_name = next(
            (o.name for o in outputs if o.name == "probabilities"), outputs[0].name
        )
        types = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}
        if inp.type not in types:
            raise ModelError(
                f"{self.path}: input {inp.name!r} is {inp.type}, want float32 or uint8"
            )
        self.input_dtype = types[inp.type]
        self.pixels_in = len(inp.shape) == 2 and self.input_dtype == np.uint8
        if len(inp.shape) not in (3, 4) and not self.pixels_in:
            raise ModelError(
                f"{self.path}: input {inp.name!r} has shape {inp.shape}, want [N, 1, H, W], "
                "[N, H, W] or (pixels-in) uint8 [height, width]"
            )
        self.input_rank = len(inp.shape)
        batch = inp.shape[0]
        self.static_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.classes = self.metadata.labels
        self.size = self.metadata.preprocessing.size

    def _scale(self, images: np.ndarray) -> np.ndarray:
        """uint8/float (N, H, W) -> the model's input (N, 1, H, W) float32 or (N, H, W) uint8."""
        if self.input_dtype == np.uint8:
            x = array_to_uint8(images)
        elif images.dtype == np.uint8:
            scale = self.metadata.preprocessing.scale
            inv = 1.0 / scale
            # x / 255 (not x * (1/255)): bit-identical to the training tensors (ToTensor divides)
            if abs(inv - round(inv)) < 1e-6:
                x = images.astype(np.float32) / np.float32(round(inv))
            else:
                x = images.astype(np.float32) * np.float32(scale)
        else:
            x = images.astype(np.float32, copy=False)
        if self.input_rank == 4 and x.ndim == 3:
            x = x[:, None]  # (N, 1, H, W)
        return np.ascontiguousarray(x)

    def _not_pixels_in(self, what: str) -> None:
        if self.pixels_in:
            raise ModelError(
                f"{self.path} is a pixels-in model (one picture per call, preprocessing inside): "
                f"{what} takes batches of preprocessed digits; use classify_picture(picture), "
                "or the model without .pixels in its name"
            )

    def model_input(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed uint8 (N, H, W) digits -> what :meth:`run` takes (the model's dtype and rank)."""
        self._not_pixels_in("model_input")
        return self._scale(images)

    def classify_picture(self, picture: np.ndarray) -> Predictions:
        """Classify one decoded picture with a pixels-in model (the graph preprocesses it).

        Args:
            picture: uint8 (H, W) grayscale pixels, any size from 1x1 and either
                polarity, as :func:`mnist_edge.runtime.images.decode_image` returns them.

        Returns:
            :class:`Predictions` for one image (probabilities (1, classes)).

        Raises:
            ModelError: the model is not a pixels-in model (use :meth:`predict`).
            ValueError: ``picture`` is not a non-empty uint8 (H, W) array.
        """
        if not self.pixels_in:
            raise ModelError(
                f"{self.path} takes preprocessed digits, not pictures: use predict(images) "
                "(preprocess with mnist_edge.runtime.images), or a mnist.pixels*.onnx model"
            )
        picture = np.asarray(picture)
        if picture.dtype != np.uint8 or picture.ndim != 2 or 0 in picture.shape:
            raise ValueError(
                f"picture must be a non-empty uint8 (H, W) grayscale array, got "
                f"{picture.dtype} {picture.shape}; decode it with mnist_edge.runtime.images.decode_image"
            )
        probs = self._run(np.ascontiguousarray(picture))  # (classes,)
        if probs.shape != (len(self.classes),):
            raise ModelError(
                f"{self.path}: output has shape {probs.shape}, labels say {len(self.classes)} classes"
            )
        return Predictions.from_probabilities(probs[None], self.classes)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the graph on model-shaped input; returns float32 (N, classes). Handles static batch sizes."""
        self._not_pixels_in("run")
        if self.static_batch is not None and x.shape[0] != self.static_batch:
            parts = [
                self._run(chunk)[:rows]
                for chunk, rows in batches(x, self.static_batch, pad_last=True)
            ]
            return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), np.float32)
        return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._binding is None:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        binding = self._binding
        binding.bind_cpu_input(self.input_name, x)
        binding.bind_output(self.output_name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def predict(self, images: np.ndarray) -> Predictions:
        """Classify preprocessed digits.

        Args:
            images: uint8 (N, H, W) pixels, or float (N, H, W)/(N, 1, H, W) in [0, 1],
                white digit on black, already MNIST-style (see :mod:`.images`).

        Returns:
            :class:`Predictions` for the N images.

        Raises:
            ModelError: a pixels-in model (use :meth:`classify_picture`).
            ValueError: ``images`` is not (N, size, size) or (N, 1, size, size).
        """
        self._not_pixels_in("predict")
        images = np.asarray(images)
        if images.ndim == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or images.shape[1:] != (self.size, self.size):
            raise ValueError(
                f"images must be (N, {self.size}, {self.size}) or (N, 1, {self.size}, {self.size}), "
                f"got {images.shape}; preprocess pictures with mnist_edge.runtime.images.preprocess"
            )
        if len(images) == 0:
            probs = np.zeros((0, len(self.classes)), dtype=np.float32)
        else:
            probs = self.run(self._scale(images))  # (N, classes)
        if probs.ndim != 2 or probs.shape[1] != len(self.classes):
            raise ModelError(
                f"{self.path}: output has shape {probs.shape}, labels say {len(self.classes)} classes"
            )
        return Predictions.from_probabilities(probs, self.classes)
