"""The model behind the server: protocol metadata, infer and classify, over one dynamic batcher.

Framework-free (asyncio and numpy): :mod:`.app` maps HTTP routes and
:mod:`.grpc_service` the gRPC service onto one :class:`ModelService`, so both
protocols share its batcher; tests and other front ends can drive it directly.

A pixels-in model (``mnist.pixels[.int8].onnx``) is served as it is: its input
is one UINT8 ``[height, width]`` picture, its outputs ``probabilities``
``[classes]`` and ``label`` ``[]``; ``/v1/classify`` hands it the decoded
grayscale pixels, and the graph does the preprocessing.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_edge.runtime import __version__
from mnist_edge.runtime.classifier import Classifier, Predictions, check_top_k
from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.images import ImageError, ImageOptions, decode_image_bytes, load_bytes_batch
from mnist_edge.runtime.inputs import check_max_pixels
from mnist_edge.runtime.messages import results
from mnist_edge.runtime.output import json_record
from mnist_edge.runtime.serve.batcher import BatchConfig, DynamicBatcher
from mnist_edge.runtime.serve.protocol import (
    ProtocolError,
    TensorSpec,
    datatype_of,
    encode_infer_response,
    max_values,
    parse_infer_request,
)
from mnist_edge.runtime.session import short_name

if TYPE_CHECKING:
    from mnist_edge.runtime.serve.metrics import ServeMetrics

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
        invert: picture inversion for classify (``auto``, ``always``, ``never``);
            a pixels-in model inverts inside its graph, so it takes only ``auto``.
        max_pixels: pictures with more pixels are refused (decompression bombs); for a
            pixels-in model also the most values of an infer request's picture.
        metrics: keep Prometheus metrics (:mod:`.metrics`, ``GET /metrics``).
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
    metrics: bool = True

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_request_rows", "max_files", "decode_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, not {getattr(self, name)}", name)
        check_max_pixels(self.max_pixels)
        if not self.model_name or "/" in self.model_name:
            raise ConfigError(
                f"model_name must be a non-empty name without '/', not {self.model_name!r}",
                "model_name",
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
        classes = len(classifier.classes)
        self.pixels_in = classifier.pixels_in
        self.metrics: ServeMetrics | None = None
        if self.config.metrics:
            from mnist_edge.runtime.serve.metrics import ServeMetrics

            self.metrics = ServeMetrics(self.config.model_name, self.config.model_version)
        if self.pixels_in:
            if self.config.invert != "auto":
                raise ConfigError(
                    f"invert={self.config.invert!r}: a pixels-in model inverts inside its graph "
                    "(chosen at export); leave invert at 'auto'",
                    "invert",
                )
            self.input = TensorSpec(classifier.input_name, "UINT8", (-1, -1), batched=False)
            self.outputs: tuple[TensorSpec, ...] = (
                TensorSpec(classifier.output_name, "FP32", (classes,), batched=False),
                TensorSpec("label", "INT64", (), batched=False),
            )
            self.max_input_values = self.config.max_pixels
            self.batcher = DynamicBatcher(
                self._classify_picture, self.config.batch, stack=False, observer=self.metrics
            )
        else:
            size = classifier.size
            dims = (-1, 1, size, size) if classifier.input_rank == 4 else (-1, size, size)
            self.input = TensorSpec(
                classifier.input_name, datatype_of(classifier.input_dtype), dims
            )  # batch dimension -1: any number of rows, whatever the file's batch size
            self.outputs = (TensorSpec(classifier.output_name, "FP32", (-1, classes)),)
            self.max_input_values = max_values(self.input, self.config.max_request_rows)
            self.batcher = DynamicBatcher(classifier.run, self.config.batch, observer=self.metrics)
        self.image_options = ImageOptions(
            preprocessing=classifier.metadata.preprocessing,
            invert=self.config.invert,
            max_pixels=self.config.max_pixels,
        )
        self._decoders: ThreadPoolExecutor | None = None

    def _classify_picture(self, picture: np.ndarray) -> np.ndarray:
        """Worker thread, pixels-in model: one (H, W) uint8 picture -> float32 (classes,)."""
        return self.classifier.classify_picture(picture).probabilities[0]

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
        """The protocol's model metadata; ``parameters`` describe the model (from its file).

        ``parameters`` holds scalars, as the protocol's parameters do: ``kind``
        (``digits``: preprocessed 28x28 images in; ``pixels-in``: one picture,
        preprocessing inside the graph), ``labels`` and ``preprocessing`` as JSON
        text, ``precision``, ``provider``, ``model_version``, ``dataset`` and
        ``test_accuracy`` when the file has it.
        """
        meta = self.classifier.metadata
        parameters: dict[str, Any] = {
            "kind": "pixels-in" if self.pixels_in else "digits",
            "labels": json.dumps(list(self.classifier.classes)),
            "preprocessing": json.dumps(
                {**asdict(meta.preprocessing), "where": "graph" if self.pixels_in else "server"},
                sort_keys=True,
            ),
            "precision": meta.precision,
            "provider": short_name(self.classifier.provider),
            "model_version": meta.model_version,
            "dataset": meta.dataset,
        }
        if meta.test_accuracy is not None:
            parameters["test_accuracy"] = meta.test_accuracy
        return {
            "name": self.config.model_name,
            "versions": [self.config.model_version],
            "platform": PLATFORM,
            "inputs": [self.input.metadata()],
            "outputs": [o.metadata() for o in self.outputs],
            "parameters": parameters,
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
            body,
            header_length,
            self.input,
            self.outputs,
            self.config.max_request_rows,
            self.max_input_values,
        )
        results = await self.run(request.tensor)
        outputs = [(o, results[o.name]) for o in request.outputs]
        return encode_infer_response(
            self.config.model_name, self.config.model_version, request.id, outputs
        )

    async def run(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """A checked input tensor -> every output by name, through the batcher.

        Raises:
            BatcherError: shutting down, overloaded, or the model call failed.
        """
        return self.outputs_of(await self.batcher.submit(tensor))

    def enqueue(self, tensor: np.ndarray, alone: bool = True) -> asyncio.Future[np.ndarray]:
        """:meth:`run` without awaiting: the future of the model's output (:meth:`outputs_of`).

        ``alone=False``: the caller has other requests in flight (see
        :meth:`DynamicBatcher.submit`).

        Raises:
            BatcherError: shutting down or overloaded (at once); the future may
                hold a failed model call's.
        """
        return self.batcher.enqueue(tensor, alone)

    def outputs_of(self, probabilities: np.ndarray) -> dict[str, np.ndarray]:
        """The model's output, (rows, classes) or (classes,) -> every output by name."""
        if not self.pixels_in:
            return {self.outputs[0].name: probabilities}
        label = np.array(probabilities.argmax(), np.int64)  # the graph's ArgMax: first on ties
        return {self.outputs[0].name: probabilities, "label": label}

    def check_top_k(self, top_k: object) -> int:
        """``top_k`` if the model can list that many labels, else :class:`ProtocolError` (400).

        The message is :func:`~mnist_edge.runtime.classifier.check_top_k`'s, for any value
        (``"abc"`` as ``-1`` or ``11``).
        """
        try:
            return check_top_k(top_k, len(self.classifier.classes))
        except ConfigError as exc:
            raise ProtocolError(str(exc)) from None

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
        blobs = [blob for _, blob in files]
        classes = self.classifier.classes
        if self.pixels_in:
            pictures, errors = await loop.run_in_executor(self._decoders, self._decode, blobs)
            ok = [i for i, e in enumerate(errors) if e is None]
            rows = await asyncio.gather(*(self.batcher.submit(pictures[i]) for i in ok))
            probabilities = (
                np.stack(rows) if rows else np.zeros((0, len(classes)), np.float32)
            )  # (len(ok), classes)
        else:
            images, errors = await loop.run_in_executor(
                self._decoders, load_bytes_batch, blobs, self.image_options
            )  # (n, size, size) uint8
            ok = [i for i, e in enumerate(errors) if e is None]
            if ok:
                probabilities = await self.batcher.submit(self.classifier.model_input(images[ok]))
            else:
                probabilities = np.zeros((0, len(classes)), np.float32)
        predictions = Predictions.from_probabilities(probabilities, classes)
        records = results([name for name, _ in files], errors, predictions.records(top_k))
        payload: dict[str, Any] = {
            "model_name": self.config.model_name,
            "model_version": self.config.model_version,
            "results": [json_record(r, top_k) for r in records],
        }
        failed = [r for r in records if not r.ok]
        if not failed:
            return Classified(200, payload)
        first = failed[0]
        error = (
            f"{len(failed)} of {len(files)} pictures could not be used "
            f"(first: {first.path}: {first.error})"
        )
        return Classified(422, {"error": error, **payload})

    def _decode(self, blobs: list[bytes]) -> tuple[list[np.ndarray], list[str | None]]:
        """Decoder thread, pixels-in model: pictures -> uint8 (H, W) grayscale, not preprocessed."""
        pictures: list[np.ndarray] = []
        errors: list[str | None] = []
        for blob in blobs:
            try:
                pictures.append(decode_image_bytes(blob, self.config.max_pixels))
                errors.append(None)
            except ImageError as exc:
                pictures.append(np.zeros((1, 1), np.uint8))
                errors.append(str(exc))
        return pictures, errors
