"""Ray Data benchmark: Ray-local images/s next to local ``mnist-infer``, the driver's memory, per-actor figures.

Run from the repo root (after ``make train export``)::

    flock /tmp/mnist-bench.lock .venv/bin/python bench/bench_ray.py

On the 10k MNIST test set written as PNG (as bench/bench_infer.py writes it):

* ``mnist-infer`` (local engine) images/s, from its summary line;
* the Ray engine on a local Ray (``ray.init`` on this machine's cores): wall time
  and images/s of the whole job (read, decode, actors, Parquet written), each
  run in a fresh driver process;
* the driver's peak RSS for 10k and 100k inputs (the 10k folder listed 10
  times): flat means the results stream past the driver;
* per-actor (one ONNX Runtime thread) model throughput and per-core decode
  throughput, from which a per-node and N-node projection follows.

Merges a ``"ray"`` section into ``artifacts/bench.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import (  # bench/ is sys.path[0] for scripts
    BENCH_JSON,
    cpu_flags,
    cpu_flags_line,
    cpu_name,
    merge_section,
)

from mnist_edge.runtime.layout import Artifacts
from mnist_edge.runtime.processes import usable_cores
from mnist_edge.tools.samples import SamplesError, load_test_set, write_samples

SUMMARY = re.compile(r"(\d+) images, (\d+) failed, ([\d,]+) images/s")
NODES = (1, 4, 16)


class BenchError(RuntimeError):
    """A run failed or did not account for every input."""


def local_engine(model: Path, png_dir: Path, repeats: int) -> dict:
    exe = Path(sys.executable).with_name("mnist-infer")
    best = 0.0
    for _ in range(repeats):
        cmd = [str(exe), str(png_dir), "--model", str(model), "--format", "csv", "-o", os.devnull]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        match = SUMMARY.search(proc.stderr)
        if proc.returncode != 0 or match is None or int(match.group(2)) != 0:
            raise BenchError(f"mnist-infer failed ({proc.returncode}): {proc.stderr[-500:]}")
        best = max(best, float(match.group(3).replace(",", "")))
    return {"images_per_s": round(best)}


def driver(args: argparse.Namespace) -> int:
    """One Ray job in this process (a fresh driver); prints its figures as JSON."""
    import ray

    from mnist_edge.runtime.scale.engine import RayConfig, classify_dataset

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
    config = RayConfig(actors=args.actors, batch_size=512)
    inputs = [str(args.png_dir)] * args.times
    with tempfile.TemporaryDirectory(prefix="mnist-ray-bench-") as out:
        start = time.perf_counter()
        classify_dataset(inputs, args.model, config).write_parquet(out)
        wall = time.perf_counter() - start
        import pyarrow.dataset as pads

        rows = pads.dataset(out, format="parquet").count_rows()
    ray.shutdown()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps({"rows": rows, "wall_s": wall, "startup_s": startup, "peak_rss_mib": peak_mib})
    )
    return 0


def ray_job(args: argparse.Namespace, png_dir: Path, times: int, actors: int) -> dict:
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
        "--actors",
        str(actors),
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


def per_actor(model: Path, png_dir: Path) -> dict:
    """One actor's model throughput (1 ORT thread) and one core's decode throughput, in-process."""
    from mnist_edge.runtime.images import ImageOptions, load_bytes_batch
    from mnist_edge.runtime.scale.stages import ClassifyBatch
    from mnist_edge.runtime.session import SessionConfig

    files = sorted(png_dir.glob("*.png"))
    blobs = [p.read_bytes() for p in files]
    start = time.perf_counter()
    images, errors = load_bytes_batch(blobs, ImageOptions())
    decode = len(blobs) / (time.perf_counter() - start)
    actor = ClassifyBatch(model.read_bytes(), model.name, SessionConfig("cpu", threads=1), 0, 64)
    batch = {
        "path": np.asarray([str(p) for p in files], dtype=object),
        "image": images,
        "error": np.asarray(["" for _ in errors], dtype=object),
    }
    actor(batch)  # warm-up
    start = time.perf_counter()
    actor(batch)
    model_rate = len(files) / (time.perf_counter() - start)
    per_core = 1.0 / (1.0 / decode + 1.0 / model_rate)  # one core decoding and classifying
    return {
        "actor_model_images_per_s": round(model_rate),
        "core_decode_images_per_s": round(decode),
        "core_pipeline_images_per_s": round(per_core),
    }


def markdown(section: dict) -> str:
    e = section["engines"]
    pa = section["per_actor"]
    cores = section["host"]["cores"]
    lines = [
        f"| {section['images']:,} MNIST PNGs | images/s | wall (s) | driver peak RSS |",
        "|---|---:|---:|---:|",
        f"| `mnist-infer` (local engine) | {e['local']['images_per_s']:,} | | |",
    ]
    for key, label in (("ray_10k", "10k"), ("ray_100k", "100k (the 10k listed 10 times)")):
        r = e[key]
        lines.append(
            f"| Ray Data, local Ray, {r['actors']} actors: {label} | {r['images_per_s']:,} | "
            f"{r['wall_s']:.1f} (+{r['startup_s']:.1f} start) | {r['peak_rss_mib']:.0f} MiB |"
        )
    lines += [
        "",
        f"Per actor (one ONNX Runtime thread): {pa['actor_model_images_per_s']:,} images/s through the model; "
        f"one core decodes {pa['core_decode_images_per_s']:,} PNGs/s; decode + model on one core: "
        f"{pa['core_pipeline_images_per_s']:,} images/s. Projection for nodes of {cores} such cores: "
        + ", ".join(
            f"{n} node{'s' if int(n) > 1 else ''} ≈ {v:,} images/s"
            for n, v in sorted(section["projection"].items(), key=lambda kv: int(kv[0]))
        )
        + " (CPU-bound; storage and network not included).",
        "",
        f"Host: {section['host']['cpu']} ({cpu_flags_line(section['host']['flags'])}), {cores} cores, ray {section['host']['ray']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Artifacts().model())
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--png-dir", type=Path, default=None, help="reuse/keep the 10k PNGs here")
    parser.add_argument("--out", type=Path, default=BENCH_JSON)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2)
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
            print("local engine ...", file=sys.stderr)
            engines = {"local": local_engine(args.model, png_dir, args.repeats)}
            print("ray, 10k ...", file=sys.stderr)
            runs = [ray_job(args, png_dir, 1, args.actors) for _ in range(args.repeats)]
            engines["ray_10k"] = {
                **max(runs, key=lambda r: r["images_per_s"]),
                "actors": args.actors,
            }
            print("ray, 100k ...", file=sys.stderr)
            engines["ray_100k"] = {**ray_job(args, png_dir, 10, args.actors), "actors": args.actors}
        except BenchError as exc:
            print(f"bench_ray: {exc}", file=sys.stderr)
            return 1
        actor = per_actor(args.model, png_dir)
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
        "engines": engines,
        "per_actor": actor,
        "projection": {str(n): n * cores * actor["core_pipeline_images_per_s"] for n in NODES},
    }
    merge_section(args.out, "ray", section)
    print(markdown(section))
    print(f"\nsaved to {args.out} (section 'ray')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
