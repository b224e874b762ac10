"""Result writers for ``mnist-infer`` (table, csv, jsonl) and the run summary.

Writers stream: one line per :class:`~mnist_edge.runtime.messages.Result`, as it comes.
Every format has the same columns in the same order: path, label, confidence,
then the top-k labels (or the error). Printed confidences are cut, not rounded,
at the last digit shown (:func:`confidence_text`): ``1.0000`` means a model that
is certain, never 0.99998.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # keep this module light: the CLI imports it before anything heavy
    from mnist_edge.runtime.messages import Result

FORMATS = ("table", "csv", "jsonl")
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "table",
    ".parquet": "parquet",
}
"""The format an output file's name implies (``-o results.csv``); other names imply none."""

STDOUT = "-"
"""The output named ``-`` is standard output (as the input ``-`` is standard input)."""


def to_stdout(output: str | os.PathLike[str] | None) -> bool:
    """Whether ``output`` means standard output: no output given, or ``-``."""
    return output is None or os.fspath(output) == STDOUT


def check_streams(fmt: str, output: str | os.PathLike[str] | None) -> None:
    """Refuse a format that cannot stream to standard output when ``output`` is it.

    The one check (and message) of both engines: table, csv and jsonl stream;
    Parquet is a file (a folder of them) and needs a path.

    Raises:
        ConfigError: (field ``fmt``) ``fmt`` is not one of :data:`FORMATS` and
            ``output`` is standard output (:func:`to_stdout`).
    """
    from mnist_edge.runtime.errors import ConfigError

    if fmt not in FORMATS and to_stdout(output):
        raise ConfigError(
            f"{fmt} cannot go to standard output (the output is '-' or not given); give "
            f"an output path, or pick a format that streams: {', '.join(FORMATS)}",
            "fmt",
        )


def check_output_file(output: str | os.PathLike[str]) -> None:
    """Refuse, before any work, an output file that could not be written where it is asked for.

    A file is made and removed beside it (as the atomic write will), so what the
    folder allows is tested, not guessed: a missing folder, a file used as a
    folder, a folder with no write permission, a read-only or virtual file system.

    Raises:
        OutputPathError: (field ``output``) the reason, and what to do. The one way both
            engines report an output that cannot be written.
    """
    from mnist_edge.runtime.atomic import temp_prefix
    from mnist_edge.runtime.errors import OutputPathError

    path = os.fspath(output)
    if os.path.isdir(path):
        raise OutputPathError(f"{path} is a folder; name a file (in it, or elsewhere)")
    if os.path.exists(path) and not os.path.isfile(path):  # a device or pipe: written in place
        if not os.access(path, os.W_OK):
            raise OutputPathError(f"cannot write {path}: permission denied")
        return
    folder = os.path.dirname(path) or os.curdir
    if not os.path.exists(folder):
        raise OutputPathError(
            f"cannot write {path}: the folder {folder} does not exist; create it first"
        )
    if not os.path.isdir(folder):
        raise OutputPathError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=temp_prefix(path), suffix=".tmp")
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise OutputPathError(
            f"cannot write {path}: no file can be made in {folder} ({reason}); "
            "write it somewhere else"
        ) from None
    os.close(fd)
    os.unlink(probe)


def output_format(
    fmt: str | None, output: str | os.PathLike[str] | None, default: str = "table"
) -> str:
    """The format to write: ``fmt``, else the one ``output``'s suffix implies, else ``default``.

    Raises:
        ConfigError: ``fmt`` and the suffix disagree (field ``fmt``), or ``output`` ends
            in ``.json``, which a stream of records is not (field ``output``).
    """
    from mnist_edge.runtime.errors import ConfigError

    suffix = os.path.splitext(os.fspath(output))[1].lower() if output is not None else ""
    if suffix == ".json":
        raise ConfigError(
            f"{output}: jsonl writes one JSON record per line, not one JSON document; "
            "name the file .jsonl",
            "output",
        )
    implied = SUFFIX_FORMATS.get(suffix)
    if fmt is not None and implied is not None and fmt != implied:
        raise ConfigError(
            f"format {fmt} does not match {output} ({implied}); drop the format or rename the file",
            "fmt",
        )
    return fmt or implied or default


