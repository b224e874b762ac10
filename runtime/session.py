"""ONNX Runtime sessions for mnist-edge models: providers, options, checks.

Providers are asked for by short name (``cpu``, ``cuda``, ``tensorrt``, ...) or
by their ONNX Runtime name. A provider that is not there is an error naming
what is there; the session never falls back to CPU silently (the CPU fallback
is disabled and the session's providers are checked after it is made).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from mnist_edge.runtime.errors import ConfigError, MnistEdgeError, first_line
from mnist_edge.runtime.processes import usable_cores

CPU = "CPUExecutionProvider"

PROVIDER_NAMES: dict[str, str] = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}
# `auto` tries these in order. TensorRT is left out: building its engine takes
# far longer than this 35k-parameter model needs to run on CUDA.
AUTO_ORDER = ("cuda", "rocm", "directml", "coreml", "cpu")
GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider"}
# ONNX Runtime's CUDA provider option values (its default is EXHAUSTIVE).
CUDNN_CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
# PyPI distributions that all install the same `onnxruntime` module folder: with two
# of them installed, whichever was installed last owns the files and the other's
# providers silently disappear (microsoft/onnxruntime#26996).
ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
    "onnxruntime-training",
)


class ProviderError(MnistEdgeError, RuntimeError):
    """The requested execution provider is unknown or not available here."""


class SessionConfigError(ConfigError):
    """A :class:`SessionConfig` value is out of range; the message names it and the allowed values."""


class ModelError(MnistEdgeError, ValueError):
    """The model file is missing, not ONNX, or not an image classifier we can feed."""


class MissingMetadataWarning(UserWarning):
    """The model has no mnist-edge metadata; MNIST defaults are used."""


class OrtConflictWarning(UserWarning):
    """More than one ONNX Runtime distribution is installed; their providers may be missing."""


def installed_ort_distributions() -> list[str]:
    """The ONNX Runtime distributions installed here (see :data:`ORT_DISTRIBUTIONS`)."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def ort_conflict(distributions: Sequence[str] | None = None) -> str | None:
    """A one-line explanation when several ONNX Runtime distributions are installed, else ``None``."""
    found = list(installed_ort_distributions() if distributions is None else distributions)
    if len(found) < 2:
        return None
    keep = "onnxruntime-gpu" if "onnxruntime-gpu" in found else found[-1]
    return (
        f"{' and '.join(found)} are all installed; they share one `onnxruntime` module folder, "
        f"so the providers of all but one are missing. Keep one: "
        f"`pip uninstall -y {' '.join(found)} && pip install {keep}`"
    )


