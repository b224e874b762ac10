"""Helpers shared by the benchmark scripts (bench_train.py, bench_infer.py); not a test module."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from mnist_edge.runtime.atomic import atomic_write_text


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


def cpu_flags() -> str:
    """The vector-instruction flags that matter for inference speed (AVX2, AVX-512, VNNI, BF16, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                keep = [f for f in flags if f.startswith(("avx", "amx", "fma")) or f == "f16c"]
                return " ".join(sorted(keep)) or "none of avx/fma/amx"
    except OSError:
        pass
    return "unknown"
