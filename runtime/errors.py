"""The one error base of mnist-edge, and one readable line out of long exception messages.

Every error the library raises on purpose derives from :class:`MnistEdgeError`,
so a caller (and each CLI) catches one class; each class carries the exit code a
command ends with and the field at fault, from which a command names its option
(:mod:`mnist_edge.runtime.command`). Stage-specific subclasses also
derive from the built-in they refine (``ValueError`` for bad values, ``OSError``
for I/O, ``RuntimeError`` for an environment that cannot do the job), so
``except ValueError`` keeps working. Messages say what is wrong and what to change
in the library's words (arguments, values, files); only the CLIs add flags and
make targets.

Torch, ONNX Runtime, urllib and pip put paragraphs in their messages; our
errors quote one line of them. Torch-free, so every stage can use it.
"""

from __future__ import annotations

# Exit statuses, as click uses them: 1 the run failed, 2 the command line is wrong.
RUN_FAILED = 1
USAGE = 2


class MnistEdgeError(Exception):
    """Base class of every error mnist-edge raises on purpose; the message is one line.

    Attributes:
        exit_code: the exit status a command ends with for it (class default:
            :data:`RUN_FAILED`; errors in what the user asked for: :data:`USAGE`).
        field: the argument or config field at fault, when there is one; a command
            names the option of the same name (``batch_size`` -> ``--batch-size``).
    """

    exit_code: int = RUN_FAILED
    default_field: str | None = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field if field is not None else self.default_field


class ConfigError(MnistEdgeError, ValueError):
    """A config value is out of range or inconsistent; raised by the config's ``__post_init__``.

    Every stage validates its frozen config dataclass this one way, when it is made.
    """

    exit_code = USAGE


class SessionConfigError(ConfigError):
    """A :class:`~mnist_edge.runtime.session.SessionConfig` value is out of range."""


class ProviderError(MnistEdgeError, RuntimeError):
    """The requested execution provider is unknown or not available here."""

    exit_code = USAGE
    default_field = "provider"


class ModelError(MnistEdgeError, ValueError):
    """The model file is missing, not ONNX, or not an image classifier we can feed."""

    exit_code = USAGE
    default_field = "model"


class MissingExtraError(MnistEdgeError, RuntimeError):
    """A command needs packages from an extra that is not installed."""


class DecoderError(MnistEdgeError, RuntimeError):
    """A worker process died or could not start; the run cannot account for its inputs."""


class OutputPathError(MnistEdgeError, ValueError):
    """A file cannot be written where it was asked for (no such folder, not a folder, no permission)."""

    exit_code = USAGE
    default_field = "output"


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
