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

from collections.abc import Mapping


class MnistEdgeError(Exception):
    """Base class of every error mnist-edge raises on purpose; the message is one line."""


class ConfigError(MnistEdgeError, ValueError):
    """A config value is out of range or inconsistent; raised by the config's ``__post_init__``.

    Every stage validates its frozen config dataclass this one way, when it is made.

    Attributes:
        field: the config field at fault, when there is one (a CLI names its option).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def option_hint(self, options: Mapping[str, str] | None = None) -> str:
        """The message with the command-line option of ``field``: ``... (--batch-size)``.

        Args:
            options: field -> option where the option is not ``--`` + the field with dashes.
        """
        if self.field is None:
            return str(self)
        option = (options or {}).get(self.field, "--" + self.field.replace("_", "-"))
        return f"{self} ({option})"


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
