"""The one decorator every console command is made with, and where errors become exit codes.

``@command("mnist-serve", extras=("serve", "cpu"))`` on a click callback gives
the command ``-h``/``--help`` and ``--version``, checks that its extras are
installed before the callback runs (one line naming the ``pip install`` that
fixes it, exit 1), and turns every error into one ``Error: ...`` line:

- a :class:`~mnist_edge.runtime.errors.MnistEdgeError` ends with its own
  ``exit_code``; a usage error (2) names the option of its ``field``
  (:func:`option_for`), never one guessed from the message;
- an ``OSError`` that escaped (a file that could not be read or written) names
  the file and ends with exit 1.

Importing this module costs only click.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import click

from mnist_edge.runtime import __version__
from mnist_edge.runtime.errors import USAGE, MnistEdgeError
from mnist_edge.runtime.extras import require_extras

# Fields whose option is not "--" + the field with dashes, in every command.
FIELD_OPTIONS: Mapping[str, str] = {"fmt": "--format", "output": "-o"}
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def option_for(field: str | None, options: Mapping[str, str] | None = None) -> str | None:
    """The command-line option of a field (``batch_size`` -> ``--batch-size``; ``None`` -> ``None``).

    Args:
        options: a command's own fields whose option is spelt otherwise.
    """
    if field is None:
        return None
    return {**FIELD_OPTIONS, **(options or {})}.get(field, "--" + field.replace("_", "-"))


def click_error(
    exc: MnistEdgeError, options: Mapping[str, str] | None = None, message: str | None = None
) -> click.ClickException:
    """The click error for ``exc``: its exit code, and for a usage error the option of its field.

    Args:
        options: fields whose option is not ``--`` + the field with dashes.
        message: the text to show instead of ``str(exc)`` (e.g. with a hint added).
    """
    text = str(exc) if message is None else message
    if exc.exit_code == USAGE:
        option = option_for(exc.field, options)
        if option is None:
            return click.UsageError(text)
        return click.BadParameter(text, param_hint=option)
    error = click.ClickException(text)
    error.exit_code = exc.exit_code  # type: ignore[misc]
    return error


def os_error(exc: OSError) -> click.ClickException:
    """One line for a file the run could not read or write (exit 1)."""
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return click.ClickException(f"{where}: {reason}" if where else reason)


def command(
    prog: str,
    extras: tuple[str, ...] = (),
    options: Mapping[str, str] | None = None,
    cls: type[click.Command] = click.Command,
    **context: Any,
) -> Callable[[Callable[..., Any]], click.Command]:
    """Make a click command named ``prog`` with the shared help, version, extras check and errors.

    Args:
        prog: the console command's name (``mnist-infer``).
        extras: the extras it needs (``"serve"``, ``"cpu"``, ...), checked before it runs.
        options: config fields whose option is not ``--`` + the field with dashes.
        cls: the click command class.
        context: more click context settings (``show_default=True``, ...).
    """

    def decorate(f: Callable[..., Any]) -> click.Command:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            with errors_to_exit(options):
                if extras:
                    require_extras(prog, *extras)
                return f(*args, **kwargs)

        run = click.version_option(__version__, "--version", prog_name=prog)(run)
        return click.command(prog, cls=cls, context_settings={**CONTEXT, **context})(run)

    return decorate


@contextlib.contextmanager
def errors_to_exit(options: Mapping[str, str] | None = None) -> Iterator[None]:
    """Inside this block, library errors and ``OSError`` become click errors (see the module)."""
    try:
        yield
    except MnistEdgeError as exc:
        raise click_error(exc, options) from None
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise os_error(exc) from None
