"""ONNX Runtime sessions for mnist-edge models: providers, options, checks.

Providers are asked for by short name (``cpu``, ``cuda``, ``openvino``, ...) or
by their ONNX Runtime name. A provider that is not there is an error naming
what is there and how to get it; the session never falls back to CPU silently
(the CPU fallback is disabled and the session's providers are checked after it
is made).

``auto`` picks per file precision, by measurement (docs/providers.md): an int8
file runs on OpenVINO when that build is installed and can run it (the CPU
provider's int8 kernels are slower than its fp32 ones for this network), else
on the CPU provider; an fp32 file on CUDA when present, else on the CPU provider.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from mnist_edge.runtime.errors import (
    ModelError,
    ProviderError,
    SessionConfigError,
    first_line,
)
from mnist_edge.runtime.extras import ORT_BUILDS, OrtConflictWarning, ort_build_advice, ort_conflict
from mnist_edge.runtime.metadata import ModelMetadata
from mnist_edge.runtime.processes import usable_cores

CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"

PROVIDER_NAMES: dict[str, str] = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": OPENVINO,
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}
# `auto` tries these in order, per file precision. TensorRT is left out: building
# its engine takes far longer than this 35k-parameter model needs to run on CUDA.
# int8 (QDQ) files skip the GPU providers: their int8 kernels are a CPU feature.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "fp32": ("cuda", "rocm", "directml", "coreml", "cpu"),
    "int8": ("openvino", "cpu"),
}
GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider"}
# ONNX Runtime's CUDA provider option values (its default is EXHAUSTIVE).
CUDNN_CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
# OpenVINO's INFERENCE_PRECISION_HINT values; and the device families it names.
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")
OPENVINO_DEVICES = ("CPU", "GPU", "NPU", "AUTO", "HETERO", "MULTI")
# Where a provider's ONNX Runtime build comes from: the mnist-edge extra that brings it,
# else the PyPI distribution; providers in neither come from builds outside PyPI.
PROVIDER_EXTRAS = {"cuda": "gpu", "tensorrt": "gpu", "openvino": "openvino"}
PROVIDER_DISTRIBUTIONS = {"directml": "onnxruntime-directml", "qnn": "onnxruntime-qnn"}


def install_hint(provider: str) -> str:
    """How to get the ONNX Runtime build with ``provider`` (a short name), for a pip install or a clone."""
    if provider in PROVIDER_EXTRAS:
        extra = PROVIDER_EXTRAS[provider]
        return ort_build_advice(ORT_BUILDS[extra], extra)
    if provider in PROVIDER_DISTRIBUTIONS:
        return ort_build_advice(PROVIDER_DISTRIBUTIONS[provider])
    if provider == "coreml":
        return "run on macOS, where the cpu extra's onnxruntime includes it"
    return "install an ONNX Runtime build that includes it (no mnist-edge extra brings one)"


class MissingMetadataWarning(UserWarning):
    """The model has no mnist-edge metadata; MNIST defaults are used."""


def short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda`` (unknown names are returned as they are)."""
    for short, full in PROVIDER_NAMES.items():
        if full == provider:
            return short
    return provider


def is_auto(requested: str) -> bool:
    """Whether a requested provider name means ``auto``."""
    return requested.strip().lower() == "auto"


def auto_provider(available: Sequence[str], precision: str = "fp32") -> str | None:
    """What ``auto`` picks among ``available`` for a file of ``precision`` (``None``: nothing usable)."""
    for short in AUTO_ORDER.get(precision, AUTO_ORDER["fp32"]):
        if PROVIDER_NAMES[short] in available:
            return PROVIDER_NAMES[short]
    return None


def resolve_provider(
    requested: str, available: Sequence[str] | None = None, precision: str = "fp32"
) -> str:
    """Map ``auto``/short/full names to an available ONNX Runtime provider name.

    Args:
        requested: ``auto``, a short name or an ONNX Runtime provider name.
        available: the providers to choose from (default: this onnxruntime build's).
        precision: the model file's precision (``fp32``, ``int8``); only ``auto`` reads it.

    Raises:
        ProviderError: unknown name, or not available in this onnxruntime build
            (the message lists what is available and how to get the provider).
    """
    available = list(ort.get_available_providers() if available is None else available)
    conflict = ort_conflict()
    names = ", ".join(
        ["auto", *(short_name(p) for p in available if p != "AzureExecutionProvider")]
    )
    key = requested.strip()
    if is_auto(key):
        if conflict:
            warnings.warn(conflict, OrtConflictWarning, stacklevel=2)
        chosen = auto_provider(available, precision)
        if chosen is None:
            raise ProviderError(f"no usable execution provider; available: {names}")
        return chosen
    full = PROVIDER_NAMES.get(key.lower(), key)
    if full not in PROVIDER_NAMES.values() and full not in available:
        raise ProviderError(
            f"unknown provider {requested!r}; choose one of: {names} "
            f"(known names: {', '.join(PROVIDER_NAMES)})"
        )
    if full not in available and conflict:
        raise ProviderError(f"provider {requested!r} is not available here: {conflict}")
    if full not in available:
        raise ProviderError(
            f"provider {requested!r} is not available here; available: {names}. "
            f"To get it, {install_hint(short_name(full))}"
        )
    return full


