"""The one error base of mnist-edge, and one readable line out of long exception messages.

Every error the library raises on purpose derives from :class:`MnistEdgeError`,
so a caller (and each CLI) catches one class. Stage-specific subclasses also
derive from the built-in they refine (``ValueError`` for bad values, ``OSError``
for I/O, ``RuntimeError`` for an environment that cannot do the job), so
``except ValueError`` keeps working. Messages say what is wrong and what to change
in the library's words (arguments, values, files); only the CLIs add flags and
make targets.

Torch, ONNX Runtime, urllib and pip put paragraphs in their messages; our
errors quote one line of them. Torch-free, so every stage can use it.
"""

from __future__ import annotations


class MnistEdgeError(Exception):
    """Base class of every error mnist-edge raises on purpose; the message is one line."""


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