def short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda`` (unknown names are returned as they are)."""
    for short, full in PROVIDER_NAMES.items():
        if full == provider:
            return short
    return provider


def resolve_provider(requested: str, available: Sequence[str] | None = None) -> str:
    """Map ``auto``/short/full names to an available ONNX Runtime provider name.

    Raises:
        ProviderError: unknown name, or not available in this onnxruntime build
            (the message lists what is available and how to get GPU support).
    """
    available = list(ort.get_available_providers() if available is None else available)
    conflict = ort_conflict()
    names = ", ".join(
        ["auto", *(short_name(p) for p in available if p != "AzureExecutionProvider")]
    )
    key = requested.strip()
    if key.lower() == "auto":
        if conflict:
            warnings.warn(conflict, OrtConflictWarning, stacklevel=2)
        for short in AUTO_ORDER:
            if PROVIDER_NAMES[short] in available:
                return PROVIDER_NAMES[short]
        raise ProviderError(f"no usable execution provider; available: {names}")
    full = PROVIDER_NAMES.get(key.lower(), key)
    if full not in PROVIDER_NAMES.values() and full not in available:
        raise ProviderError(
            f"unknown provider {requested!r}; choose one of: {names} "
            f"(known names: {', '.join(PROVIDER_NAMES)})"
        )
    if full not in available and conflict:
        raise ProviderError(f"provider {requested!r} is not available here: {conflict}")
    if full not in available:
        hint = (
            "install the GPU build instead of the CPU one: "
            "`pip uninstall onnxruntime && pip install '.[gpu]'` (the `gpu` extra, onnxruntime-gpu)"
            if full in GPU_PROVIDERS
            else "install an onnxruntime build that includes it"
        )
        raise ProviderError(
            f"provider {requested!r} is not available here; available: {names}. To get it, {hint}"
        )
    return full


@dataclass(frozen=True)
class SessionConfig:
    """How to run the model.

    Attributes:
        provider: ``auto``, a short name (``cpu``, ``cuda``, ...) or an ONNX Runtime provider name.
        threads: intra-op threads for CPU; ``None`` = the cores this process may use.
        allow_spinning: keep CPU threads spinning between runs (lower latency, but
            burns cores that image decoding could use; off for the CLI pipeline).
        io_binding: use IOBinding; ``None`` = on for GPU providers.
        cudnn_conv_algo_search: ``HEURISTIC`` (no per-shape benchmarking, good
            when batch sizes vary), ``EXHAUSTIVE`` or ``DEFAULT``.
    """

    provider: str = "auto"
    threads: int | None = None
    allow_spinning: bool = False
    io_binding: bool | None = None
    cudnn_conv_algo_search: str = "HEURISTIC"

    def __post_init__(self) -> None:
        if self.cudnn_conv_algo_search not in CUDNN_CONV_ALGO_SEARCH:
            raise SessionConfigError(
                f"cudnn_conv_algo_search {self.cudnn_conv_algo_search!r} is not one of "
                f"{', '.join(CUDNN_CONV_ALGO_SEARCH)}",
                "cudnn_conv_algo_search",
            )
        if self.threads is not None and self.threads < 1:
            raise SessionConfigError(
                f"threads {self.threads} must be >= 1 (or None for all usable cores)", "threads"
            )


@functools.cache
def preload_cuda_libraries() -> bool:
    """Load CUDA and cuDNN from the ``nvidia-*`` wheels (or torch) once per process.

    ``onnxruntime.preload_dlls`` (onnxruntime-gpu >= 1.21) finds the libraries
    that pip installed beside it; without it the CUDA provider only finds
    system-wide ones. It reports missing libraries with ``print``: that goes to
    stderr here, so results written to stdout (``mnist-infer -o -``) stay clean.
    Returns whether it was called (older builds lack it).
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return False
    with contextlib.redirect_stdout(sys.stderr):
        preload()
    return True


def provider_list(provider: str, config: SessionConfig) -> list[tuple[str, dict[str, str]]]:
    """The ``providers`` argument of ``InferenceSession`` for ``provider`` (a full name).

    CUDA gets its cuDNN search mode and copies on the compute stream.
    TensorRT is followed by CUDA, as ONNX Runtime's TensorRT guide advises, so
    nodes TensorRT cannot build run on the GPU rather than fail.
    """
    cuda = (
        "CUDAExecutionProvider",
        {
            "cudnn_conv_algo_search": config.cudnn_conv_algo_search,
            "do_copy_in_default_stream": "1",
        },
    )
    if provider == "CUDAExecutionProvider":
        return [cuda]
    if provider == "TensorrtExecutionProvider":
        return [(provider, {}), cuda]
    return [(provider, {})]


def _load_error(path: Path, exc: BaseException) -> ModelError:
    return ModelError(f"{path} is not a valid ONNX model ({first_line(exc)[:200]})")


def create_session(
    model: str | os.PathLike[str], config: SessionConfig = SessionConfig()
) -> ort.InferenceSession:
    """Open ``model`` on the configured provider.

    Raises:
        ModelError: the file is missing or not a loadable ONNX model.
        ProviderError: the provider is not available, or the session did not get it.
    """
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    provider = resolve_provider(config.provider)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; ORT warnings would garble our output
    threads = config.threads if config.threads is not None else usable_cores()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if config.allow_spinning else "0"
    )
    if provider != CPU:
        # Session creation fails if any node would land on the CPU provider.
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        preload_cuda_libraries()
    providers = provider_list(provider, config)
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=options,
            providers=[name for name, _ in providers],
            provider_options=[opts for _, opts in providers],
        )
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/RuntimeException types
        text = str(exc)
        unreadable = any(w in text for w in ("Protobuf", "protobuf", "Load model", "ModelProto"))
        if provider != CPU and not unreadable:
            # e.g. a node the provider cannot run while CPU fallback is disabled
            raise ProviderError(
                f"{short_name(provider)} could not run {path}: {first_line(exc)[:300]}; use the cpu provider"
            ) from exc
        raise _load_error(path, exc) from exc
    got = session.get_providers()
    if not got or got[0] != provider:
        raise ProviderError(
            f"asked for {short_name(provider)} but the session got {', '.join(got) or 'nothing'}; "
            "check the CUDA/cuDNN installation (see `onnxruntime.preload_dlls`)"
        )
    return session
