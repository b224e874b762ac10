"""When ``mnist-infer``'s worker processes pay: wall time with and without them, by input count.

Run from the repo root (``make bench`` runs it)::

    .venv/bin/python bench/bench_workers.py                # 100, 300, 1,000, 3,000, 10,000 PNGs
    .venv/bin/python bench/bench_workers.py --sizes 100,1000 --repeats 5

For each count N it writes N small PNGs (``mnist-samples``' pictures: the MNIST
test digits when ``--data-dir`` has them, else drawn ones) and times, as a user
would see it, the whole ``mnist-infer`` command (start-up included) three ways,
alternated within each round so that drift in the machine's load hits all alike:

* ``--workers 0``: everything in the main process;
* ``workers``: the default's worker processes, used whatever N is (the inline limit
  set to 1 in that process, so below the limit this shows what workers would cost);
* ``default``: ``mnist-infer`` as it ships (in process up to
  ``mnist_edge.runtime.workers.INLINE_LIMIT`` inputs, workers past it).

The default is right when it is never slower than ``--workers 0``: the limit
belongs where ``workers`` starts to win. Prints a table (medians and best of
``--repeats`` rounds, in seconds) with the CPU, and merges a ``"workers"``
section into ``artifacts/bench.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import BENCH_JSON, cpu_flags, cpu_flags_line, cpu_name, merge_section

from mnist_edge.runtime.layout import BUNDLED
from mnist_edge.runtime.processes import usable_cores
from mnist_edge.runtime.workers import INLINE_LIMIT
from mnist_edge.tools.samples import SamplesError, drawn_digits, load_test_set, write_samples

SIZES = (100, 300, 1000, 3000, 10000)
# mnist-infer with the inline limit at 1: its default workers start whatever the count.
ALWAYS_WORKERS = (
    "import sys, mnist_edge.runtime.workers as w; w.INLINE_LIMIT = 1; "
    "from mnist_edge.runtime.cli import main; sys.argv[0] = 'mnist-infer'; main()"
)
VARIANTS = ("workers 0", "workers", "default")


def _pictures(out: Path, count: int, data_dir: Path) -> str:
    """Write ``count`` PNGs into ``out`` (no variants); returns where the digits came from."""
    try:
        images, labels = load_test_set(data_dir)
        source = "MNIST test digits"
    except SamplesError:
        images, labels, source = *drawn_digits(count), "drawn digits"
    if len(images) < count:  # more than the test set: its digits again
        images, labels = np.resize(images, (count, *images.shape[1:])), np.resize(labels, count)
    write_samples(out, images, labels, count=count, variant_count=0)
    return source


def _command(variant: str, folder: Path, model: Path) -> list[str]:
    infer = str(Path(sys.executable).with_name("mnist-infer"))
    args = [str(folder), "--model", str(model), "--format", "csv", "--quiet"]
    if variant == "workers 0":
        return [infer, *args, "--workers", "0"]
    if variant == "workers":
        return [sys.executable, "-c", ALWAYS_WORKERS, *args]
    return [infer, *args]


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"bench_workers: {' '.join(command[:3])} ... failed: {proc.stderr.strip()}"
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="input counts, comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds per count")
    parser.add_argument("--model", type=Path, default=BUNDLED.model(), help="ONNX model")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=BENCH_JSON, help="bench JSON to merge into")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"CPU: {cpu_name()}, {usable_cores()} usable cores; {cpu_flags_line()}", flush=True)
    print(
        f"load average at start: {os.getloadavg()[0]:.2f}; INLINE_LIMIT = {INLINE_LIMIT}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        everything = Path(tmp) / "all"
        source = _pictures(everything, max(sizes), args.data_dir)
        names = sorted(os.listdir(everything))
        for size in sizes:
            folder = Path(tmp) / str(size)
            folder.mkdir()
            for name in names[:size]:
                os.link(everything / name, folder / name)
            _wall(_command("workers 0", folder, args.model))  # warm the page cache
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for round_ in range(args.repeats):
                order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    times[variant].append(_wall(_command(variant, folder, args.model)))
            row = {
                "inputs": size,
                **{f"{v} median s": round(statistics.median(t), 3) for v, t in times.items()},
                **{f"{v} best s": round(min(t), 3) for v, t in times.items()},
                "runs": {v: [round(x, 3) for x in t] for v, t in times.items()},
            }
            rows.append(row)
            print(
                f"{size:>6} inputs: "
                + "  ".join(
                    f"{v} {statistics.median(t):.2f} s (best {min(t):.2f})"
                    for v, t in times.items()
                ),
                flush=True,
            )
    print()
    print("| inputs | --workers 0 | workers (any count) | default |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['inputs']:,} | "
            + " | ".join(f"{r[f'{v} median s']:.2f} s" for v in VARIANTS)
            + " |"
        )
    print(f"(medians of {args.repeats} rounds, wall time of the whole command; {source})")
    merge_section(
        args.out,
        "workers",
        {
            "cpu": cpu_name(),
            "cpu_flags": cpu_flags(),
            "usable_cores": usable_cores(),
            "inline_limit": INLINE_LIMIT,
            "repeats": args.repeats,
            "pictures": source,
            "rows": rows,
        },
    )
    print(f"merged into {args.out}")


if __name__ == "__main__":
    main()
