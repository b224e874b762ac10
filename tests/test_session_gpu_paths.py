"""The CUDA/TensorRT paths of runtime/session.py, tested without a GPU (mocked provider lists).

What each test pins down comes from ONNX Runtime's documentation: CUDA
provider options (cuDNN algorithm search; copies on the compute stream),
``preload_dlls`` (once, and never on stdout), ``session.disable_cpu_ep_fallback``,
TensorRT registered with CUDA behind it, and the onnxruntime/onnxruntime-gpu
clash (both distributions share one module folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import onnxruntime as ort
import pytest
from helpers.models import linear_model

from mnist_edge.runtime import extras as extras_mod
from mnist_edge.runtime import session as session_mod
from mnist_edge.runtime.extras import OrtConflictWarning, ort_conflict
from mnist_edge.runtime.session import (
    ProviderError,
    SessionConfig,
    SessionConfigError,
    create_session,
    resolve_provider,
)

GPU_AVAILABLE = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class FakeSession:
    """Records how ``ort.InferenceSession`` was called; pretends it got ``granted`` providers."""

    calls: ClassVar[list[FakeSession]] = []
    granted: ClassVar[list[str] | None] = None  # None: whatever was asked for, then CPU

    def __init__(
        self,
        path: str,
        sess_options: ort.SessionOptions,
        providers: list[str],
        provider_options: list[dict[str, str]],
    ) -> None:
        self.path = path
        self.options = sess_options
        self.providers = providers
        self.provider_options = provider_options
        FakeSession.calls.append(self)

    def get_providers(self) -> list[str]:
        if FakeSession.granted is not None:
            return FakeSession.granted
        return [*self.providers, "CPUExecutionProvider"]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return linear_model(tmp_path / "linear.onnx")


@pytest.fixture
def gpu_host(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A host whose onnxruntime lists CUDA and TensorRT; returns the preload_dlls call log."""
    preloads: list[int] = []
    FakeSession.calls = []
    FakeSession.granted = None
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_AVAILABLE))
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(ort, "preload_dlls", lambda: preloads.append(1), raising=False)
    monkeypatch.setattr(extras_mod, "installed_ort_distributions", lambda: ["onnxruntime-gpu"])
    session_mod.preload_cuda_libraries.cache_clear()
    yield preloads
    session_mod.preload_cuda_libraries.cache_clear()


def _entry(options: ort.SessionOptions, key: str) -> str:
    """A session config entry, or "" when it was never set."""
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # ORT raises for keys that were not added
        return ""


def test_cuda_gets_its_options_and_no_cpu_fallback(model: Path, gpu_host: list[int]) -> None:
    create_session(model, SessionConfig(provider="cuda"))
    (call,) = FakeSession.calls
    assert call.providers == ["CUDAExecutionProvider"]
    assert call.provider_options == [
        {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1"}
    ]
    assert _entry(call.options, "session.disable_cpu_ep_fallback") == "1"


def test_cudnn_search_mode_is_passed_and_checked(model: Path, gpu_host: list[int]) -> None:
    create_session(model, SessionConfig(provider="cuda", cudnn_conv_algo_search="EXHAUSTIVE"))
    assert FakeSession.calls[0].provider_options[0]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    with pytest.raises(SessionConfigError, match="'heuristic' is not one of EXHAUSTIVE, HEURISTIC"):
        SessionConfig(cudnn_conv_algo_search="heuristic")
    with pytest.raises(SessionConfigError, match="threads 0 must be >= 1"):
        SessionConfig(threads=0)


def test_tensorrt_runs_with_cuda_behind_it(model: Path, gpu_host: list[int]) -> None:
    create_session(model, SessionConfig(provider="tensorrt"))
    (call,) = FakeSession.calls
    assert call.providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert call.provider_options[1]["cudnn_conv_algo_search"] == "HEURISTIC"


def test_cpu_session_keeps_its_fallback_and_skips_the_cuda_libraries(
    model: Path, gpu_host: list[int]
) -> None:
    create_session(model, SessionConfig(provider="cpu"))
    (call,) = FakeSession.calls
    assert call.providers == ["CPUExecutionProvider"]
    assert _entry(call.options, "session.disable_cpu_ep_fallback") == ""
    assert gpu_host == []  # preload_dlls is for CUDA/TensorRT only


def test_cuda_libraries_are_preloaded_once_per_process(model: Path, gpu_host: list[int]) -> None:
    create_session(model, SessionConfig(provider="cuda"))
    create_session(model, SessionConfig(provider="cuda"))
    assert gpu_host == [1]


def test_preload_messages_go_to_stderr(
    model: Path, gpu_host: list[int], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # preload_dlls reports missing libraries with print(); results on stdout must stay clean.
    monkeypatch.setattr(ort, "preload_dlls", lambda: print("Failed to load libcudnn.so.9"))
    create_session(model, SessionConfig(provider="cuda"))
    out, err = capsys.readouterr()
    assert out == "" and "libcudnn" in err


def test_session_that_lost_the_gpu_is_an_error(model: Path, gpu_host: list[int]) -> None:
    FakeSession.granted = ["CPUExecutionProvider"]  # e.g. cuDNN missing: ORT fell back
    with pytest.raises(
        ProviderError, match="asked for cuda but the session got CPUExecutionProvider"
    ):
        create_session(model, SessionConfig(provider="cuda"))


def test_conflict_message_names_both_and_the_fix() -> None:
    assert ort_conflict(["onnxruntime-gpu"]) is None
    message = ort_conflict(["onnxruntime", "onnxruntime-gpu"])
    assert message is not None
    assert "onnxruntime and onnxruntime-gpu are all installed" in message
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in message


def test_both_distributions_installed_explain_the_missing_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        extras_mod, "installed_ort_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"]
    )
    with pytest.raises(ProviderError, match="share one `onnxruntime` module folder"):
        resolve_provider("cuda", ["CPUExecutionProvider"])
    with pytest.warns(OrtConflictWarning, match="onnxruntime and onnxruntime-gpu"):
        assert resolve_provider("auto", ["CPUExecutionProvider"]) == "CPUExecutionProvider"


def test_one_distribution_gives_the_plain_gpu_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extras_mod, "installed_ort_distributions", lambda: ["onnxruntime"])
    with pytest.raises(ProviderError, match=r"pip install '\.\[gpu\]'"):
        resolve_provider("cuda", ["CPUExecutionProvider"])


def test_installed_distributions_are_read_from_package_metadata() -> None:
    import importlib.metadata

    found = extras_mod.installed_ort_distributions()
    assert found and set(found) <= set(extras_mod.ORT_DISTRIBUTIONS)
    # the imported module's version is that of one of the distributions found
    assert ort.__version__ in {importlib.metadata.version(name) for name in found}
