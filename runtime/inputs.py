"""Command-line inputs -> one :class:`Source` per file, lazily and in a stable order.

Files, directories (walked recursively, sorted by name, dot-files skipped,
directory links followed once), glob patterns (``**`` recursive) and ``-``
(paths on stdin, one per line). Anything wrong with a path becomes a
``Source`` with an ``error``, so every input is accounted for.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

from mnist_edge.runtime.errors import ConfigError

MAX_PIXELS = 120_000_000
"""The largest picture, in pixels, that is decoded unless told otherwise (``max_pixels``).

A guard against decompression bombs (a small file that claims a huge picture),
set to take the full-resolution photos of today's phone cameras up to 108 MP;
docs/inference.md (Picture size) gives the memory a decode of that size needs.
Every front end has an option to raise it (``--max-pixels``, ``max_pixels=``).
Here, in a light module, so the CLIs can show it before the image libraries load.
"""


def check_max_pixels(max_pixels: int) -> int:
    """``max_pixels`` when it is a whole number >= 1 (the one check of every front end).

    Raises:
        ConfigError: (field ``max_pixels``) anything else.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ConfigError(
            f"max_pixels must be a whole number >= 1, not {max_pixels!r}", "max_pixels"
        )
    return max_pixels


@dataclass(frozen=True)
class Source:
    """One input file (or a path that already failed: ``error`` says why)."""

    path: str
    error: str | None = None


def _stat_error(path: str) -> str:
    """Why ``path`` cannot be followed (it exists as a link at least, or not at all)."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if os.path.islink(path):
            return "broken symlink (its target does not exist)"
        if exc.errno == errno.ENOENT:
            return "no such file or directory"
        return exc.strerror or str(exc)
    return "cannot be read"


def _list(top: str) -> tuple[list[str], set[str]]:
    """Sorted visible names in ``top``, and those that are not plain files (dirs, links, ...).

    Names only (small for a million files); the directory's own entry types say
    which are plain files, so those need no ``stat`` each.
    """
    names: list[str] = []
    special: set[str] = set()
    with os.scandir(top) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            names.append(entry.name)
            try:
                plain = entry.is_file(follow_symlinks=False)
            except OSError:
                plain = False
            if not plain:
                special.add(entry.name)
    names.sort()
    return names, special


def _walk(top: str, visited: set[tuple[int, int]]) -> Iterator[Source]:
    """Files under ``top`` (sorted by name, hidden names skipped), following directory links once."""
    try:
        st = os.stat(top)
        key = (st.st_dev, st.st_ino)
        if key in visited:
            yield Source(top, "symlink loop (directory already visited through another link)")
            return
        visited.add(key)
        names, special = _list(top)
    except OSError as exc:
        yield Source(top, f"cannot list directory: {exc.strerror or exc}")
        return
    prefix = os.path.join(top, "")  # prefix + name == os.path.join(top, name)
    for name in names:
        path = prefix + name
        if name not in special:  # a plain file: no stat needed
            yield Source(path)
        elif os.path.isdir(path):
            yield from _walk(path, visited)
        elif not os.path.exists(path):  # a link to nowhere, or a link loop
            yield Source(path, _stat_error(path))
        else:
            yield Source(path)


def _expand(spec: str) -> Iterator[Source]:
    if os.path.lexists(spec):
        if not os.path.exists(spec):
            yield Source(spec, _stat_error(spec))
        elif os.path.isdir(spec):
            found = False
            for source in _walk(spec, set()):
                found = True
                yield source
            if not found:
                yield Source(spec, "empty directory (no files in it)")
        else:
            yield Source(spec)
        return
    if glob.has_magic(spec):
        matches = sorted(glob.iglob(spec, recursive=True))
        if not matches:
            yield Source(spec, "no file matches this pattern")
        for match in matches:
            yield from _expand(match)
        return
    yield Source(spec, "no such file or directory")


def expand_inputs(specs: Iterable[str], stdin: TextIO | None = None) -> Iterator[Source]:
    """Expand command-line inputs into one :class:`Source` per file, lazily and in order.

    Args:
        specs: files, directories (walked recursively, sorted by name, dot-files
            skipped), glob patterns (``**`` recursive), or ``-`` for paths read
            one per line from ``stdin``.
        stdin: where ``-`` reads from.

    Yields:
        :class:`Source`; a missing path, empty directory, broken link, link loop
        or glob without matches gives a ``Source`` with ``error`` set.
    """
    for spec in specs:
        if spec == "-":
            if stdin is None:
                yield Source("-", "no standard input to read paths from")
                continue
            for line in stdin:
                line = line.rstrip("\r\n")
                if line:
                    yield from _expand(line)
        else:
            yield from _expand(spec)
