"""Result writers for ``mnist-infer`` (table, csv, jsonl) and the run summary.

Writers stream: one line per :class:`~mnist_edge.runtime.messages.Result`, as it comes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # keep this module light: the CLI imports it before anything heavy
    from mnist_edge.runtime.messages import Result

FORMATS = ("table", "csv", "jsonl")


@contextlib.contextmanager
def open_text_output(output: str | os.PathLike[str] | None) -> Iterator[TextIO]:
    """stdout for ``None``; else ``output``, written atomically (temp file + rename on success)."""
    from mnist_edge.runtime.atomic import atomic_path

    if output is None:
        yield sys.stdout
        return
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as stream:
        yield stream


def json_record(result: Result, top_k: int = 0) -> dict[str, Any]:
    """One result as the ``jsonl`` format writes it (and ``mnist-serve`` returns it).

    ``{"path", "label", "confidence"}`` plus ``"top_k": [{"label", "confidence"}, ...]``
    when ``top_k`` > 0, or ``{"path", "error"}`` for an input that failed.
    """
    if result.error is not None:
        return {"path": result.path, "error": result.error}
    record: dict[str, Any] = {
        "path": result.path,
        "label": result.label,
        "confidence": result.confidence,
    }
    if top_k:
        record["top_k"] = [{"label": lab, "confidence": p} for lab, p in result.top_k]
    return record


class ResultWriter:
    """Writes results in one of :data:`FORMATS` to a text stream."""

    def __init__(self, stream: TextIO, fmt: str = "table", top_k: int = 0) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.top_k = top_k
        self._csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        self._header()

    def _header(self) -> None:
        if self.fmt == "table":
            extra = "  top-k" if self.top_k else ""
            self.stream.write(f"{'label':<8} {'confidence':>10}  path{extra}\n")
        elif self._csv is not None:
            row = ["path", "label", "confidence"]
            for i in range(1, self.top_k + 1):
                row += [f"label_{i}", f"confidence_{i}"]
            self._csv.writerow([*row, "error"])

    def write(self, result: Result) -> None:
        if self.fmt == "jsonl":
            record = json_record(result, self.top_k)
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif self._csv is not None:
            if result.error is not None:
                self._csv.writerow([result.path, "", "", *[""] * (2 * self.top_k), result.error])
            else:
                alts = [x for lab, p in result.top_k for x in (lab, f"{p:.6f}")]
                alts += [""] * (2 * self.top_k - len(alts))
                self._csv.writerow(
                    [result.path, result.label, f"{result.confidence:.6f}", *alts, ""]
                )
        else:
            if result.error is not None:
                self.stream.write(f"{'ERROR':<8} {'-':>10}  {result.path}: {result.error}\n")
            else:
                extra = ""
                if self.top_k:
                    extra = "  " + " ".join(f"{lab}:{p:.4f}" for lab, p in result.top_k)
                self.stream.write(
                    f"{result.label:<8} {result.confidence:>10.4f}  {result.path}{extra}\n"
                )


@dataclass
class RunStats:
    """Counts and timing of a run, for the summary line."""

    images: int = 0
    failures: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, result: Result) -> None:
        self.images += 1
        self.failures += 0 if result.ok else 1

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        elapsed = self.seconds
        return self.images / elapsed if elapsed > 0 else 0.0

    def summary(self, provider: str, model: str) -> str:
        return (
            f"{self.images} images, {self.failures} failed, {self.rate:,.0f} images/s "
            f"({self.seconds:.2f} s), provider {provider}, model {model}"
        )


class Progress:
    """A one-line counter on a terminal, redrawn at most every ``interval`` seconds."""

    def __init__(self, stream: TextIO, interval: float = 0.2) -> None:
        self.stream = stream
        self.interval = interval
        self._last = 0.0
        self._drawn = False

    def update(self, stats: RunStats) -> None:
        now = time.perf_counter()
        if now - self._last < self.interval:
            return
        self._last = now
        self._drawn = True
        self.stream.write(
            f"\r{stats.images:>10,} images  {stats.failures:,} failed  {stats.rate:>8,.0f}/s"
        )
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
