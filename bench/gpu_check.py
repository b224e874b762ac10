"""GPU check (``make gpu-check``): run the CUDA paths end to end and measure them.

Run from the repo root, with any Python that has torch and onnxruntime-gpu
(the venv's when there is one; a torch other than the pinned one is fine)::

    python3 bench/gpu_check.py

Installs nothing. Without an NVIDIA GPU (``nvidia-smi`` finds none) it says so
in one line and exits 0. Otherwise it runs, each step recorded even when an
earlier one failed:

1. the ``gpu``-marked tests (``pytest -m gpu``);
2. the full 15-epoch training recipe on CUDA: seconds per epoch, whole run,
   test accuracy (into ``artifacts/gpu-check/``, beside the CPU run);
3. the export of that checkpoint (fp32 + int8);
4. ``mnist-infer --provider cuda`` (and ``tensorrt`` where present) over the
   10k MNIST test PNGs, against decoding alone;
5. model-only throughput on CUDA with IOBinding (input and output OrtValues on
   the device) at batch 1, 256, 4096 and 65536, against fp32 on the CPU.

Writes ``artifacts/gpu-check.json`` (atomically) and prints a table with the
goals as PASS/FAIL. Exit status: 0, or 1 when a step could not run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchutil import parse_summary  # bench/ is sys.path[0] for scripts

REPO = Path(__file__).resolve().parents[1]
GPU_CHECK_JSON = "gpu-check.json"  # in the artifacts folder, beside bench.json
GPU_BATCHES = (1, 256, 4096, 65536)
# Goals on an H100-class GPU.
GOAL_TRAIN_SECONDS = 15.0
GOAL_CUDA_VS_CPU = 10.0
GOAL_DECODE_BOUND = 0.8  # end to end reaches >= 80 % of the decode-only rate


def detect_gpus(nvidia_smi: str | None = None) -> list[str]:
    """GPU names from ``nvidia-smi -L`` (empty when there is no tool or no GPU).

    Args:
        nvidia_smi: that command's output, for tests; ``None`` runs it.
    """
    if nvidia_smi is None:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return []
        try:
            proc = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return []
        if proc.returncode != 0:
            return []
        nvidia_smi = proc.stdout
    gpus = []
    for line in nvidia_smi.splitlines():
        line = line.strip()
        if line.startswith("GPU ") and ":" in line:
            gpus.append(line.split(":", 1)[1].split("(UUID")[0].strip())
    return gpus


def ensure_importable() -> dict[str, str]:
    """Make ``mnist_edge`` importable without installing it; returns the env for subprocesses.

    A checkout that was never ``pip install``-ed gets a temporary folder with a
    ``mnist_edge`` namespace of links to ``train/``, ``export/``, ``runtime/``.
    """
    env = dict(os.environ)
    try:
        if importlib.util.find_spec("mnist_edge.runtime") is not None:
            return env
    except ModuleNotFoundError:  # no mnist_edge namespace at all
        pass
    shim = Path(tempfile.mkdtemp(prefix="mnist-edge-shim-")) / "mnist_edge"
    shim.mkdir()
    for stage in ("train", "export", "runtime"):
        (shim / stage).symlink_to(REPO / stage, target_is_directory=True)
    sys.path.insert(0, str(shim.parent))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim.parent), env.get("PYTHONPATH")]))
    return env


class Steps:
    """Runs each step, recording its result or the one-line reason it could not run."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.failed: list[str] = []

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        print(f"gpu-check: {name} ...", file=sys.stderr)
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # a step that cannot run is reported, the others still run
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            self.results[name] = {"status": "failed", "error": last[:500]}
            self.failed.append(name)
            print(f"gpu-check: {name} FAILED: {last[:300]}", file=sys.stderr)
            return None
        result = {"status": result.pop("status", "ok"), **result}
        result["step_seconds"] = round(time.perf_counter() - start, 2)
        self.results[name] = result
        return result


