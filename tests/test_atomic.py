"""Atomic writes: whole or not at all for files; devices and pipes are written in place, never replaced."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from mnist_edge.runtime.atomic import atomic_path, atomic_write_text
from mnist_edge.runtime.output import open_text_output


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("writer", ["atomic_write_text", "open_text_output"])
def test_a_named_pipe_is_written_not_replaced(tmp_path, writer):
    fifo = tmp_path / "results"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    if writer == "atomic_write_text":
        atomic_write_text(fifo, "7\n")
    else:
        with open_text_output(fifo) as stream:
            stream.write("7\n")
    reader.join(10)
    assert got == ["7\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # still the pipe: a rename would have replaced it
    assert [p.name for p in tmp_path.iterdir()] == ["results"]
