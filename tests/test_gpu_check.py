"""bench/gpu_check.py (``make gpu-check``): GPU detection and the no-GPU path, on any machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # the GPU check is a script of bench/, not a module

from gpu_check import detect_gpus, goals  # noqa: E402

NVIDIA_SMI_L = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5d3b7c4e-0000-0000-0000-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-5d3b7c4e-0000-0000-0000-000000000001)
"""


def test_gpus_are_read_from_nvidia_smi() -> None:
    assert detect_gpus(NVIDIA_SMI_L) == ["NVIDIA H100 80GB HBM3"] * 2
    assert detect_gpus("No devices were found\n") == []
    assert detect_gpus("") == []


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path: Path) -> None:
    # An empty PATH: no nvidia-smi, so no GPU, whatever machine runs the test.
    env = dict(os.environ, PATH=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--artifacts", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines == [
        "gpu-check: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing to measure"
    ]
    assert not (tmp_path / "gpu-check.json").exists()


def test_goals_are_judged_only_where_measured() -> None:
    assert goals({"train": {"status": "failed", "error": "no CUDA"}}, 0.99) == []
    results = {
        "train": {"status": "ok", "whole_run_seconds": 12.5, "test_accuracy": 0.9912},
        "model_only": {"status": "ok", "cuda_best_vs_cpu": 8.0},
        "end_to_end": {
            "status": "ok",
            "decode_only_images_per_s": 10_000,
            "cuda": {"images_per_s": 9_000},
        },
    }
    judged = {g["goal"].split()[0]: g["pass"] for g in goals(results, cpu_accuracy=0.9915)}
    assert judged == {"15-epoch": True, "CUDA": False, "mnist-infer": True}
    # slower accuracy than the CPU run by more than 0.2 points fails the training goal
    results["train"]["test_accuracy"] = 0.9880
    assert goals(results, cpu_accuracy=0.9915)[0]["pass"] is False
