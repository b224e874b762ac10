"""Removing a Ray temp dir after ``ray.shutdown()``: Ray's exiting processes may still write to it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def remove_ray_dir(path: Path, wait_s: float = 5.0) -> None:
    """Delete ``path`` and keep deleting it until it stays gone for half a second (or ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while True:
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(0.5)
        if not path.exists() or time.monotonic() > deadline:
            return
