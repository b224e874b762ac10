"""Ray Data benchmark: the Ray engine next to the local one, on 10k and 100k inputs, in one run.

Run from the repo root (after ``make train export``)::

    flock /tmp/mnist-bench.lock .venv/bin/python bench/bench_ray.py

On the 10k MNIST test set written as PNG files (as bench/bench_infer.py writes
them), and on 100k inputs (the same folder listed ten times):

* ``mnist-infer DIR --format csv -o FILE`` (local engine) and
  ``mnist-infer --engine ray DIR --format csv -o FILE`` (a local Ray started by
  the command on this machine's cores), each in its own process: images/s from
  their summary lines (the run's own work), the ratio Ray/local, Ray's start-up
  apart (``ray.init``, then the warm-up that starts a worker per CPU with the
  model open), and each whole command's wall time;
* the Python API writing Parquet (the cluster writes, nothing passes the
  driver): images/s and the driver's peak RSS for 10k and 100k inputs (flat
  means nothing is gathered on the driver);
* one core's decode and one ONNX Runtime thread's model throughput, in-process.

Merges a ``"ray"`` section into ``artifacts/bench.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import (  # bench/ is sys.path[0] for scripts
    BENCH_JSON,
    cpu_flags,
    cpu_flags_line,
    cpu_name,
    merge_section,
    parse_summary,
)

from mnist_edge.runtime.layout import Artifacts
from mnist_edge.runtime.processes import usable_cores
from mnist_edge.tools.samples import SamplesError, load_test_set, write_samples

RAY_START = re.compile(
    r"Ray started in ([\d.]+) s(?:, (?:[\d,]+ workers?(?: on \d+ nodes)?|Ray Data) in ([\d.]+) s)?"
)
TIMES = (1, 10)  # 10k, and 100k (the folder listed ten times)


class BenchError(RuntimeError):
    """A run failed or did not account for every input."""


def cli_run(model: Path, png_dir: Path, times: int, engine: str) -> dict:
    """One ``mnist-infer`` run writing CSV; its summary's images/s, Ray's start-up, the wall time."""
    exe = Path(sys.executable).with_name("mnist-infer")
    with tempfile.TemporaryDirectory(prefix="mnist-ray-bench-") as out:
        cmd = [str(exe), *([str(png_dir)] * times), "--model", str(model), "--format", "csv"]
        cmd += ["-o", f"{out}/out.csv", *(["--engine", "ray"] if engine == "ray" else [])]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        with open(f"{out}/out.csv") as f:
            rows = sum(1 for _ in f) - 1 if proc.returncode == 0 else 0
    summary = parse_summary(proc.stderr)
    expected = times * len(list(png_dir.glob("*.png")))
    if (
        proc.returncode != 0
        or summary is None
        or summary.failed
        or summary.images != expected
        or rows != expected
    ):
        raise BenchError(
            f"mnist-infer --engine {engine} failed ({proc.returncode}, {rows} rows for "
            f"{expected}): {proc.stderr[-600:]}"
        )
    started = RAY_START.search(proc.stderr)
    return {
        "images": summary.images,
        "images_per_s": summary.images_per_s,
        "job_s": summary.seconds,
        "startup_s": float(started.group(1)) if started else 0.0,
        "workers_s": float(started.group(2)) if started and started.group(2) else 0.0,
        "wall_s": round(wall, 2),
    }


def compare(model: Path, png_dir: Path, times: int, repeats: int) -> dict:
    """Local and Ray, alternating (so both see the same load), best run of each."""
    local, ray = [], []
    for _ in range(repeats):
        local.append(cli_run(model, png_dir, times, "local"))
        ray.append(cli_run(model, png_dir, times, "ray"))
    best_local = max(local, key=lambda r: r["images_per_s"])
    best_ray = max(ray, key=lambda r: r["images_per_s"])
    return {
        "local": best_local,
        "ray": best_ray,
        "ratio": round(best_ray["images_per_s"] / best_local["images_per_s"], 3),
        "ratio_wall": round(best_local["wall_s"] / best_ray["wall_s"], 3),
    }


def driver(args: argparse.Namespace) -> int:
    """One Ray job in this process (a fresh driver); prints its figures as JSON."""
    import ray

    from mnist_edge.runtime.scale.engine import RayConfig, plan_job

    started = time.perf_counter()
    ray.init(
        num_cpus=usable_cores(),
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
        object_store_memory=512 * 1024 * 1024,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    startup = time.perf_counter() - started
    config = RayConfig()
    inputs = [str(args.png_dir)] * args.times
    with tempfile.TemporaryDirectory(prefix="mnist-ray-bench-") as out:
        start = time.perf_counter()
        job = plan_job(inputs, args.model, config)  # lists the inputs: the job's work
        warm = job.warm_up()
        job.dataset.write_parquet(out)
        wall = time.perf_counter() - start - warm.seconds
        import pyarrow.dataset as pads

        rows = pads.dataset(out, format="parquet").count_rows()
    ray.shutdown()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps(
            {
                "rows": rows,
                "wall_s": wall,
                "startup_s": startup,
                "workers_s": warm.seconds,
                "peak_rss_mib": peak_mib,
            }
        )
    )
    return 0


def parquet_job(args: argparse.Namespace, png_dir: Path, times: int) -> dict:
    """The Python API writing Parquet, in a fresh driver process (its peak RSS is the driver's)."""
    cmd = [
        sys.executable,
        __file__,
        "--driver",
        "--model",
        str(args.model),
        "--png-dir",
        str(png_dir),
        "--times",
        str(times),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"Ray driver failed ({proc.returncode}): {proc.stderr[-800:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = times * len(list(png_dir.glob("*.png")))
    if result["rows"] != expected:
        raise BenchError(f"Ray job wrote {result['rows']} rows for {expected} inputs")
    result["images_per_s"] = round(result["rows"] / result["wall_s"])
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}


def per_core(model: Path, png_dir: Path) -> dict:
    """One core's decode and one ONNX Runtime thread's model throughput, in this process."""
    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.images import ImageOptions, load_batch
    from mnist_edge.runtime.session import SessionConfig

    files = [str(p) for p in sorted(png_dir.glob("*.png"))]
    classifier = Classifier(model, config=SessionConfig(provider="cpu", threads=1))
    options = ImageOptions(preprocessing=classifier.metadata.preprocessing)
    start = time.perf_counter()
    images, _ = load_batch(files, options)
    decode = len(files) / (time.perf_counter() - start)
    classifier.predict(images[:64])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(images), 64):
        classifier.predict(images[i : i + 64])
    model_rate = len(files) / (time.perf_counter() - start)
    return {
        "decode_images_per_s": round(decode),
        "model_images_per_s": round(model_rate),
        "pipeline_images_per_s": round(1.0 / (1.0 / decode + 1.0 / model_rate)),
    }


