"""Nothing but the known entries is committed at the repository's root.

A stray output (a folder named ``-`` from ``-o -``, a ``results.csv``, an
``artifacts/`` run) once reached a commit; this fails on the next one. A new
top-level entry is a decision: add it here, and to the layout in
docs/architecture.md.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

KNOWN = {
    # code, one folder a layer (docs/architecture.md)
    "runtime",
    "train",
    "export",
    "tools",
    "web",
    "firmware",
    "package",
    "bench",
    "tests",
    "docs",
    # the project's files
    ".ci",
    ".gitignore",
    "LICENSE",
    "Makefile",
    "README.md",
    "pyproject.toml",
}


def _tracked_top_level() -> set[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    proc = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, timeout=60
    )
    if proc.returncode != 0:
        pytest.skip("not a git checkout (an unpacked source distribution)")
    names = proc.stdout.decode("utf-8", "surrogateescape").split("\0")
    return {name.split("/", 1)[0] for name in names if name}


def test_only_known_entries_are_committed_at_the_root() -> None:
    stray = sorted(_tracked_top_level() - KNOWN)
    assert stray == [], (
        f"committed at the repository root but not known: {stray}; remove them "
        "(git rm -r --cached NAME), or add a real new entry to KNOWN here and to docs/architecture.md"
    )


def test_the_known_entries_are_there() -> None:
    """KNOWN stays true: an entry that is gone is taken out of it."""
    missing = sorted(KNOWN - _tracked_top_level())
    assert missing == [], f"KNOWN lists entries the repository no longer has: {missing}"