def gpu_tests(python: str, env: dict[str, str]) -> dict[str, Any]:
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "reason": f"pytest is not installed for {python}"}
    proc = subprocess.run(
        [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    tail = [ln for ln in proc.stdout.splitlines() if ln.strip()][-12:]
    counts = {
        k: int(v)
        for v, k in re.findall(
            r"(\d+) (passed|failed|skipped|errors?|deselected)", tail[-1] if tail else ""
        )
    }
    if proc.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest -m gpu failed: {tail[-1] if tail else proc.stderr[-300:]}")
    return {"counts": counts, "summary": tail[-1] if tail else "", "skips": tail[:-1]}


def train_on_cuda(out_dir: Path, data_dir: Path) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"torch {torch.__version__} has no CUDA (torch.cuda.is_available() is False)"
        )
    from mnist_edge.train.config import TrainConfig
    from mnist_edge.train.loop import train

    config = TrainConfig(out_dir=out_dir, data_dir=data_dir, device="cuda", progress=False)
    start = time.perf_counter()
    result = train(config, log=lambda line: print(line, file=sys.stderr))
    wall = time.perf_counter() - start
    seconds = [h.seconds for h in result.history]
    return {
        "torch": str(torch.__version__),
        "device": result.device,
        "device_name": torch.cuda.get_device_name(result.device),
        "epochs": len(seconds),
        "epoch_seconds": [round(s, 3) for s in seconds],
        "seconds_per_epoch": round(sum(seconds[1:] or seconds) / len(seconds[1:] or seconds), 3),
        "whole_run_seconds": round(sum(seconds), 3),
        "wall_seconds_with_setup": round(wall, 3),
        "test_accuracy": round(result.test_accuracy, 4),
        "checkpoint": str(result.checkpoint),
    }


def export_files(checkpoint: Path, out_dir: Path, data_dir: Path) -> dict[str, Any]:
    from mnist_edge.export.config import ExportConfig
    from mnist_edge.export.pipeline import export_onnx

    report = export_onnx(checkpoint, out_dir, ExportConfig(data_dir=data_dir))
    return {
        "files": {f.path.name: f.size_bytes for f in report.files},
        "pytorch_accuracy": round(report.pytorch_accuracy, 4),
        "accuracy": {f.path.name: round(f.parity.accuracy, 4) for f in report.files if f.parity},
        "seconds": round(report.timings.get("total", 0.0), 2),
    }


def _infer_command() -> list[str]:
    script = Path(sys.executable).with_name("mnist-infer")
    if script.is_file():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from mnist_edge.runtime.cli import main; sys.exit(main())",
    ]


