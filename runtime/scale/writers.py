"""Where the Ray engine's result rows go: a Parquet folder written by the cluster, or rows
streamed through this process into the local engine's writers (a file, or stdout).

Imports without Ray; the writers take the job's lazy Dataset and consume it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from mnist_edge.runtime.errors import OutputPathError
from mnist_edge.runtime.output import FORMATS, check_output_file, check_streams, open_text_output

if TYPE_CHECKING:
    import pyarrow as pa
    from ray.data import Dataset

    from mnist_edge.runtime.output import RunStats

PARQUET = "parquet"
RAY_FORMATS = (PARQUET, *FORMATS)
"""Formats of ``--engine ray``: a Parquet folder (the default), or the local engine's."""
STDOUT = "-"
"""``-o -``: standard output, for the formats that stream (every one but Parquet)."""


def stdout_target(output: str | None, fmt: str) -> str | None:
    """``-o`` as the writers take it: ``None`` for standard output (no ``-o``, or ``-o -``).

    Raises:
        ConfigError: ``-o -`` with a format that is not a stream (Parquet is a folder of
            files): the local engine's check and message (:func:`check_streams`).
    """
    if output != STDOUT:
        return output
    check_streams(fmt, output)
    return None


@dataclass(frozen=True)
class Output:
    """Where and how the results go.

    Attributes:
        target: ``-o``: a folder or URI for Parquet, a file for the others; ``None`` = stdout.
        fmt: one of :data:`RAY_FORMATS`.
    """

    target: str | None
    fmt: str

    @classmethod
    def of(cls, output: str | None, fmt: str) -> Output:
        """The output of ``-o`` (``-`` = stdout) and ``--format``, checked (see :meth:`check`)."""
        out = cls(stdout_target(output, fmt), fmt)
        out.check()
        return out

    def check(self) -> None:
        """Refuse an output the run could not write, before any cluster work.

        Raises:
            OutputPathError: (field ``output``) the target does not suit the format, or
                a text format's file could not be written there (:func:`check_output_file`,
                the local engine's check).
        """
        if self.fmt == PARQUET and self.target is None:
            raise OutputPathError(
                "--engine ray writes a Parquet folder: give -o FOLDER (or --format "
                f"{'|'.join(FORMATS)} for standard output)"
            )
        if self.target is None:
            return
        remote = "://" in self.target
        if self.fmt == PARQUET and not remote:
            check_parquet_target(Path(self.target))
        elif self.fmt != PARQUET and remote:
            raise OutputPathError(
                f"{self.target}: --format {self.fmt} writes a local file; "
                "use --format parquet for URIs"
            )
        elif self.fmt != PARQUET:
            check_output_file(self.target)


def check_parquet_target(target: Path) -> None:
    """A Parquet run may create ``target``, or replace a folder of an earlier run (only Parquet files)."""
    if not target.exists():
        if not target.parent.is_dir():
            raise OutputPathError(f"{target.parent} is not a folder")
        return
    if not target.is_dir():
        raise OutputPathError(
            f"{target} exists and is not a folder; --engine ray writes a Parquet folder there"
        )
    others = [p.name for p in target.iterdir() if p.suffix != ".parquet"]
    if others:
        raise OutputPathError(
            f"{target} holds files other than Parquet ({others[0]}, ...); "
            "choose a new or empty folder"
        )


def write_parquet(results: Dataset, output: str, rows_per_file: int, stats: RunStats) -> None:
    """Write the results as a Parquet folder (swapped in whole when local), then count them."""
    if "://" in output:
        results.write_parquet(output, min_rows_per_file=rows_per_file)
        count_rows(output, stats)
        return
    target = Path(output)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        results.write_parquet(str(tmp), min_rows_per_file=rows_per_file)
        count_rows(str(tmp), stats)
        old = None
        if target.exists():  # an earlier run's folder (checked): swap, then delete it
            old = tmp.with_name(tmp.name + ".old")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def count_rows(folder: str, stats: RunStats) -> None:
    """Rows and error rows of a written Parquet folder (reads only the ``error`` column)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    data = pads.dataset(folder, format="parquet")
    stats.images = data.count_rows()
    stats.failures = data.count_rows(filter=pc.field("error").is_valid())


def write_rows(results: Dataset, output: str | None, fmt: str, top_k: int, stats: RunStats) -> None:
    """Stream result rows through this process into a jsonl/csv/table writer (never all at once);
    ``output`` ``None`` is stdout, else a file written atomically."""
    from mnist_edge.runtime.messages import Result
    from mnist_edge.runtime.output import ResultWriter

    with open_text_output(output) as stream:
        writer = ResultWriter(stream, fmt, top_k)
        for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
            table = cast("pa.Table", batch)
            columns = [
                table.column(c).to_pylist() for c in ("path", "error", "label", "confidence")
            ]
            alternatives = table.column("top_k").to_pylist() if top_k else [None] * len(table)
            for path, error, label, confidence, alts in zip(*columns, alternatives, strict=True):
                top = tuple((a["label"], a["confidence"]) for a in alts or ())
                writer.write(Result(path, error, label, confidence, top))
            stats.images += len(table)
            stats.failures += len(table) - table.column("error").null_count
