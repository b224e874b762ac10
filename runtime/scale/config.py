"""Settings and errors of the Ray engine (:mod:`mnist_edge.runtime.scale`); imports without Ray."""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass, replace
from typing import Any

import onnxruntime as ort

from mnist_edge.runtime.errors import ConfigError, MnistEdgeError
from mnist_edge.runtime.extras import install_advice, require_extras
from mnist_edge.runtime.inputs import MAX_PIXELS, check_max_pixels
from mnist_edge.runtime.metadata import INVERT_MODES
from mnist_edge.runtime.session import (
    GPU_PROVIDERS,
    PROVIDER_NAMES,
    is_auto,
    resolve_provider,
    short_name,
)
from mnist_edge.runtime.stream import PipelineConfig
from mnist_edge.runtime.workers import WORKER_BATCH

BLOCK_MIN, BLOCK_MAX = 256, 4096
"""The range :meth:`RayConfig.block_size` picks from."""


class RayEngineError(MnistEdgeError, RuntimeError):
    """Ray cannot be imported, the cluster cannot be reached, or the inputs are not what the engine takes."""


@dataclass(frozen=True)
class RayConfig:
    """How the Ray Data job runs.

    Attributes:
        provider: ONNX Runtime provider of the workers: ``auto``, ``cpu``, or a GPU one
            (``cuda``, ...). ``auto`` is resolved once, where the job is planned, by the
            local engine's rule (:meth:`resolved`); a named provider is sent as named.
            Workers never fall back: one that cannot get the provider fails.
        batch_size: images per ONNX Runtime call, as in the local engine; on a CPU
            provider a worker (one thread) calls at most
            :data:`~mnist_edge.runtime.workers.WORKER_BATCH` at a time, as the local
            engine's worker processes do (:attr:`images_per_call`).
        files_per_task: input files per block: one Ray task (or actor call) reads,
            decodes and classifies a block. ``None``: :meth:`block_size` picks it from
            the input's size and the cluster's CPUs.
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
        model_batch: (init only) the old name of ``batch_size``, still accepted.

    Raises:
        ConfigError: a value out of range or inconsistent; ``field`` names it.
    """

    provider: str = "auto"
    batch_size: int = PipelineConfig.batch_size
    files_per_task: int | None = None
    actors: int | None = None
    cpus_per_actor: float = 0.5
    gpus_per_actor: float | None = None
    invert: str = "auto"
    max_pixels: int = MAX_PIXELS
    top_k: int = 0
    rows_per_file: int = 100_000
    model_batch: InitVar[int | None] = None

    def __post_init__(self, model_batch: int | None) -> None:
        if model_batch is not None:
            if self.batch_size not in (model_batch, PipelineConfig.batch_size):
                raise ConfigError(
                    f"model_batch={model_batch} and batch_size={self.batch_size} disagree "
                    "(model_batch is the old name of batch_size): give batch_size only",
                    "batch_size",
                )
            object.__setattr__(self, "batch_size", model_batch)
        for name in ("batch_size", "files_per_task", "rows_per_file"):
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
        if not self.auto:
            self._check_gpus()
        if self.invert not in INVERT_MODES:
            raise ConfigError(
                f"invert must be one of {', '.join(INVERT_MODES)}, not {self.invert!r}", "invert"
            )
        check_max_pixels(self.max_pixels)

    def _check_gpus(self) -> None:
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

    @property
    def auto(self) -> bool:
        """Whether :attr:`provider` is ``auto`` (not yet :meth:`resolved`)."""
        return is_auto(self.provider)

    def resolved(self, precision: str) -> RayConfig:
        """This config with :attr:`provider` named for the workers, checked here.

        ``auto`` picks by the local engine's rule for a model file of ``precision``
        among the providers this machine's ONNX Runtime has
        (:func:`~mnist_edge.runtime.session.resolve_provider`): the workers then all
        open the model on that one. A named provider stays as named (the workers may
        have one this machine lacks); only its name is checked.

        Raises:
            ProviderError: an unknown name, or ``auto`` finds nothing usable here.
            ConfigError: ``auto`` picked a CPU provider but :attr:`gpus_per_actor` asks for GPUs.
        """
        if not self.auto:
            # any provider ONNX Runtime has a name for (or this machine has): workers may have it
            resolve_provider(
                self.provider, available=[*PROVIDER_NAMES.values(), *ort.get_available_providers()]
            )
            return self
        chosen = short_name(resolve_provider(self.provider, precision=precision))
        if self.gpus_per_actor and PROVIDER_NAMES.get(chosen, chosen) not in GPU_PROVIDERS:
            raise ConfigError(
                f"provider auto picks {chosen} on this machine, which has no GPU provider, "
                f"but gpus_per_actor={self.gpus_per_actor:g}: name the workers' provider "
                "(e.g. cuda) when the GPUs are on other nodes",
                "provider",
            )
        return replace(self, provider=chosen)

    @property
    def provider_name(self) -> str:
        """The ONNX Runtime name of :attr:`provider` (``auto`` must be :meth:`resolved` first:
        workers must agree)."""
        if self.auto:
            raise ConfigError(
                "provider auto is resolved where the job is planned (RayConfig.resolved), "
                "not by each worker",
                "provider",
            )
        key = self.provider.strip()
        return PROVIDER_NAMES.get(key.lower(), key)

    @property
    def images_per_call(self) -> int:
        """Images per ONNX Runtime call in a worker: :attr:`batch_size`, at most
        :data:`~mnist_edge.runtime.workers.WORKER_BATCH` on a CPU provider (one thread
        per worker, whose best is a few dozen images per call)."""
        if self.provider_name in GPU_PROVIDERS:
            return self.batch_size
        return min(self.batch_size, WORKER_BATCH)

    @property
    def gpus(self) -> float:
        """GPUs each actor reserves."""
        if self.gpus_per_actor is not None:
            return self.gpus_per_actor
        return 1.0 if self.provider_name in GPU_PROVIDERS else 0.0

    def block_size(self, inputs: int, cpus: float) -> int:
        """Input files per block for ``inputs`` files on a cluster of ``cpus`` CPUs.

        :attr:`files_per_task` when set; else about four blocks per CPU (so no CPU
        idles while the last blocks run), each between 256 files (a task's
        start-up is small next to its work) and 4096 (blocks stay small in the
        object store).
        """
        if self.files_per_task is not None:
            return self.files_per_task
        return min(BLOCK_MAX, max(BLOCK_MIN, math.ceil(inputs / (4 * max(cpus, 1.0)))))

    @property
    def uses_actors(self) -> bool:
        """Whether the model runs in an actor pool (asked for, or on GPUs) rather than in tasks."""
        return self.actors is not None or self.gpus > 0


def import_ray() -> Any:
    """``import ray.data`` and return ``ray``.

    Raises:
        MissingExtraError: Ray or pyarrow is not installed (the ``scale`` extra).
        RayEngineError: they are installed but do not import.
    """
    require_extras("the Ray engine", "scale")
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayEngineError(
            f"Ray Data is installed but does not import ({exc}); {install_advice('scale')} again"
        ) from None
    return ray
