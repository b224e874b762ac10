"""Input specs -> the files to read and the inputs that already failed (nothing is read here).

Local specs are expanded exactly as the local CLI expands them
(:func:`~mnist_edge.runtime.inputs.expand_inputs`, same error texts); URIs
(``s3://``, ``gs://``, ``file://``, ...) with pyarrow's filesystems.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from mnist_edge.runtime.errors import first_line
from mnist_edge.runtime.inputs import Source, expand_inputs

if TYPE_CHECKING:
    import pyarrow.fs as pafs


@dataclass(frozen=True)
class RemoteFiles:
    """Files under one URI: read with ``filesystem``; Ray reports their paths without the scheme.

    Attributes:
        scheme: ``s3://``, ``gs://``, ``file://`` ... (put back in front of each path).
        filesystem: the pyarrow filesystem for the URI.
        paths: file paths as ``filesystem`` names them (``bucket/key`` on object stores).
    """

    scheme: str
    filesystem: pafs.FileSystem
    paths: list[str]


@dataclass(frozen=True)
class InputPlan:
    """Where the readable inputs are, and the rows for those that are not.

    Attributes:
        local: local files to read, named as the local CLI names them.
        remote: files behind URIs, one entry per URI given.
        errors: inputs that failed already (missing, empty folder, no glob match, not a file).
    """

    local: list[str]
    remote: list[RemoteFiles]
    errors: list[Source]


def _is_uri(spec: str) -> bool:
    return "://" in spec


def _check_local(source: Source) -> Source:
    """A listed file, or why it cannot be read as one (in the local CLI's words)."""
    try:
        info = os.stat(source.path)
    except OSError as exc:
        return Source(source.path, f"cannot read image: {exc.strerror or exc}")
    if stat.S_ISDIR(info.st_mode):
        return Source(source.path, "is a directory")
    if not stat.S_ISREG(info.st_mode):  # reading a FIFO or device would block a read task
        return Source(source.path, "not a regular file (FIFO, device or socket)")
    return source


def _wildcard(uri: str) -> int:
    """Index of the first glob character in ``uri``, or -1."""
    found = [i for i in (uri.find("*"), uri.find("?"), uri.find("[")) if i >= 0]
    return min(found) if found else -1


def _expand_uri(uri: str) -> RemoteFiles | Source:
    """One URI -> its files (a file, a folder walked recursively, or a glob), or an error.

    As locally: names starting with ``.`` below the folder are skipped; ``*`` and
    ``?`` do not cross ``/`` unless the pattern has ``**``.
    """
    import pyarrow as pa
    import pyarrow.fs as pafs

    scheme = uri.split("://", 1)[0] + "://"
    cut = _wildcard(uri)
    root = uri if cut < 0 else uri[: uri.rfind("/", 0, cut) + 1]
    try:
        fs, base = pafs.FileSystem.from_uri(root)
        base = base.rstrip("/") or base
        pattern = None if cut < 0 else base + "/" + uri[len(root) :]
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            return Source(uri, "no such file or directory")
        if info.type == pafs.FileType.File and pattern is None:
            return RemoteFiles(scheme, fs, [base])
        listing = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (OSError, ValueError, pa.ArrowException) as exc:
        return Source(uri, f"cannot open this location: {first_line(exc)}")
    files = sorted(
        f.path
        for f in listing
        if f.type == pafs.FileType.File
        and not any(part.startswith(".") for part in f.path[len(base) :].split("/"))
        and (pattern is None or _glob_match(f.path, pattern))
    )
    if not files:
        why = "no file matches this pattern" if pattern else "empty directory (no files in it)"
        return Source(uri, why)
    return RemoteFiles(scheme, fs, files)


def _glob_match(path: str, pattern: str) -> bool:
    if "**" not in pattern and path.count("/") != pattern.count("/"):
        return False
    return fnmatch.fnmatchcase(path, pattern)


def plan_inputs(specs: Sequence[str], stdin: TextIO | None = None) -> InputPlan:
    """Expand inputs without reading them: local ones exactly as the local CLI does
    (:func:`~mnist_edge.runtime.inputs.expand_inputs`), URIs with pyarrow's filesystems.

    Every input ends up in exactly one of the plan's lists.
    """
    local: list[str] = []
    remote: list[RemoteFiles] = []
    errors: list[Source] = []
    local_specs = [s for s in specs if not _is_uri(s)]
    for source in expand_inputs(local_specs, stdin) if local_specs else ():
        source = _check_local(source) if source.error is None else source
        if source.error is None:
            local.append(source.path)
        else:
            errors.append(source)
    for uri in (s for s in specs if _is_uri(s)):
        found = _expand_uri(uri)
        if isinstance(found, Source):
            errors.append(found)
        else:
            remote.append(found)
    return InputPlan(local, remote, errors)
