"""One line out of multi-line exception messages (runtime/errors.py)."""

from __future__ import annotations

import pytest

from mnist_edge.runtime.errors import first_line, last_line


@pytest.mark.parametrize(
    "message, first, last",
    [
        (ValueError("\n  cause one  \n\n detail two \n"), "cause one", "detail two"),
        (ValueError(""), "ValueError", "ValueError"),
        ("stderr text\nERROR: no wheel\n", "stderr text", "ERROR: no wheel"),
        ("", "", ""),
    ],
    ids=["multi-line", "empty-exception", "text", "empty-text"],
)
def test_first_and_last_line(message, first, last) -> None:
    assert first_line(message) == first
    assert last_line(message) == last
