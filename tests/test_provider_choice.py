"""Which provider runs a file: `auto` per precision, the OpenVINO settings, the missing-provider error.

These need no OpenVINO build: the choice is made from a list of providers, and
the session calls are recorded. tests/test_openvino.py runs the real provider.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from click.testing import CliRunner
from helpers.models import digit, linear_model
from PIL import Image

from mnist_edge.runtime import session as session_mod
from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.extras import ort_conflict
from mnist_edge.runtime.metadata import ModelMetadata
from mnist_edge.runtime.session import (
    CPU,
    OPENVINO,
    OpenVINOConfig,
    ProviderError,
    SessionConfig,
    SessionConfigError,
    provider_list,
    resolve_provider,
)

CUDA = "CUDAExecutionProvider"
HAVE_OPENVINO = OPENVINO in ort.get_available_providers()


@pytest.mark.parametrize(
    "available, fp32, int8",
    [
        ([OPENVINO, CPU], CPU, OPENVINO),
        ([CUDA, CPU], CUDA, CPU),
        ([CPU], CPU, CPU),
    ],
    ids=["openvino-build", "gpu-build", "cpu-build"],
)
def test_auto_picks_by_file_precision(available, fp32, int8) -> None:
    assert resolve_provider("auto", available, precision="fp32") == fp32
    assert resolve_provider("auto", available, precision="int8") == int8
    assert resolve_provider("openvino", [OPENVINO, CPU], precision="fp32") == OPENVINO


def test_missing_openvino_names_the_extra() -> None:
    with pytest.raises(ProviderError) as info:
        resolve_provider("openvino", [CPU])
    message = str(info.value)
    assert "not available here; available: auto, cpu" in message
    assert "pip install '.[openvino]'" in message and "onnxruntime-openvino" in message
    assert "\n" not in message


@pytest.mark.skipif(HAVE_OPENVINO, reason="this onnxruntime has the OpenVINO provider")
def test_mnist_infer_without_openvino_is_a_one_line_usage_error(tmp_path: Path) -> None:
    from mnist_edge.runtime.cli import main

    model = linear_model(tmp_path / "m.onnx")
    Image.fromarray(digit(3)).save(tmp_path / "3.png")
    result = CliRunner().invoke(
        main, [str(tmp_path / "3.png"), "--model", str(model), "--provider", "openvino"]
    )
    assert result.exit_code == 2
    assert "Invalid value for --provider: provider 'openvino' is not available" in result.output
    assert "pip install '.[openvino]'" in result.output


def test_openvino_settings_are_typed_and_checked() -> None:
    (entry,) = provider_list(OPENVINO, SessionConfig(threads=3))
    name, options = entry
    assert name == OPENVINO and options["device_type"] == "CPU"
    assert json.loads(options["load_config"]) == {
        "CPU": {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "3"}
    }
    gpu = SessionConfig(openvino=OpenVINOConfig(device="GPU.0", precision="f16"))
    (_, options) = provider_list(OPENVINO, gpu)[0]
    assert json.loads(options["load_config"]) == {"GPU.0": {"INFERENCE_PRECISION_HINT": "f16"}}
    with pytest.raises(
        SessionConfigError, match="precision 'fp16' is not one of f32, bf16, f16"
    ) as info:
        OpenVINOConfig(precision="fp16")
    assert info.value.field == "precision"
    with pytest.raises(SessionConfigError, match="device 'TPU' is not one of CPU, GPU, NPU"):
        OpenVINOConfig(device="TPU")


@pytest.fixture
def openvino_build(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """An onnxruntime that lists OpenVINO whose OpenVINO sessions fail; returns the providers opened.

    CPU sessions are real; an OpenVINO one raises as a file with operators
    OpenVINO lacks does (the CPU fallback is disabled).
    """
    opened: list[str] = []
    real_open = session_mod._open

    def fake_open(path, provider, config, quiet=False):
        opened.append(provider)
        if provider == OPENVINO:
            raise ProviderError(f"openvino could not run {path}: nodes assigned to the CPU EP")
        return real_open(path, provider, config, quiet)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [OPENVINO, CPU])
    monkeypatch.setattr(session_mod, "_open", fake_open)
    return opened


def test_auto_reads_the_file_then_keeps_cpu_when_openvino_cannot_run_it(
    tmp_path: Path, openvino_build: list[str]
) -> None:
    int8 = linear_model(tmp_path / "int8.onnx", metadata=ModelMetadata(precision="int8"))
    fp32 = linear_model(tmp_path / "fp32.onnx")
    assert Classifier(int8).provider == CPU
    assert openvino_build == [CPU, OPENVINO]  # read on CPU, tried on OpenVINO, kept on CPU
    openvino_build.clear()
    assert Classifier(fp32).provider == CPU
    assert openvino_build == [CPU]  # an fp32 file is never tried on OpenVINO
    with pytest.raises(ProviderError, match="openvino could not run"):
        Classifier(int8, provider="openvino")  # asked for by name: no fallback


def test_conflict_of_the_openvino_build_keeps_it() -> None:
    message = ort_conflict(["onnxruntime", "onnxruntime-openvino"])
    assert message is not None
    assert message.endswith(
        "`pip uninstall -y onnxruntime onnxruntime-openvino && pip install onnxruntime-openvino`"
    )


def test_auto_on_a_gpu_build_keeps_int8_files_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = session_mod._open

    def record(path, provider, config, quiet=False):
        opened.append(provider)
        return real_open(path, CPU, config, quiet)  # no GPU here: every session is a CPU one

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(session_mod, "_open", record)
    Classifier(linear_model(tmp_path / "int8.onnx", metadata=ModelMetadata(precision="int8")))
    assert opened == [CPU]
    opened.clear()
    Classifier(linear_model(tmp_path / "fp32.onnx"))
    assert opened == [CPU, CUDA]  # read on CPU, run on CUDA
