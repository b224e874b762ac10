"""Process helpers for worker pools: usable cores, and dying with the process that owns them.

Standard library only, so a worker pool can start before numpy, pillow and ONNX
Runtime are imported.

Why workers must watch their owner: pool workers are forked from
multiprocessing's forkserver, not from the process that owns the pool, and each
holds the forkserver's "alive" pipe. When the owner is killed outright
(``kill -9``, the OOM killer) nobody tells them: they wait on their task queue
forever, keeping the forkserver and the resource tracker alive too.
:func:`exit_with` makes a worker notice within a fraction of a second and exit;
the forkserver and the resource tracker then see their pipes close and exit as well.
"""

from __future__ import annotations

import os
import select
import threading
import time

# How often the fallback watcher (no pidfd) polls for the owner.
_POLL_SECONDS = 0.25


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def exit_with(owner_pid: int, code: int = 1) -> threading.Thread | None:
    """End this process (``os._exit(code)``) as soon as process ``owner_pid`` is gone.

    Runs a daemon thread that waits on a pidfd (Linux 5.3+; no polling) or, where
    there is none, checks every quarter second. If the owner is already gone,
    this process exits at once.

    Returns:
        The watcher thread, or ``None`` when ``owner_pid`` is this process itself.
    """
    if owner_pid == os.getpid():
        return None
    try:
        fd = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        os._exit(code)
    except (AttributeError, OSError):  # no pidfd_open (old kernel, not Linux): poll
        fd = -1

    def wait_for_pidfd() -> None:
        select.select([fd], [], [])  # readable once the process has exited
        os._exit(code)

    def poll() -> None:
        while pid_running(owner_pid):
            time.sleep(_POLL_SECONDS)
        os._exit(code)

    watcher = threading.Thread(
        target=wait_for_pidfd if fd >= 0 else poll, name="owner-watch", daemon=True
    )
    watcher.start()
    return watcher


def pid_running(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