@dataclass(frozen=True)
class OpenVINOConfig:
    """Settings of the OpenVINO provider (``provider="openvino"``, or ``auto`` on an int8 file).

    Threads come from :attr:`SessionConfig.threads` (OpenVINO's ``INFERENCE_NUM_THREADS``).

    Attributes:
        device: the OpenVINO device: ``CPU``, ``GPU`` (``GPU.0``, ...), ``NPU``, or a
            combination such as ``AUTO:GPU,CPU``.
        precision: OpenVINO's inference precision hint. ``f32`` computes an fp32
            file as exported (OpenVINO itself would pick bf16 on CPUs that have it,
            which changes the probabilities); ``bf16``/``f16`` trade exactness for
            speed on CPUs with BF16/AMX or on GPUs. int8 files keep their int8
            operations either way.
    """

    device: str = "CPU"
    precision: str = "f32"

    def __post_init__(self) -> None:
        family = self.device.split(":")[0].split(".")[0]
        if family not in OPENVINO_DEVICES:
            raise SessionConfigError(
                f"OpenVINO device {self.device!r} is not one of {', '.join(OPENVINO_DEVICES)} "
                "(optionally with .N or :DEVICES, e.g. GPU.0, AUTO:GPU,CPU)",
                "device",
            )
        if self.precision not in OPENVINO_PRECISIONS:
            raise SessionConfigError(
                f"OpenVINO precision {self.precision!r} is not one of {', '.join(OPENVINO_PRECISIONS)}",
                "precision",
            )


@dataclass(frozen=True)
class SessionConfig:
    """How to run the model.

    Attributes:
        provider: ``auto``, a short name (``cpu``, ``cuda``, ``openvino``, ...) or an
            ONNX Runtime provider name.
        threads: intra-op threads for CPU (the CPU provider and OpenVINO on CPU);
            ``None`` = the cores this process may use.
        allow_spinning: keep CPU threads spinning between runs (lower latency, but
            burns cores that image decoding could use; off for the CLI pipeline).
        io_binding: use IOBinding; ``None`` = on for GPU providers.
        cudnn_conv_algo_search: ``HEURISTIC`` (no per-shape benchmarking, good
            when batch sizes vary), ``EXHAUSTIVE`` or ``DEFAULT``.
        openvino: the OpenVINO provider's device and precision hint.
    """

    provider: str = "auto"
    threads: int | None = None
    allow_spinning: bool = False
    io_binding: bool | None = None
    cudnn_conv_algo_search: str = "HEURISTIC"
    openvino: OpenVINOConfig = OpenVINOConfig()

    @property
    def auto(self) -> bool:
        """Whether :attr:`provider` is ``auto`` (the one place that spelling is read)."""
        return is_auto(self.provider)

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
    nodes TensorRT cannot build run on the GPU rather than fail. OpenVINO gets its
    device, and its precision hint and threads as OpenVINO properties
    (``load_config``, which replaced the older ``precision``/``num_of_threads`` keys).
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
    if provider == OPENVINO:
        ov = config.openvino
        properties = {"INFERENCE_PRECISION_HINT": ov.precision}
        if ov.device == "CPU":
            threads = config.threads if config.threads is not None else usable_cores()
            properties["INFERENCE_NUM_THREADS"] = str(threads)
        load_config = json.dumps({ov.device: properties}, sort_keys=True)
        return [(provider, {"device_type": ov.device, "load_config": load_config})]
    return [(provider, {})]


def _load_error(path: Path, exc: BaseException) -> ModelError:
    return ModelError(f"{path} is not a valid ONNX model ({first_line(exc)[:200]})")


def create_session(
    model: str | os.PathLike[str], config: SessionConfig = SessionConfig()
) -> ort.InferenceSession:
    """Open ``model`` on the configured provider.

    With ``auto``, when the choice depends on the file's precision (an OpenVINO
    or GPU build), the file is first opened on the CPU provider to read it; an
    int8 file that OpenVINO cannot run stays there.

    Raises:
        ModelError: the file is missing or not a loadable ONNX model.
        ProviderError: the provider is not available, or the session did not get it.
    """
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    provider = resolve_provider(config.provider)
    if not config.auto:
        return _open(path, provider, config)
    for_int8 = auto_provider(ort.get_available_providers(), "int8") or provider
    if for_int8 == provider:
        return _open(path, provider, config)
    on_cpu = _open(path, CPU, config)
    if file_precision(on_cpu) != "int8":
        return on_cpu if provider == CPU else _open(path, provider, config)
    if for_int8 == CPU:
        return on_cpu
    try:
        return _open(path, for_int8, config, quiet=True)
    except ProviderError:  # e.g. the pixels-in files: OpenVINO lacks some of their operators
        return on_cpu  # `auto` means what runs; the session names its provider


def file_precision(session: ort.InferenceSession) -> str:
    """The precision a session's model file records (``fp32`` when it records none or garbage)."""
    try:
        return ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map).precision
    except ValueError:  # reported by whoever reads the metadata for real (Classifier)
        return "fp32"


def _open(
    path: Path, provider: str, config: SessionConfig, quiet: bool = False
) -> ort.InferenceSession:
    """An ``InferenceSession`` of ``path`` on ``provider`` (a full name), checked to have got it.

    ``quiet``: ORT logs nothing, not even the error of a failure the caller handles.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # errors only (ORT warnings would garble our output); fatal only when quiet
    options.log_severity_level = 4 if quiet else 3
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
        check = (
            "check the CUDA/cuDNN installation (see `onnxruntime.preload_dlls`)"
            if provider in GPU_PROVIDERS
            else "check the onnxruntime installation"
        )
        raise ProviderError(
            f"asked for {short_name(provider)} but the session got {', '.join(got) or 'nothing'}; {check}"
        )
    return session
