"""Training-speed benchmark: seconds per epoch of the reference recipe on real data.

Run it directly (pytest does not collect ``bench_*.py``)::

    .venv/bin/python bench/bench_train.py                 # 3 epochs, auto device
    .venv/bin/python bench/bench_train.py --epochs 15     # the whole recipe
    .venv/bin/python bench/bench_train.py --no-channels-last --threads 1

It trains into a temporary folder (``artifacts/model.pt`` is left alone), then
merges a ``"training"`` section into ``artifacts/bench.json`` (read, modify,
atomic write) and prints that section. Seconds per epoch include the
validation pass, as Keras's do; the first epoch (warm-up) is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from benchutil import (  # bench/ is sys.path[0] for scripts
    cpu_flags,
    cpu_flags_line,
    cpu_name,
    merge_section,
)

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(args: argparse.Namespace) -> dict:
    """Train with the benchmark's options and return the ``training`` section."""
    import torch

    from mnist_edge.train.config import TrainConfig
    from mnist_edge.train.loop import train

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        config = TrainConfig(
            dataset=args.dataset,
            data_dir=args.data_dir,
            out_dir=Path(tmp),
            epochs=args.epochs,
            device=args.device,
            train_limit=args.train_limit,
            channels_last=args.channels_last,
            amp=args.amp,
            compile=args.compile,
            progress=False,
        )
        result = train(config, log=lambda line: print(line, file=sys.stderr))
        train_images = json.loads(result.metrics.read_text())["dataset"]["train_size"]
    seconds = [h.seconds for h in result.history]
    steps = -(-train_images // config.batch_size)
    steady = seconds[1:] or seconds
    return {
        "device": result.device,
        "device_name": torch.cuda.get_device_name(result.device)
        if result.device.startswith("cuda")
        else cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "options": {
            k: getattr(config, k)
            for k in ("epochs", "batch_size", "channels_last", "amp", "compile")
        }
        | {"train_limit": args.train_limit},
        "train_images": train_images,
        "steps_per_epoch": steps,
        "ms_per_step": round(1000 * statistics.mean(steady) / steps, 2),
        "seconds_per_epoch": round(statistics.mean(steady), 3),
        "seconds_per_epoch_min": round(min(steady), 3),
        "first_epoch_seconds": round(seconds[0], 3),
        "epoch_seconds": [round(s, 3) for s in seconds],
        "whole_recipe_seconds": round(sum(seconds), 3),
        "test_accuracy": round(result.test_accuracy, 4),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs to time (default 3)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training images")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile")
    parser.add_argument(
        "--omp-wait-policy",
        choices=["passive", "active"],
        default="passive",
        help="OMP_WAIT_POLICY (mnist-train defaults to passive)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench.json")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "torch" in sys.modules:
        print("warning: torch already loaded, --omp-wait-policy has no effect", file=sys.stderr)
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    section = run_benchmark(args)
    merge_section(args.out, "training", section)
    print(json.dumps({"training": section}, indent=2))
    print(cpu_flags_line(section["cpu_flags"]))
    print(f"merged into {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
