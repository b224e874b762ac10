"""ONNX Runtime sessions for mnist-edge models: providers, options, checks.

Providers are asked for by short name (``cpu``, ``cuda``, ``tensorrt``, ...) or
by their ONNX Runtime name. A provider that is not there is an error naming
what is there; the session never falls back to CPU silently (the CPU fallback
is disabled and the session's providers are checked after it is made).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_edge.runtime.errors import MnistEdgeError, first_line
from mnist_edge.runtime.processes import usable_cores

if TYPE_CHECKING:  # onnxruntime loads when a session is made (the CLI starts its workers first)
    import onnxruntime as ort

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


class ProviderError(MnistEdgeError, RuntimeError):
    """The requested execution provider is unknown or not available here."""


class ModelError(MnistEdgeError, ValueError):
    """The model file is missing, not ONNX, or not an image classifier we can feed."""


class MissingMetadataWarning(UserWarning):
    """The model has no mnist-edge metadata; MNIST defaults are used."""


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
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    available = list(available)
    names = ", ".join(
        ["auto", *(short_name(p) for p in available if p != "AzureExecutionProvider")]
    )
    key = requested.strip()
    if key.lower() == "auto":
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
    import onnxruntime as ort

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
    provider_options: dict[str, str] = {}
    if provider != CPU:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels, when installed
            ort.preload_dlls()
        if provider == "CUDAExecutionProvider":
            provider_options = {
                "cudnn_conv_algo_search": config.cudnn_conv_algo_search,
                "do_copy_in_default_stream": "1",
            }
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=[(provider, provider_options)]
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