def confidence_text(p: float, digits: int = 4) -> str:
    """``p`` with ``digits`` decimals, cut rather than rounded up to 1 (0.99998 -> ``0.9999``)."""
    text = f"{p:.{digits}f}"
    if p < 1.0 and text.startswith("1"):
        return f"{1.0 - 10.0**-digits:.{digits}f}"
    return text


def plural(count: int, noun: str) -> str:
    """``1 image``, ``2 images``, ``1,024 images``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


@contextlib.contextmanager
def open_text_output(output: str | os.PathLike[str] | None) -> Iterator[TextIO]:
    """stdout for ``None`` or ``-``; else ``output``, written atomically (temp file + rename on success)."""
    from mnist_edge.runtime.atomic import atomic_path

    if output is None or to_stdout(output):  # None spelled out for mypy
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
    """Writes results in one of :data:`FORMATS` to a text stream.

    The table's path column is as wide as the first path (a longer one pushes
    its row out), so its header is written with the first result.
    """

    def __init__(self, stream: TextIO, fmt: str = "table", top_k: int = 0) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.top_k = top_k
        self._csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        self._width = 0  # the table's path column; 0 until the header is written
        if self._csv is not None:
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
                alts = [x for lab, p in result.top_k for x in (lab, confidence_text(p, 6))]
                alts += [""] * (2 * self.top_k - len(alts))
                conf = confidence_text(_known(result.confidence), 6)
                self._csv.writerow([result.path, result.label, conf, *alts, ""])
        else:
            self._table_row(result)

    def _table_row(self, result: Result) -> None:
        if not self._width:
            self._width = max(len("path"), len(result.path))
            extra = "  top-k" if self.top_k else ""
            self.stream.write(f"{'path':<{self._width}}  {'label':<8} {'confidence':>10}{extra}\n")
        path = f"{result.path:<{self._width}}"
        if result.error is not None:
            self.stream.write(f"{path}  {'ERROR':<8} {'-':>10}  {result.error}\n")
            return
        extra = ""
        if self.top_k:
            extra = "  " + " ".join(f"{lab}:{confidence_text(p)}" for lab, p in result.top_k)
        conf = confidence_text(_known(result.confidence))
        self.stream.write(f"{path}  {result.label:<8} {conf:>10}{extra}\n")


def _known(confidence: float | None) -> float:
    """A classified result's confidence (set whenever its error is not)."""
    return math.nan if confidence is None else confidence


@dataclass
class RunStats:
    """Counts and timing of a run, for the summary line."""

    images: int = 0
    failures: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None

    def add(self, result: Result) -> None:
        self.images += 1
        self.failures += 0 if result.ok else 1

    def stop(self) -> None:
        """The run's work is done: its time stops here (closing things down is not the run)."""
        self.ended = time.perf_counter()

    def leave_out(self, seconds: float) -> None:
        """Keep ``seconds`` spent on start-up during the run out of its time and rate."""
        self.started += seconds

    @property
    def classified(self) -> int:
        return self.images - self.failures

    @property
    def seconds(self) -> float:
        return (self.ended if self.ended is not None else time.perf_counter()) - self.started

    @property
    def rate(self) -> float:
        elapsed = self.seconds
        return self.images / elapsed if elapsed > 0 else 0.0

    def summary(self, provider: str, model: str) -> str:
        """``3 images, 1 failed, 1,200 images/s (0.01 s), provider cpu, model PATH``.

        No rate when nothing was classified (it would time only the failures).
        """
        rate = f", {self.rate:,.0f} images/s" if self.classified else ""
        return (
            f"{plural(self.images, 'image')}, {self.failures:,} failed{rate} "
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
            f"\r{plural(stats.images, 'image'):>16}  {stats.failures:,} failed  {stats.rate:>8,.0f}/s"
        )
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
