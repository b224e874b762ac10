"""One readable line out of a multi-line exception message, for one-line errors.

Torch, ONNX Runtime, urllib and pip put paragraphs in their messages; our
errors quote one line of them. Torch-free, so every stage can use it.
"""

from __future__ import annotations


def _lines(message: BaseException | str) -> list[str]:
    return [ln.strip() for ln in str(message).splitlines() if ln.strip()]


def first_line(message: BaseException | str) -> str:
    """The first non-blank line (an exception's type name if it has no message)."""
    lines = _lines(message)
    if lines:
        return lines[0]
    return type(message).__name__ if isinstance(message, BaseException) else ""


def last_line(message: BaseException | str) -> str:
    """The last non-blank line (torch, urllib and pip put the cause there)."""
    lines = _lines(message)
    if lines:
        return lines[-1]
    return type(message).__name__ if isinstance(message, BaseException) else ""
