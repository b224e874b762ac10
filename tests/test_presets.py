"""int8 presets (export/presets.py): which one ``auto`` picks, and that each keeps the accuracy bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from test_cpu import ALDER_LAKE, EPYC_AVX2, GRAVITON3, SAPPHIRE_RAPIDS

from mnist_edge.export.cli import main
from mnist_edge.export.config import INT8_TARGETS, ExportConfig, ExportConfigError
from mnist_edge.export.cpu import CpuFeatures, parse_cpuinfo
from mnist_edge.export.parity import open_session, run_session
from mnist_edge.export.presets import PRESETS, int8_preset, resolve_target
from mnist_edge.export.spec import GraphSpec

# The bound of issue 9, on the real model: within 0.1 point of fp32 and >= 99.5 %
# top-1 agreement. Here on the fixture model (255 training steps) and 2,000 test
# images: at most 2 images lost, at most 10 answers changed.
EVAL = 2000
MAX_LOST = 2
MIN_AGREEMENT = 0.995


@pytest.mark.parametrize(
    ("text", "machine", "target"),
    [
        (SAPPHIRE_RAPIDS, "x86_64", "x86-vnni"),
        (ALDER_LAKE, "x86_64", "x86-vnni"),
        (EPYC_AVX2, "x86_64", "x86-avx2"),
        (GRAVITON3, "aarch64", "arm64"),
        ("flags : sse2 sse4_2", "x86_64", "portable"),
        ("", "riscv64", "portable"),
    ],
    ids=["avx512-vnni", "avx-vnni", "avx2", "arm64", "old-x86", "unknown"],
)
def test_auto_reads_the_cpu_flags(text: str, machine: str, target: str) -> None:
    assert resolve_target("auto", parse_cpuinfo(text, machine)) == target


def test_named_target_ignores_the_host() -> None:
    assert resolve_target("arm64", parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")) == "arm64"


def test_every_target_but_auto_has_a_preset() -> None:
    assert set(PRESETS) == set(INT8_TARGETS) - {"auto"}
    # 7-bit weights exactly where an int16 accumulation could saturate
    assert PRESETS["x86-avx2"].quantize.reduce_range and PRESETS["portable"].quantize.reduce_range
    assert not PRESETS["x86-vnni"].quantize.reduce_range
    assert not PRESETS["arm64"].quantize.reduce_range


def test_preset_takes_the_calibration_count() -> None:
    preset = int8_preset("x86-vnni", 300, CpuFeatures("x86_64"))
    assert preset.target == "x86-vnni" and preset.quantize.calibration_images == 300


def test_unknown_target_is_rejected_in_config_and_cli(tmp_path: Path) -> None:
    with pytest.raises(ExportConfigError, match="int8 target 'avx9' is not one of auto, x86-vnni"):
        ExportConfig(int8_target="avx9")
    with pytest.raises(ExportConfigError, match="int8 target 'avx9'"):
        resolve_target("avx9", CpuFeatures("x86_64"))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    result = CliRunner().invoke(main, ["--checkpoint", str(ckpt), "--int8-target", "avx9"])
    assert result.exit_code == 2 and "'avx9' is not one of 'auto', 'x86-vnni'" in result.output


@pytest.fixture(scope="module")
def exported_fp32(trained_checkpoint: Path, mnist) -> tuple[onnx.ModelProto, np.ndarray]:
    from mnist_edge.export.onnx import torch_to_onnx
    from mnist_edge.train.checkpoint import load_checkpoint

    model = torch_to_onnx(load_checkpoint(trained_checkpoint).model, GraphSpec())
    images = mnist.test_images[:EVAL].numpy()  # (EVAL, 1, 28, 28)
    probs = run_session(open_session(model.SerializeToString()), GraphSpec(), images)
    return model, probs


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(PRESETS))
def test_preset_keeps_the_accuracy_bound(exported_fp32, mnist, target: str) -> None:
    from mnist_edge.export.quantize import quantize_int8

    fp32, p32 = exported_fp32
    preset = int8_preset(target, 500)
    calib = mnist.train_images[:500].numpy()
    int8 = quantize_int8(fp32, calib, GraphSpec(), preset.quantize)
    p8 = run_session(
        open_session(int8.SerializeToString()), GraphSpec(), mnist.test_images[:EVAL].numpy()
    )
    labels = mnist.test_labels[:EVAL].numpy()
    lost = int(np.sum(p32.argmax(1) == labels) - np.sum(p8.argmax(1) == labels))
    assert lost <= MAX_LOST
    assert np.mean(p8.argmax(1) == p32.argmax(1)) >= MIN_AGREEMENT
    assert len(int8.SerializeToString()) <= 50_000
