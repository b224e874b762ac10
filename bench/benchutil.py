"""Helpers shared by the benchmark scripts (bench_train.py, bench_infer.py); not a test module."""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from mnist_edge.runtime.atomic import atomic_write_text

BENCH_JSON = Path("artifacts") / "bench.json"
"""Where every benchmark merges its section (``--out`` changes it)."""

# The summary line of mnist-infer (both engines): "N images, F failed, R images/s (T s), ..."
_SUMMARY = re.compile(r"([\d,]+) images?, ([\d,]+) failed(?:, ([\d,]+) images/s)? \(([\d.]+) s\)")


@dataclass(frozen=True)
class Summary:
    """What a mnist-infer run says of itself (``images_per_s`` is None when nothing was classified)."""

    images: int
    failed: int
    images_per_s: float | None
    seconds: float


def parse_summary(text: str) -> Summary | None:
    """The last mnist-infer summary line in ``text`` (its stderr), or None."""
    found = _SUMMARY.findall(text)
    if not found:
        return None
    images, failed, rate, seconds = found[-1]
    return Summary(
        int(images.replace(",", "")),
        int(failed.replace(",", "")),
        float(rate.replace(",", "")) if rate else None,
        float(seconds),
    )


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def merge_section(path: Path, name: str, section: dict) -> dict:
    """Read ``path`` (if any; an unreadable file starts afresh), set ``name`` to
    ``section``, write it back atomically (keys sorted) and return the whole dict."""
    data: dict = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
    data[name] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def cpu_flags() -> dict:
    """This CPU's int8-relevant flags (:mod:`mnist_edge.export.cpu`), for bench.json."""
    from mnist_edge.export.cpu import REPORTED_FLAGS, host_cpu_features

    features = host_cpu_features()
    return {
        "machine": features.machine,
        "flags": list(features.reported),
        "absent": [f for f in REPORTED_FLAGS if f not in features.flags],
        "summary": features.summary(),
    }


# The flags named on every benchmark table, present or not (amx: amx_tile/amx_int8).
TABLE_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx")


def cpu_flags_line(flags: dict | None = None) -> str:
    """``CPU flags (x86_64): avx2 yes, avx512_vnni no, ...`` for the line under a table."""
    flags = flags or cpu_flags()
    have = set(flags["flags"])
    marks = [
        f"{name} {'yes' if (name in have or (name == 'amx' and have & {'amx_tile', 'amx_int8'})) else 'no'}"
        for name in TABLE_FLAGS
    ]
    return f"CPU flags ({flags['machine']}): " + ", ".join(marks)
