"""Settings and errors of the Ray engine (:mod:`mnist_edge.runtime.scale`); imports without Ray."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mnist_edge.runtime.errors import ConfigError, MnistEdgeError
from mnist_edge.runtime.metadata import INVERT_MODES
from mnist_edge.runtime.session import GPU_PROVIDERS, PROVIDER_NAMES

BLOCK_MIN, BLOCK_MAX = 256, 4096
"""The range :meth:`RayConfig.block_size` picks from."""


class RayEngineError(MnistEdgeError, RuntimeError):
    """Ray is missing, the cluster cannot be reached, or the inputs are not what the engine takes."""


@dataclass(frozen=True)
class RayConfig:
    """How the Ray Data job runs.

    Attributes:
        provider: ONNX Runtime provider of the workers: ``cpu``, or a GPU one (``cuda``, ...).
            Never falls back: a worker that cannot get it fails.
        batch_size: inputs per block: one Ray task (or actor call) reads, decodes and
            classifies a block. ``None``: :meth:`block_size` picks it from the input's
            size and the cluster's CPUs.
        model_batch: images per ONNX Runtime call inside a worker.
        actors: run the model in a pool of this many Ray actors. ``None``: on CPU,
            Ray tasks (one CPU each; each worker process keeps its model for the run);
            on GPU, actors autoscaled from 1 to what the cluster's GPUs allow.
        cpus_per_actor: CPUs each actor reserves. Keep it fractional on small
            machines: actors holding every CPU starve other tasks (writes) and the
            job never ends (ray-project/ray#44687).
        gpus_per_actor: GPUs each actor reserves; ``None`` = 1 for a GPU provider, 0 on CPU.
        invert: as :attr:`ImageOptions.invert`.
        max_pixels: as :attr:`ImageOptions.max_pixels`.
        top_k: alternatives per image in the ``top_k`` column (0 = none).
        rows_per_file: rows per Parquet file when writing (at least).

    Raises:
        ConfigError: a value out of range or inconsistent; ``field`` names it.
    """

    provider: str = "cpu"
    batch_size: int | None = None
    model_batch: int = 64
    actors: int | None = None
    cpus_per_actor: float = 0.5
    gpus_per_actor: float | None = None
    invert: str = "auto"
    max_pixels: int = 40_000_000
    top_k: int = 0
    rows_per_file: int = 100_000

    def __post_init__(self) -> None:
        for name in ("batch_size", "model_batch", "rows_per_file"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, not {getattr(self, name)}", name)
        if self.actors is not None and self.actors < 1:
            raise ConfigError(
                f"actors must be >= 1 (or None for tasks), not {self.actors}", "actors"
            )
        if self.cpus_per_actor <= 0:
            raise ConfigError(
                f"cpus_per_actor must be > 0, not {self.cpus_per_actor}", "cpus_per_actor"
            )
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ConfigError(
                f"gpus_per_actor must be >= 0, not {self.gpus_per_actor}", "gpus_per_actor"
            )
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, not {self.top_k}", "top_k")
        gpu = self.provider_name in GPU_PROVIDERS
        if gpu and self.gpus_per_actor == 0:
            raise ConfigError(
                f"provider {self.provider!r} runs on a GPU: gpus_per_actor must be > 0",
                "gpus_per_actor",
            )
        if not gpu and self.gpus_per_actor:
            raise ConfigError(
                f"gpus_per_actor={self.gpus_per_actor} needs a GPU provider (cuda), "
                f"not {self.provider!r}",
                "gpus_per_actor",
            )
        if self.invert not in INVERT_MODES:
            raise ConfigError(
                f"invert must be one of {', '.join(INVERT_MODES)}, not {self.invert!r}", "invert"
            )
        if self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be >= 1, not {self.max_pixels}", "max_pixels")

    @property
    def provider_name(self) -> str:
        """The ONNX Runtime name of :attr:`provider` (``auto`` is not allowed: workers must agree)."""
        key = self.provider.strip()
        if key.lower() == "auto":
            raise ConfigError(
                "provider must be named for Ray workers (cpu, cuda, ...), not 'auto'", "provider"
            )
        return PROVIDER_NAMES.get(key.lower(), key)

    @property
    def gpus(self) -> float:
        """GPUs each actor reserves."""
        if self.gpus_per_actor is not None:
            return self.gpus_per_actor
        return 1.0 if self.provider_name in GPU_PROVIDERS else 0.0

    def block_size(self, inputs: int, cpus: float) -> int:
        """Inputs per block for ``inputs`` files on a cluster of ``cpus`` CPUs.

        :attr:`batch_size` when set; else about four blocks per CPU (so no CPU
        idles while the last blocks run), each between 256 inputs (a task's
        start-up is small next to its work) and 4096 (blocks stay small in the
        object store).
        """
        if self.batch_size is not None:
            return self.batch_size
        return min(BLOCK_MAX, max(BLOCK_MIN, math.ceil(inputs / (4 * max(cpus, 1.0)))))

    @property
    def uses_actors(self) -> bool:
        """Whether the model runs in an actor pool (asked for, or on GPUs) rather than in tasks."""
        return self.actors is not None or self.gpus > 0


def import_ray() -> Any:
    """``import ray.data`` (and return ``ray``), or a :class:`RayEngineError` saying how to get it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayEngineError(
            f"Ray Data is not installed ({exc}); install the `scale` extra: "
            "pip install 'mnist-edge[scale]'"
        ) from None
    return ray