def end_to_end(model: Path, data_dir: Path, png_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    import onnxruntime as ort

    from mnist_edge.runtime.images import load_batch
    from mnist_edge.runtime.workers import new_pool, usable_cores
    from mnist_edge.tools.samples import load_test_set, write_samples

    pixels, labels = load_test_set(data_dir)  # (10000, 28, 28) uint8
    if not any(png_dir.glob("*.png")):
        write_samples(png_dir, pixels, labels, count=len(pixels), variant_count=0)
    files = sorted(str(p) for p in png_dir.glob("*.png"))
    chunks = [files[i : i + 64] for i in range(0, len(files), 64)]
    workers = usable_cores()
    pool = new_pool(workers)
    try:
        list(pool.map(load_batch, chunks[:2]))  # started and warm, as in mnist-infer
        start = time.perf_counter()
        list(pool.map(load_batch, chunks))
        decode_rate = len(files) / (time.perf_counter() - start)
    finally:
        pool.shutdown()
    out: dict[str, Any] = {"images": len(files), "decode_only_images_per_s": round(decode_rate)}
    providers = ["cpu", "cuda"]
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        providers.append("tensorrt")
    for provider in providers:
        cmd = [*_infer_command(), str(png_dir), "--model", str(model), "--provider", provider]
        cmd += ["--format", "csv", "-o", os.devnull]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        wall = time.perf_counter() - start
        summary = parse_summary(proc.stderr)
        if proc.returncode != 0 or summary is None:
            out[provider] = {"status": "failed", "error": proc.stderr.strip()[-400:]}
            continue
        out[provider] = {
            "images": summary.images,
            "failed": summary.failed,
            "images_per_s": summary.images_per_s,
            "wall_seconds": round(wall, 2),
        }
    return out


def model_only(model: Path, data_dir: Path) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.session import SessionConfig, create_session
    from mnist_edge.tools.samples import load_test_set

    pixels, _ = load_test_set(data_dir)
    images = (pixels.astype(np.float32) / np.float32(255))[:, None]  # (10000, 1, 28, 28)
    session = create_session(model, SessionConfig(provider="cuda"))
    name_in, name_out = session.get_inputs()[0].name, session.get_outputs()[0].name
    rows: dict[str, Any] = {}
    for batch in GPU_BATCHES:
        x = np.resize(images, (batch, 1, 28, 28))  # repeats the test set up to the batch
        x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input(name_in, x_dev)
        binding.bind_output(name_out, "cuda")
        for _ in range(3):
            session.run_with_iobinding(binding)  # warm-up (cuDNN algorithm, arena)
        runs = max(3, min(2000, 200_000 // batch))
        start = time.perf_counter()
        for _ in range(runs):
            session.run_with_iobinding(binding)  # synchronous: ORT waits for the stream
        binding.synchronize_outputs()
        elapsed = time.perf_counter() - start
        rows[f"batch_{batch}"] = {
            "images_per_s": round(batch * runs / elapsed),
            "ms_per_run": round(1000 * elapsed / runs, 4),
        }
    probs = binding.copy_outputs_to_cpu()[0]
    cpu = Classifier(model, config=SessionConfig(provider="cpu", allow_spinning=True))
    cpu_x = images[:4096]
    cpu.run(cpu_x)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        reference = cpu.run(cpu_x)
        times.append(time.perf_counter() - start)
    cpu_rate = len(cpu_x) / min(times)
    best = max(r["images_per_s"] for r in rows.values())
    return {
        "cuda_iobinding": rows,
        "cpu_fp32_batch_4096_images_per_s": round(cpu_rate),
        "cuda_best_vs_cpu": round(best / cpu_rate, 2),
        "max_abs_diff_vs_cpu": float(np.abs(probs[: len(reference)] - reference).max()),
    }


def goals(results: dict[str, Any], cpu_accuracy: float | None) -> list[dict[str, Any]]:
    """The issue's goals, each PASS/FAIL where its figure was measured (else not measured)."""
    out = []
    train = results.get("train", {})
    if train.get("status") == "ok":
        ok = train["whole_run_seconds"] < GOAL_TRAIN_SECONDS
        acc_ok = cpu_accuracy is None or train["test_accuracy"] >= cpu_accuracy - 0.002
        out.append(
            {
                "goal": f"15-epoch recipe < {GOAL_TRAIN_SECONDS:.0f} s at the CPU run's accuracy",
                "measured": f"{train['whole_run_seconds']:.1f} s, accuracy {train['test_accuracy']:.4f}"
                + (f" (CPU run {cpu_accuracy:.4f})" if cpu_accuracy is not None else ""),
                "pass": ok and acc_ok,
            }
        )
    mo = results.get("model_only", {})
    if mo.get("status") == "ok":
        out.append(
            {
                "goal": f"CUDA model-only >= {GOAL_CUDA_VS_CPU:.0f}x CPU fp32 at large batch",
                "measured": f"{mo['cuda_best_vs_cpu']:.1f}x",
                "pass": mo["cuda_best_vs_cpu"] >= GOAL_CUDA_VS_CPU,
            }
        )
    e2e = results.get("end_to_end", {})
    cuda = e2e.get("cuda", {}) if e2e.get("status") == "ok" else {}
    if "images_per_s" in cuda:
        share = cuda["images_per_s"] / e2e["decode_only_images_per_s"]
        out.append(
            {
                "goal": f"mnist-infer --provider cuda decode-bound (>= {GOAL_DECODE_BOUND:.0%} of decode-only)",
                "measured": f"{cuda['images_per_s']:,} vs decode-only {e2e['decode_only_images_per_s']:,} images/s ({share:.0%})",
                "pass": share >= GOAL_DECODE_BOUND,
            }
        )
    return out


def table(report: dict[str, Any]) -> str:
    lines = [f"GPU check on {', '.join(report['gpus'])} (python {report['python']})", ""]
    lines += ["| step | result |", "|---|---|"]
    for name, r in report["steps"].items():
        if r.get("status") != "ok":
            lines.append(f"| {name} | {r.get('status')}: {r.get('error') or r.get('reason', '')} |")
        elif name == "train":
            lines.append(
                f"| train (15 epochs, CUDA) | {r['seconds_per_epoch']:.2f} s/epoch, whole run "
                f"{r['whole_run_seconds']:.1f} s, test accuracy {r['test_accuracy']:.4f} |"
            )
        elif name == "model_only":
            cells = ", ".join(
                f"b{k.removeprefix('batch_')} {v['images_per_s']:,}/s"
                for k, v in r["cuda_iobinding"].items()
            )
            lines.append(
                f"| model only, CUDA IOBinding | {cells}; CPU fp32 b4096 "
                f"{r['cpu_fp32_batch_4096_images_per_s']:,}/s ({r['cuda_best_vs_cpu']:.1f}x) |"
            )
        elif name == "end_to_end":
            cells = ", ".join(
                f"{p} {r[p]['images_per_s']:,}/s" if "images_per_s" in r[p] else f"{p} failed"
                for p in ("cpu", "cuda", "tensorrt")
                if p in r
            )
            lines.append(
                f"| mnist-infer, {r['images']:,} PNGs | {cells}; decode only "
                f"{r['decode_only_images_per_s']:,}/s |"
            )
        else:
            summary = r.get("summary") or json.dumps({k: v for k, v in r.items() if k != "status"})
            lines.append(f"| {name} | {summary[:200]} |")
    lines += ["", "| goal | measured | result |", "|---|---|---|"]
    for g in report["goals"]:
        lines.append(f"| {g['goal']} | {g['measured']} | {'PASS' if g['pass'] else 'FAIL'} |")
    if not report["goals"]:
        lines.append("| (none measured) | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=None, help="default: artifacts/")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--skip", action="append", default=[], help="step to skip (repeatable)")
    args = parser.parse_args(argv)

    gpus = detect_gpus()
    if not gpus:
        print(
            "gpu-check: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing to measure"
        )
        return 0
    env = ensure_importable()
    from mnist_edge.export.cpu import host_cpu_features
    from mnist_edge.runtime.atomic import atomic_write_text
    from mnist_edge.runtime.layout import Artifacts

    art = Artifacts(args.artifacts) if args.artifacts else Artifacts(REPO / "artifacts")
    work = art.root / "gpu-check"
    work.mkdir(parents=True, exist_ok=True)
    steps = Steps()
    skip = set(args.skip)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(
            f"gpu-check: onnxruntime {ort.__version__} for {sys.executable} has no CUDA provider; "
            "the ONNX Runtime steps will fail (install onnxruntime-gpu, or run with another python)",
            file=sys.stderr,
        )
    if "tests" not in skip:
        steps.run("tests", lambda: gpu_tests(sys.executable, env))
    if "train" not in skip:
        steps.run("train", lambda: train_on_cuda(work, args.data_dir))
    checkpoint = work / art.checkpoint.name
    if "export" not in skip:
        steps.run("export", lambda: export_files(checkpoint, work, args.data_dir))
    model = Artifacts(work).model()
    if "model_only" not in skip:
        steps.run("model_only", lambda: model_only(model, args.data_dir))
    if "end_to_end" not in skip:
        with tempfile.TemporaryDirectory(prefix="mnist-png-") as tmp:
            steps.run("end_to_end", lambda: end_to_end(model, args.data_dir, Path(tmp), env))

    cpu_accuracy = None
    if art.metrics.is_file():
        try:
            cpu_accuracy = float(json.loads(art.metrics.read_text())["test_accuracy"])
        except (ValueError, KeyError, TypeError):
            cpu_accuracy = None
    report = {
        "gpus": gpus,
        "python": sys.executable,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "cpu": host_cpu_features().summary(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steps": steps.results,
        "goals": goals(steps.results, cpu_accuracy),
    }
    atomic_write_text(
        art.root / GPU_CHECK_JSON, json.dumps(report, indent=2, sort_keys=True) + "\n"
    )
    print(table(report))
    print(f"\nsaved to {art.root / GPU_CHECK_JSON}", file=sys.stderr)
    return 1 if steps.failed else 0


if __name__ == "__main__":
    sys.exit(main())
