"""The model behind the server: protocol metadata, infer and classify, over one dynamic batcher.

Framework-free (asyncio and numpy): :mod:`.app` maps HTTP routes onto a
:class:`ModelService`; tests and other front ends can drive it directly.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnist_edge.runtime import __version__
from mnist_edge.runtime.classifier import Classifier, Predictions
from mnist_edge.runtime.images import ImageOptions, load_bytes_batch
from mnist_edge.runtime.messages import Result
from mnist_edge.runtime.output import json_record
from mnist_edge.runtime.serve.batcher import BatchConfig, DynamicBatcher
from mnist_edge.runtime.serve.protocol import (
    ProtocolError,
    RequestedOutput,
    TensorSpec,
    datatype_of,
    encode_infer_response,
    parse_infer_request,
)

PLATFORM = "onnxruntime_onnx"  # Triton's platform name for ONNX Runtime models
EXTENSIONS = ("binary_tensor_data", "statistics")


@dataclass(frozen=True)
class ServeConfig:
    """What the server accepts and how it batches.

    Attributes:
        model_name: the name in the protocol's URLs (``/v2/models/{model_name}``).
        model_version: the one version served.
        batch: dynamic batching limits.
        max_body_bytes: largest request body; bigger ones get 413.
        max_request_rows: most images in one infer request.
        max_files: most pictures in one classify request.
        decode_threads: threads decoding uploaded pictures (off the event loop).
        invert: picture inversion for classify (``auto``, ``always``, ``never``).
        max_pixels: pictures with more pixels are refused (decompression bombs).
    """

    model_name: str = "mnist"
    model_version: str = "1"
    batch: BatchConfig = field(default_factory=BatchConfig)
    max_body_bytes: int = 16 * 1024 * 1024
    max_request_rows: int = 1024
    max_files: int = 256
    decode_threads: int = 2
    invert: str = "auto"
    max_pixels: int = ImageOptions.max_pixels

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_request_rows", "max_files", "decode_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if not self.model_name or "/" in self.model_name:
            raise ValueError(
                f"model_name must be a non-empty name without '/', not {self.model_name!r}"
            )


@dataclass(frozen=True)
class Classified:
    """The answer to a classify request: HTTP status and JSON payload."""

    status: int
    payload: dict[str, Any]


class ModelService:
    """One classifier served through the Open Inference Protocol and ``/v1/classify``.

    Args:
        classifier: the loaded model.
        config: limits and batching (default :class:`ServeConfig`).

    Raises:
        ValueError: ``config.invert`` or the model's preprocessing is not supported.
    """

    def __init__(self, classifier: Classifier, config: ServeConfig | None = None) -> None:
        self.config = config or ServeConfig()
        self.classifier = classifier
        size = classifier.size
        dims = (-1, 1, size, size) if classifier.input_rank == 4 else (-1, size, size)
        self.input = TensorSpec(
            classifier.input_name, datatype_of(classifier.input_dtype), dims
        )  # batch dimension -1: any number of rows, whatever the file's batch size
        self.outputs = (TensorSpec(classifier.output_name, "FP32", (-1, len(classifier.classes))),)
        self.image_options = ImageOptions(
            preprocessing=classifier.metadata.preprocessing,
            invert=self.config.invert,
            max_pixels=self.config.max_pixels,
        )
        self.batcher = DynamicBatcher(classifier.run, self.config.batch)
        self._decoders: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the batcher and the decoding threads."""
        if self._decoders is None:
            self._decoders = ThreadPoolExecutor(
                self.config.decode_threads, thread_name_prefix="mnist-serve-decode"
            )
        self.batcher.start()

    async def aclose(self) -> None:
        """Finish the requests already taken, then stop the worker threads."""
        await self.batcher.aclose()
        if self._decoders is not None:
            self._decoders.shutdown(wait=True)
            self._decoders = None

    @property
    def ready(self) -> bool:
        return self.batcher.running

    # ------------------------------------------------------------ protocol metadata

    def check_model(self, name: str, version: str | None = None) -> None:
        """Raises :class:`ProtocolError` (404) unless ``name``/``version`` is the served model."""
        if name != self.config.model_name:
            raise ProtocolError(
                f"unknown model {name!r}; this server has {self.config.model_name!r}", status=404
            )
        if version is not None and version != self.config.model_version:
            raise ProtocolError(
                f"model {name!r} has no version {version!r}; it has {self.config.model_version!r}",
                status=404,
            )

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "mnist-edge", "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self) -> dict[str, Any]:
        return {
            "name": self.config.model_name,
            "versions": [self.config.model_version],
            "platform": PLATFORM,
            "inputs": [self.input.metadata()],
            "outputs": [o.metadata() for o in self.outputs],
        }

    def statistics(self) -> dict[str, Any]:
        """The statistics extension's answer (rows, model calls, batch sizes)."""
        stats = self.batcher.stats()
        return {
            "model_stats": [stats.model_stats(self.config.model_name, self.config.model_version)]
        }

    # ------------------------------------------------------------ inference

    async def infer(self, body: bytes, header_length: str | None) -> tuple[bytes, int | None]:
        """An infer request body -> ``(response body, JSON header length or None)``.

        Raises:
            ProtocolError: the request is malformed or does not fit the model.
            BatcherError: shutting down, overloaded, or the model call failed.
        """
        request = parse_infer_request(
            body, header_length, self.input, self.outputs, self.config.max_request_rows
        )
        probabilities = await self.batcher.submit(request.tensor)  # (rows, classes)
        outputs: list[tuple[RequestedOutput, np.ndarray]] = [
            (o, probabilities) for o in request.outputs
        ]
        return encode_infer_response(
            self.config.model_name, self.config.model_version, request.id, outputs
        )

    def check_top_k(self, top_k: int) -> int:
        classes = len(self.classifier.classes)
        if not 0 <= top_k <= classes:
            raise ProtocolError(
                f"top_k must be in [0, {classes}] (the model's classes), not {top_k}"
            )
        return top_k

    async def classify(self, files: list[tuple[str, bytes]], top_k: int = 0) -> Classified:
        """Pictures -> the records ``mnist-infer --format jsonl`` writes, one per picture.

        Args:
            files: ``(name, content)`` per picture, any size and format.
            top_k: also list the ``top_k`` most probable labels.

        Returns:
            Status 200 with ``{"model_name", "model_version", "results": [...]}``, or 422
            with an ``"error"`` line added when any picture could not be used (the
            others still have their records).
        """
        top_k = self.check_top_k(top_k)
        if self._decoders is None:
            raise ProtocolError("the server is not started", status=503)
        loop = asyncio.get_running_loop()
        images, errors = await loop.run_in_executor(
            self._decoders, load_bytes_batch, [blob for _, blob in files], self.image_options
        )  # (n, size, size) uint8
        ok = [i for i, e in enumerate(errors) if e is None]
        classes = self.classifier.classes
        if ok:
            probabilities = await self.batcher.submit(self.classifier.model_input(images[ok]))
        else:
            probabilities = np.zeros((0, len(classes)), np.float32)
        predictions = Predictions.from_probabilities(probabilities, classes)
        confidences = predictions.confidences.tolist()
        alternatives = predictions.top_k(top_k)  # (len(ok), top_k)
        results: list[Result] = []
        row = 0
        for (name, _), error in zip(files, errors, strict=True):
            if error is not None:
                results.append(Result(name, error=error))
                continue
            alts = tuple((classes[j], float(probabilities[row, j])) for j in alternatives[row])
            label = classes[int(predictions.indices[row])]
            results.append(Result(name, label=label, confidence=confidences[row], top_k=alts))
            row += 1
        payload: dict[str, Any] = {
            "model_name": self.config.model_name,
            "model_version": self.config.model_version,
            "results": [json_record(r, top_k) for r in results],
        }
        failed = [r for r in results if not r.ok]
        if not failed:
            return Classified(200, payload)
        first = failed[0]
        error = (
            f"{len(failed)} of {len(files)} pictures could not be used "
            f"(first: {first.path}: {first.error})"
        )
        return Classified(422, {"error": error, **payload})