def markdown(section: dict) -> str:
    cores = section["host"]["cores"]
    lines = [
        "| inputs (MNIST PNGs) | local images/s | Ray images/s | Ray / local | "
        "Ray start-up: Ray + workers (s) | wall local / Ray (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in (("10k", "10k"), ("100k", "100k (10k listed 10 times)")):
        c = section["cli"][key]
        lines.append(
            f"| {label} | {c['local']['images_per_s']:,.0f} | {c['ray']['images_per_s']:,.0f} | "
            f"{c['ratio']:.2f}x | {c['ray']['startup_s']:.1f} + {c['ray']['workers_s']:.1f} | "
            f"{c['local']['wall_s']:.1f} / {c['ray']['wall_s']:.1f} |"
        )
    p = section["parquet"]
    pc = section["per_core"]
    lines += [
        "",
        "| Python API -> Parquet (written by the cluster) | images/s | job (s) | "
        "start-up: Ray + workers (s) "
        "| driver peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in ("10k", "100k"):
        r = p[key]
        lines.append(
            f"| {key} | {r['images_per_s']:,} | {r['wall_s']:.1f} | "
            f"{r['startup_s']:.1f} + {r['workers_s']:.1f} | "
            f"{r['peak_rss_mib']:.0f} MiB |"
        )
    lines += [
        "",
        f"One core decodes {pc['decode_images_per_s']:,} PNGs/s; one ONNX Runtime thread "
        f"classifies {pc['model_images_per_s']:,} images/s; both on one core: "
        f"{pc['pipeline_images_per_s']:,} images/s ({cores} cores here).",
        "",
        f"Host: {section['host']['cpu']} ({cpu_flags_line(section['host']['flags'])}), "
        f"{cores} cores, ray {section['host']['ray']}. Images/s are each engine's own summary "
        "(the local engine's clock starts once its model is open, while its decoder processes "
        "start; Ray's start-up is apart); best of the alternating repeats.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Artifacts().model())
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--png-dir", type=Path, default=None, help="reuse/keep the 10k PNGs here")
    parser.add_argument("--out", type=Path, default=BENCH_JSON)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--times", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:
        return driver(args)
    if not args.model.is_file():
        print(f"bench_ray: missing {args.model}; run `make train export` first", file=sys.stderr)
        return 2
    try:
        import ray
    except ImportError:
        print(
            "bench_ray: Ray is not installed; `make venv` installs the scale extra", file=sys.stderr
        )
        return 2
    try:
        pixels, labels = load_test_set(args.data_dir)  # (10000, 28, 28) uint8
    except SamplesError as exc:
        print(f"bench_ray: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mnist-png-") as tmp:
        png_dir = args.png_dir or Path(tmp)
        png_dir.mkdir(parents=True, exist_ok=True)
        if not any(png_dir.glob("*.png")):
            write_samples(png_dir, pixels, labels, count=len(pixels), variant_count=0)
        try:
            cli = {}
            for times in TIMES:
                label = f"{10 * times}k"
                print(f"local engine and Ray, {label} ...", file=sys.stderr)
                cli[label] = compare(args.model, png_dir, times, args.repeats if times == 1 else 1)
            print("Python API -> Parquet, 10k and 100k ...", file=sys.stderr)
            parquet = {f"{10 * t}k": parquet_job(args, png_dir, t) for t in TIMES}
        except BenchError as exc:
            print(f"bench_ray: {exc}", file=sys.stderr)
            return 1
        cores_figures = per_core(args.model, png_dir)
    cores = usable_cores()
    section = {
        "host": {
            "cpu": cpu_name(),
            "flags": cpu_flags(),
            "cores": cores,
            "ray": ray.__version__,
            "python": platform.python_version(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "images": len(pixels),
        "cli": cli,
        "parquet": parquet,
        "per_core": cores_figures,
    }
    merge_section(args.out, "ray", section)
    print(markdown(section))
    print(f"\nsaved to {args.out} (section 'ray')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
