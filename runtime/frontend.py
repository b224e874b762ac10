"""The glue the three front ends share (``mnist-infer``, ``mnist-serve``, the Ray engine).

- the options they have in common, declared once (:func:`model_options`,
  :func:`threads_option`, :func:`invert_option`, :func:`top_k_option`,
  :func:`max_pixels_option`);
- which model a command runs and which option to blame for it (:class:`ModelChoice`);
- one way to open a model: :func:`model_errors` turns the library's errors into
  click errors that name the option at fault (from the error's type, and for a
  :class:`~mnist_edge.runtime.errors.ConfigError` from its ``field``, never from
  its text) and shows the library's warnings on stderr; :func:`load_classifier`
  opens a :class:`~mnist_edge.runtime.classifier.Classifier` with it.

Importing this module costs only click: a CLI declares its options before the
heavy libraries load (they load inside the functions).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mnist_edge.runtime.command import click_error
from mnist_edge.runtime.errors import ConfigError, MnistEdgeError, ModelError
from mnist_edge.runtime.inputs import MAX_PIXELS
from mnist_edge.runtime.layout import model_path
from mnist_edge.runtime.metadata import INVERT_MODES

if TYPE_CHECKING:
    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.session import SessionConfig

F = TypeVar("F", bound=Callable[..., Any])

MODEL_HINT = "--model picks another file (mnist-export makes one from a checkpoint)"
DEFAULT_MODEL_HELP = "artifacts/mnist.onnx if it exists, else the bundled reference model"


def _decorate(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        for option in reversed(options):  # the order they are listed in --help
            f = option(f)
        return f

    return decorate


class AliasedOption(click.Option):
    """A click option whose old spellings still parse but are shown neither in ``--help`` nor in errors.

    ``click.option("--out-dir", cls=AliasedOption, aliases=("--out",), ...)``: one
    name for one idea across the commands, without breaking scripts that use the old one.
    """

    def __init__(self, param_decls: list[str], aliases: tuple[str, ...] = (), **attrs: Any) -> None:
        super().__init__([*param_decls, *aliases], **attrs)
        self.aliases = tuple(aliases)

    def _shown(self) -> list[str]:
        return [o for o in self.opts if o not in self.aliases]

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        opts = self.opts
        self.opts = self._shown()
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return " / ".join(f"'{o}'" for o in self._shown())


def model_options(verb: str) -> Callable[[F], F]:
    """``--model``, ``--int8`` and ``--provider`` for a command that ``verb``\\ s the model ("Use", "Serve")."""
    return _decorate(
        [
            click.option(
                "--model",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help=f"ONNX model file.  [default: {DEFAULT_MODEL_HELP}]",
            ),
            click.option(
                "--int8",
                is_flag=True,
                help=f"{verb} the quantized model (mnist.int8.onnx beside the default model, "
                "or NAME.int8.onnx beside --model, as mnist-export names it: mnist.int8.batch8.onnx for "
                "mnist.batch8.onnx; a --model named *.int8.onnx is itself).",
            ),
            click.option(
                "--provider",
                default="auto",
                show_default=True,
                help="Execution provider: auto, cpu, cuda, tensorrt, openvino, ... (auto: int8 files on openvino when installed, fp32 on cuda when present, else cpu).",
            ),
        ]
    )


def threads_option(where: str = "") -> Callable[[F], F]:
    """``--threads``: ONNX Runtime's CPU threads (``where`` says whose, e.g. " in the main process")."""
    return click.option(
        "--threads",
        type=click.IntRange(1, 1024),
        default=None,
        help=f"ONNX Runtime CPU threads{where}.  [default: usable cores]",
    )


def invert_option(what: str = "pictures") -> Callable[[F], F]:
    """``--invert``: how a picture is made white-on-black before it is classified."""
    return click.option(
        "--invert",
        type=click.Choice(INVERT_MODES),
        default="auto",
        show_default=True,
        help=f"Make {what} white-on-black (as MNIST): auto inverts those with a light "
        "background; always inverts every one, which turns MNIST-style (white-on-black) "
        "input black-on-white and wrong; never leaves them as they are.",
    )


def top_k_option() -> Callable[[F], F]:
    """``--top-k K``: also report the K most probable labels (checked against the model by :func:`check_top_k`).

    Any whole number parses; the range (0 to the model's classes) and its message
    are the library's, the same for the API and the server.
    """
    return click.option(
        "--top-k",
        type=int,
        default=None,
        help="Also report the K most probable labels (0: none; at most the model's classes).",
    )


def max_pixels_option() -> Callable[[F], F]:
    """``--max-pixels N``: the largest picture decoded (:data:`~mnist_edge.runtime.inputs.MAX_PIXELS`)."""
    return click.option(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help="Refuse pictures with more pixels, each with its own error (a guard against "
        f"decompression bombs; raise it for bigger photos).  [default: {MAX_PIXELS:,}]",
    )


@dataclass(frozen=True)
class ModelChoice:
    """The model a command was asked to run: ``--model`` and ``--int8`` as parsed.

    Attributes:
        model: ``--model``, or ``None`` for the default.
        int8: ``--int8``.
    """

    model: Path | None = None
    int8: bool = False

    @property
    def path(self) -> Path:
        """The file to open (``--model`` or the default, or its int8 sibling)."""
        return model_path(self.model, self.int8)

    @property
    def option(self) -> str:
        """The option to blame when that file is missing or bad."""
        return "--int8" if self.int8 and self.model is None else "--model"


@contextlib.contextmanager
def model_errors(choice: ModelChoice, options: Mapping[str, str] | None = None) -> Iterator[None]:
    """Open a model inside this block: library errors become click errors, warnings go to stderr.

    ``ProviderError`` blames ``--provider``; ``ModelError`` blames ``choice.option``
    (with how to make the default model); ``ConfigError`` blames the option of
    its ``field`` (``options`` maps fields whose option is spelt otherwise); any
    other :class:`MnistEdgeError` is a plain error (exit 1).

    Raises:
        click.BadParameter: exit 2, naming the option.
        click.ClickException: exit 1.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except ModelError as exc:
            raise click.BadParameter(f"{exc}; {MODEL_HINT}", param_hint=choice.option) from None
        except MnistEdgeError as exc:
            raise click_error(exc, options) from None
        finally:
            for warning in caught:
                click.echo(f"warning: {warning.message}", err=True)


def load_classifier(choice: ModelChoice, session: SessionConfig | None = None) -> Classifier:
    """The :class:`Classifier` for ``choice``, or click errors naming the option at fault.

    Raises:
        click.BadParameter, click.ClickException: see :func:`model_errors`.
    """
    from mnist_edge.runtime.classifier import Classifier

    with model_errors(choice):
        return Classifier(choice.path, config=session)


def check_top_k(top_k: int, classes: tuple[str, ...]) -> None:
    """``--top-k`` must be 0 to the model's classes (:func:`~mnist_edge.runtime.classifier.check_top_k`).

    Raises:
        click.BadParameter: naming ``--top-k``, with the library's message.
    """
    from mnist_edge.runtime.classifier import check_top_k as check

    try:
        check(top_k, len(classes))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--top-k") from None
