"""Inference benchmark: model-only throughput/latency and end-to-end ``mnist-infer`` on the 10k test PNGs.

Run from the repo root::

    .venv/bin/python bench/bench_infer.py --model artifacts/mnist.onnx --int8-model artifacts/mnist.int8.onnx

Measures, on the CPU (and CUDA when onnxruntime has it):

* model only: PyTorch eager, plain ONNX Runtime (default session, no
  mnist-edge code), and our :class:`Classifier` on fp32 and int8, at batch
  1/32/256/1024 (images/s, best of ``--repeats``), plus p50/p99 latency at batch 1;
* providers side by side: CPU fp32, CPU int8 and, where this onnxruntime has
  OpenVINO, OpenVINO int8 and fp32, at batch 1/32/256/1024 in alternating
  rounds, with the ratios to CPU fp32 and the accuracy of each. ``make bench``
  runs it again alone (``--providers-only``, section ``"providers"``) in
  ``.venv-openvino``, where the OpenVINO build of ONNX Runtime lives;
* end to end: ``mnist-infer`` on the 10k MNIST test set written as PNG
  (images/s once started, start-up time, total wall time) against a naive loop
  (PIL open + one session run per image).

Merges an ``"inference"`` section into ``artifacts/bench.json`` (read, modify,
atomic write) and prints a markdown table (the one in the README).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from benchutil import (  # bench/ is sys.path[0] for scripts
    BENCH_JSON,
    cpu_flags,
    cpu_flags_line,
    cpu_name,
    merge_section,
    parse_summary,
)
from PIL import Image

from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.extras import installed_ort_distributions
from mnist_edge.runtime.processes import usable_cores
from mnist_edge.runtime.session import OPENVINO, SessionConfig
from mnist_edge.tools.samples import SamplesError, load_test_set, write_samples

BATCHES = (1, 32, 256, 1024)


class BenchError(RuntimeError):
    """A prerequisite (model, data) is missing."""


def _throughput(run, images: np.ndarray, batch: int, repeats: int, limit: int) -> float:
    """Best images/s of ``run(batch_array)`` over the first ``limit`` images."""
    data = images[:limit]
    run(data[:batch])  # warm-up (allocations, kernels)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(data), batch):
            run(data[i : i + batch])
        best = min(best, time.perf_counter() - start)
    return len(data) / best


def _latency(run, images: np.ndarray, count: int) -> dict[str, float]:
    for i in range(20):
        run(images[i : i + 1])
    times = []
    for i in range(count):
        start = time.perf_counter()
        run(images[i % len(images) : i % len(images) + 1])
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
    }


def _engine_rows(engines: dict, pixels: np.ndarray, floats: np.ndarray, args) -> dict:
    rows = {}
    for name, (run, wants_float) in engines.items():
        data = floats if wants_float else pixels
        row = {}
        for batch in BATCHES:
            limit = min(len(data), 2000 if batch == 1 else len(data))
            row[f"batch_{batch}"] = round(_throughput(run, data, batch, args.repeats, limit))
        row.update(_latency(run, data, args.latency_runs))
        rows[name] = row
        print(
            f"  {name:<24} " + "  ".join(f"b{b}={row[f'batch_{b}']:>7,}/s" for b in BATCHES),
            file=sys.stderr,
        )
    return rows


def model_only(args, pixels: np.ndarray, providers: list[str]) -> dict:
    floats = (pixels.astype(np.float32) / np.float32(255))[:, None]  # (N, 1, 28, 28)
    engines: dict = {}
    torch_note = _torch_engine(args, engines)
    for provider in providers:
        plain_opts = ort.SessionOptions()
        plain_opts.log_severity_level = 3
        full = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[provider]
        plain = ort.InferenceSession(str(args.model), plain_opts, providers=[full])
        name = plain.get_inputs()[0].name
        engines[f"ort-plain fp32 ({provider})"] = (
            lambda x, s=plain, n=name: s.run(None, {n: x}),
            True,
        )
        for label, path in (("fp32", args.model), ("int8", args.int8_model)):
            if provider == "cuda" and label == "int8":
                continue  # int8 QDQ kernels are a CPU feature; on CUDA it would be measuring fallbacks
            # The benchmark loop calls back to back: spinning threads win here (the CLI turns it off).
            clf = Classifier(path, config=SessionConfig(provider=provider, allow_spinning=True))
            engines[f"mnist-edge {label} ({provider})"] = (clf.predict, False)
    rows = _engine_rows(engines, pixels, floats, args)
    plain_best = max(
        v
        for k, r in rows.items()
        if k.startswith("ort-plain fp32 (cpu)")
        for b, v in r.items()
        if b.startswith("batch_")
    )
    ours_best = max(
        v
        for k, r in rows.items()
        if k.startswith("mnist-edge fp32 (cpu)")
        for b, v in r.items()
        if b.startswith("batch_")
    )
    return {
        "engines": rows,
        "torch": torch_note,
        "fp32_vs_plain_ort": round(ours_best / plain_best, 3),
    }


def _torch_engine(args, engines: dict) -> str:
    try:
        import torch

        from mnist_edge.train.model import ConvNet, ProbabilityModel
    except ImportError:
        return "torch not installed: skipped"
    torch.set_num_threads(usable_cores())
    if args.checkpoint.is_file():
        from mnist_edge.train.checkpoint import load_checkpoint

        net, note = load_checkpoint(args.checkpoint).model, f"weights from {args.checkpoint}"
    else:
        net, note = ConvNet(), "untrained weights (no checkpoint; speed does not depend on them)"
    model = ProbabilityModel(net).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    engines["pytorch eager fp32 (cpu)"] = (run, True)
    return note


def _mnist_infer(args, inputs: list[str], extra: list[str] = ()) -> tuple[float, str]:
    exe = Path(sys.executable).with_name("mnist-infer")
    cmd = [
        str(exe),
        *inputs,
        "--model",
        str(args.model),
        "--format",
        "csv",
        "-o",
        os.devnull,
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"mnist-infer failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall, proc.stderr


def decoding(files: list[str], workers: int) -> dict:
    """Decode + preprocess the PNGs: one thread, ``workers`` threads, ``workers`` processes (why processes)."""
    from concurrent.futures import ThreadPoolExecutor

    from mnist_edge.runtime.images import ImageOptions, load_batch
    from mnist_edge.runtime.workers import WorkerPool

    chunks = [files[i : i + 64] for i in range(0, len(files), 64)]
    out = {}
    start = time.perf_counter()
    for chunk in chunks:
        load_batch(chunk)
    out["one_thread_s"] = time.perf_counter() - start
    with ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter()
        list(pool.map(load_batch, chunks))
        out[f"{workers}_threads_s"] = time.perf_counter() - start
    with WorkerPool(workers) as processes:  # started before the clock, as in mnist-infer
        if not processes.ready(wait=True):
            raise BenchError("worker processes could not start")
        start = time.perf_counter()
        options = ImageOptions()
        for task in [processes.decode(chunk, options) for chunk in chunks]:
            task.result()
        out[f"{workers}_processes_s"] = time.perf_counter() - start
    return {k: round(v, 3) for k, v in out.items()}


def end_to_end(args, pixels: np.ndarray, labels: np.ndarray, png_dir: Path) -> dict:
    if not any(png_dir.glob("*.png")):
        write_samples(png_dir, pixels, labels, count=len(pixels), variant_count=0)
    files = sorted(str(p) for p in png_dir.glob("*.png"))
    startups = sorted(_mnist_infer(args, files[:1])[0] for _ in range(3))
    runs = []
    for _ in range(args.repeats):
        wall, err = _mnist_infer(args, [str(png_dir)], ["--provider", args.provider])
        summary = parse_summary(err)
        if (
            summary is None
            or summary.images != len(files)
            or summary.failed
            or not summary.images_per_s
        ):
            raise BenchError(
                f"mnist-infer did not account for all {len(files)} images: {err.strip()}"
            )
        runs.append((summary.images_per_s, wall))
    rate, wall = max(runs)
    decode = decoding(files, usable_cores())
    # Naive loop: what a first script would do.
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    count = min(len(files), args.naive_limit)
    start = time.perf_counter()
    for path in files[:count]:
        x = np.asarray(Image.open(path), dtype=np.float32)[None, None] / np.float32(255)
        session.run(None, {name: x})
    naive = count / (time.perf_counter() - start)
    return {
        "images": len(files),
        "mnist_infer_images_per_s": round(rate),
        "mnist_infer_wall_s": round(wall, 3),
        "startup_s": round(startups[1], 3),
        "naive_loop_images_per_s": round(naive),
        "speedup_vs_naive": round(rate / naive, 2),
        "decode_only": decode,
    }


# (provider, file precision) pairs measured side by side; the first is the baseline.
PAIRS = (("cpu", "fp32"), ("cpu", "int8"), ("openvino", "int8"), ("openvino", "fp32"))
BASELINE = "cpu fp32"
OPENVINO_GOAL = 1.5  # OpenVINO int8 / CPU fp32 at batch 256


def provider_pairs(args, pixels: np.ndarray, labels: np.ndarray) -> dict:
    """CPU fp32 against CPU int8 and, where this onnxruntime has OpenVINO, OpenVINO int8 and fp32.

    Every engine is a :class:`Classifier`. For each batch size, ``--pair-repeats``
    rounds each run every engine once in turn (so all see the same machine
    load); the figures are the medians of the rounds and each ratio is the
    median of the per-round ratios to CPU fp32. Batch-1 latency (p50) is paired
    the same way; accuracy is on the whole test set.
    """
    available = ort.get_available_providers()
    engines: dict[str, Classifier] = {}
    for provider, precision in PAIRS:
        if provider == "openvino" and OPENVINO not in available:
            continue
        path = args.model if precision == "fp32" else args.int8_model
        # back-to-back calls: spinning CPU threads win here (the CLI turns it off)
        config = SessionConfig(provider=provider, allow_spinning=True)
        engines[f"{provider} {precision}"] = Classifier(path, config=config)
    meta = engines["cpu int8"].metadata
    reps = args.pair_repeats
    rows: dict[str, dict] = {}
    for batch in BATCHES:
        limit = min(len(pixels), 2000 if batch == 1 else len(pixels))
        rounds = [
            {
                name: _throughput(clf.predict, pixels, batch, 1, limit)
                for name, clf in engines.items()
            }
            for _ in range(reps)
        ]
        rows[f"batch_{batch}"] = _paired(rounds)
    count = max(200, args.latency_runs // 2)
    rounds = [
        {name: _latency(clf.predict, pixels, count)["p50_ms"] for name, clf in engines.items()}
        for _ in range(reps)
    ]
    predicted = {name: clf.predict(pixels).indices for name, clf in engines.items()}
    accuracy = {name: round(float(np.mean(ix == labels)), 4) for name, ix in predicted.items()}
    cpu_int8 = {k: r["ratios"]["cpu int8"] for k, r in rows.items()}
    section = {
        "pair_repeats": reps,
        "engines": list(engines),
        "int8_file": str(args.int8_model),
        "int8_target": meta.int8_target or "(not recorded: exported before presets)",
        "int8_tuned_for": meta.int8_tuned_for,
        "threads": usable_cores(),
        "throughput": rows,
        "latency_b1_p50_ms": _paired(rounds),
        "accuracy": accuracy,
        "accuracy_images": len(labels),
        "cpu_int8_slower_at": [k for k, ratio in cpu_int8.items() if ratio < 1],
    }
    if "openvino int8" in engines:
        ratio = rows["batch_256"]["ratios"]["openvino int8"]
        gap = abs(accuracy["openvino int8"] - accuracy[BASELINE])
        section["openvino_goal"] = {
            "int8_vs_cpu_fp32_at_256": ratio,
            "wanted": OPENVINO_GOAL,
            "accuracy_gap_points": round(gap * 100, 2),
            "same_labels_as_cpu_int8": round(
                float(np.mean(predicted["openvino int8"] == predicted["cpu int8"])), 5
            ),
            "met": ratio >= OPENVINO_GOAL and gap <= 0.001,
        }
    return section


def _paired(rounds: list[dict[str, float]]) -> dict:
    """Medians of paired rounds ``[{"cpu fp32": x, "cpu int8": y, ...}, ...]`` and the median ratios to CPU fp32."""
    names = list(rounds[0])
    out: dict = {name: round(float(np.median([r[name] for r in rounds])), 4) for name in names}
    out["ratios"] = {
        name: round(float(np.median([r[name] / r[BASELINE] for r in rounds])), 3)
        for name in names
        if name != BASELINE
    }
    return out


def markdown_pairs(cmp: dict, flags: dict) -> str:
    """The side-by-side table (images/s and the ratio to CPU fp32), the verdicts, and the CPU flags."""
    names = cmp["engines"]
    lines = [
        f"Providers and files side by side (`Classifier`, {cmp['threads']} threads, int8 preset "
        f"{cmp['int8_target']}), median of {cmp['pair_repeats']} alternating repetitions:",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]

    def cells(row: dict, fmt: str) -> list[str]:
        return [
            format(row[n], fmt) + ("" if n == BASELINE else f" ({row['ratios'][n]:.2f}x)")
            for n in names
        ]

    for b in BATCHES:
        lines.append(
            f"| batch {b} (img/s) | "
            + " | ".join(cells(cmp["throughput"][f"batch_{b}"], ",.0f"))
            + " |"
        )
    lines.append(
        "| latency b1 p50 (ms) | " + " | ".join(cells(cmp["latency_b1_p50_ms"], ".3f")) + " |"
    )
    lines.append(
        f"| accuracy ({cmp['accuracy_images']:,} test images) | "
        + " | ".join(f"{cmp['accuracy'][n]:.4f}" for n in names)
        + " |"
    )
    slower = cmp["cpu_int8_slower_at"]
    lines += [
        "",
        (
            "CPU provider: int8 is SLOWER than fp32 at "
            + ", ".join(s.replace("_", " ") for s in slower)
            + "; on this provider int8 is for size and NPUs, not speed."
            if slower
            else "CPU provider: int8 is faster than fp32 at every batch size."
        ),
    ]
    goal = cmp.get("openvino_goal")
    if goal is None:
        lines.append(
            "OpenVINO: not in this onnxruntime (`make bench-openvino` measures it in .venv-openvino)."
        )
    else:
        lines.append(
            f"OpenVINO int8 at batch 256: {goal['int8_vs_cpu_fp32_at_256']:.2f}x CPU fp32 "
            f"(goal >= {goal['wanted']}x), accuracy {goal['accuracy_gap_points']:.2f} points from fp32, "
            f"same labels as CPU int8 on {goal['same_labels_as_cpu_int8']:.2%}: "
            + ("goal met." if goal["met"] else "goal NOT met.")
        )
    lines += ["", cpu_flags_line(flags)]
    return "\n".join(lines)


def markdown(section: dict) -> str:
    engines = section["model_only"]["engines"]
    lines = [
        "| engine | "
        + " | ".join(f"batch {b} (img/s)" for b in BATCHES)
        + " | p50 b1 (ms) | p99 b1 (ms) |",
        "|---|" + "---:|" * (len(BATCHES) + 2),
    ]
    for name, row in engines.items():
        cells = [f"{row[f'batch_{b}']:,}" for b in BATCHES] + [
            f"{row['p50_ms']:.3f}",
            f"{row['p99_ms']:.3f}",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    e2e = section["end_to_end"]
    lines += [
        "",
        f"| end to end ({e2e['images']:,} MNIST PNGs) | images/s |",
        "|---|---:|",
        f"| `mnist-infer` (once started; start-up {e2e['startup_s']:.2f} s, wall {e2e['mnist_infer_wall_s']:.2f} s) | {e2e['mnist_infer_images_per_s']:,} |",
        f"| naive loop (PIL open + session.run per image) | {e2e['naive_loop_images_per_s']:,} |",
        f"| speed-up | {e2e['speedup_vs_naive']:.1f}x |",
        "",
        "Decoding + preprocessing the PNGs alone (s): "
        + ", ".join(
            f"{k.removesuffix('_s').replace('_', ' ')} {v:.2f}"
            for k, v in e2e["decode_only"].items()
        ),
        "",
        f"Host: {section['host']['cpu']}, {section['host']['cores']} cores, onnxruntime {section['host']['onnxruntime']}; "
        f"our fp32 path reaches {section['model_only']['fp32_vs_plain_ort']:.0%} of plain ONNX Runtime's best.",
        cpu_flags_line(section["host"]["cpu_flags"]),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- pixels-in model: single-picture latency

PIXEL_SIZES = ((28, 28), (100, 80), (300, 300), (640, 480), (1920, 1080))  # (width, height)


def _p50_p99(run, count: int) -> dict[str, float]:
    for _ in range(min(10, count)):
        run()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def pixels_latency(args, digits: np.ndarray) -> dict:
    """One picture at a time: the pixels-in model in ONNX Runtime vs Python preprocessing + the core model.

    Each picture is a test digit drawn dark on light at the given size. ONNX
    Runtime sessions use one intra-op thread (a picture's operators are too
    small for a pool); the Python path is ``preprocess`` then ``Classifier.predict``.
    """
    from mnist_edge.runtime.images import preprocess

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    engines = {
        f"pixels-in {label} (ORT)": ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        for label, path in (("fp32", args.pixels_model), ("int8", args.pixels_int8_model))
    }
    core = {
        label: Classifier(path, config=SessionConfig(provider="cpu", allow_spinning=True))
        for label, path in (("fp32", args.model), ("int8", args.int8_model))
    }
    rows: dict[str, dict] = {}
    for width, height in PIXEL_SIZES:
        picture = 255 - np.asarray(
            Image.fromarray(digits[0]).resize((width, height), Image.Resampling.BICUBIC)
        )
        count = args.pixels_runs if width * height <= 300 * 300 else max(20, args.pixels_runs // 10)
        row = {}
        for name, session in engines.items():
            row[name] = _p50_p99(lambda s=session, p=picture: s.run(None, {"pixels": p}), count)
        row["python preprocess only"] = _p50_p99(lambda p=picture: preprocess(p), count)
        for label, clf in core.items():
            row[f"python preprocess + {label} core"] = _p50_p99(
                lambda c=clf, p=picture: c.predict(preprocess(p)), count
            )
        rows[f"{width}x{height}"] = row
        print(
            f"  pixels {width}x{height}: "
            + ", ".join(f"{k} {v['p50_ms']:.2f} ms" for k, v in row.items()),
            file=sys.stderr,
        )
    return {
        "host": {"cpu": cpu_name(), "flags": cpu_flags(), "onnxruntime": ort.__version__},
        "threads": "ORT intra_op_num_threads=1; Classifier default session",
        "sizes": rows,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def pixels_markdown(section: dict) -> str:
    sizes = section["sizes"]
    engines = list(next(iter(sizes.values())))
    lines = [
        "| picture (w x h) | " + " | ".join(f"{e} p50 / p99 (ms)" for e in engines) + " |",
        "|---|" + "---:|" * len(engines),
    ]
    for size, row in sizes.items():
        cells = [f"{row[e]['p50_ms']:.2f} / {row[e]['p99_ms']:.2f}" for e in engines]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    host = section["host"]
    lines += [
        "",
        f"Host: {host['cpu']}, {cpu_flags_line(host['flags'])}; onnxruntime {host['onnxruntime']}.",
    ]
    return "\n".join(lines)


def run_pixels(args) -> int:
    """The pixels-in table alone (``--pixels-only``) or after the others; merged as section ``pixels``."""
    missing = [str(p) for p in (args.pixels_model, args.pixels_int8_model) if not p.is_file()]
    if missing:
        print(
            f"bench_infer: missing {', '.join(missing)}; run `make export` first", file=sys.stderr
        )
        return 2
    try:
        digits, _ = load_test_set(args.data_dir)
    except SamplesError as exc:
        print(f"bench_infer: {exc}", file=sys.stderr)
        return 2
    print("pixels-in latency ...", file=sys.stderr)
    section = pixels_latency(args, digits)
    merge_section(args.out, "pixels", section)
    print(pixels_markdown(section))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/mnist.onnx"))
    parser.add_argument("--int8-model", type=Path, default=Path("artifacts/mnist.int8.onnx"))
    parser.add_argument("--checkpoint", type=Path, default=Path("artifacts/model.pt"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--png-dir", type=Path, default=None, help="reuse/keep the 10k PNGs here")
    parser.add_argument("--out", type=Path, default=BENCH_JSON)
    parser.add_argument("--provider", default="auto", help="provider for the end-to-end run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=1000)
    parser.add_argument("--naive-limit", type=int, default=10_000)
    parser.add_argument("--pixels-model", type=Path, default=Path("artifacts/mnist.pixels.onnx"))
    parser.add_argument(
        "--pixels-int8-model", type=Path, default=Path("artifacts/mnist.pixels.int8.onnx")
    )
    parser.add_argument("--pixels-runs", type=int, default=300)
    parser.add_argument(
        "--pixels-only", action="store_true", help="only the pixels-in latency table"
    )
    parser.add_argument(
        "--pair-repeats", type=int, default=5, help="paired provider/file rounds (at least 3)"
    )
    parser.add_argument(
        "--providers-only",
        action="store_true",
        help="only the providers table (CPU vs OpenVINO, fp32 and int8 files), section 'providers'",
    )
    args = parser.parse_args(argv)
    if args.pair_repeats < 3:
        parser.error(f"--pair-repeats must be at least 3, got {args.pair_repeats}")
    if args.pixels_only:
        return run_pixels(args)

    missing = [str(p) for p in (args.model, args.int8_model) if not p.is_file()]
    if missing:
        print(
            f"bench_infer: missing {', '.join(missing)}; run `make train export` first",
            file=sys.stderr,
        )
        return 2
    try:
        pixels, labels = load_test_set(args.data_dir)  # (10000, 28, 28) uint8
    except SamplesError as exc:
        print(f"bench_infer: {exc}", file=sys.stderr)
        return 2
    providers = ["cpu"] + (
        ["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else []
    )
    section = {
        "host": {
            "cpu": cpu_name(),
            "cores": usable_cores(),
            "onnxruntime": ort.__version__,
            "onnxruntime_build": ", ".join(installed_ort_distributions()),
            "providers": providers,
            "python": platform.python_version(),
            "cpu_flags": cpu_flags(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.providers_only:
        print("providers side by side (paired) ...", file=sys.stderr)
        section["providers"] = provider_pairs(args, pixels, labels)
        merge_section(args.out, "providers", section)
        print(markdown_pairs(section["providers"], section["host"]["cpu_flags"]))
        print(f"\nsaved to {args.out} (section 'providers')", file=sys.stderr)
        return 0
    print("model only ...", file=sys.stderr)
    section["model_only"] = model_only(args, pixels, providers)
    print("int8 vs fp32 (paired) ...", file=sys.stderr)
    section["int8_vs_fp32"] = provider_pairs(args, pixels, labels)
    print("end to end ...", file=sys.stderr)
    try:
        if args.png_dir is not None:
            args.png_dir.mkdir(parents=True, exist_ok=True)
            section["end_to_end"] = end_to_end(args, pixels, labels, args.png_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="mnist-png-") as tmp:
                section["end_to_end"] = end_to_end(args, pixels, labels, Path(tmp))
    except BenchError as exc:
        print(f"bench_infer: {exc}", file=sys.stderr)
        return 1

    merge_section(args.out, "inference", section)
    print(markdown(section))
    print()
    print(markdown_pairs(section["int8_vs_fp32"], section["host"]["cpu_flags"]))
    print(f"\nsaved to {args.out} (section 'inference')", file=sys.stderr)
    return run_pixels(args)


if __name__ == "__main__":
    sys.exit(main())
