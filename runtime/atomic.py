"""Atomic file writes: a temp file in the target's folder, then one rename.

A reader (or a crashed writer) never sees a half-written checkpoint, model or
report: the target either keeps its old content or has the whole new one.

Temp files are named ``.NAME.PID.XXXX.tmp`` after the writing process. A
writer killed outright (``kill -9``, the OOM killer) cannot remove its own;
the next write to the same target removes those whose process is gone.

A target that exists and is not a regular file (``/dev/null``, ``/dev/stdout``,
a named pipe) has no content to protect and must not be replaced: it is
written in place.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mnist_edge.runtime.processes import pid_running

# mkstemp creates 0600 files; give ours the mode a plain open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    The caller writes the temp path however it likes (``torch.save``,
    ``onnx.save``, ``Path.write_text``). If the block raises, the temp file is
    removed and ``target`` is left untouched. A ``target`` that exists and is
    not a regular file (a device, a named pipe) is yielded itself: renaming a
    file onto ``/dev/null`` would replace the device.
    """
    target = Path(target)
    if _special(target):
        yield target
        return
    remove_stale_temps(target)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, _FILE_MODE)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_prefix(target: str | os.PathLike[str]) -> str:
    """How this process's temp files for ``target`` begin (``.NAME.PID.``)."""
    return f".{Path(target).name}.{os.getpid()}."


def _special(target: Path) -> bool:
    """``target`` exists and is neither a regular file nor a folder (a device, a pipe, a socket)."""
    try:
        mode = target.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Remove temp files of ``target`` left by writers that no longer run; return them."""
    target = Path(target)
    prefix = f".{target.name}."
    removed: list[Path] = []
    try:
        names = os.listdir(target.parent)
    except OSError:  # the folder is missing or unreadable: mkstemp will say so
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not pid_running(int(pid)):
            with contextlib.suppress(FileNotFoundError):  # another writer got there first
                (target.parent / name).unlink()
                removed.append(target.parent / name)
    return removed


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))
