"""Command-line options that ``mnist-infer`` and ``mnist-serve`` share: which model, on which provider.

click only (no numpy, pillow or ONNX Runtime), so a CLI can declare them
before the heavy libraries load. Resolve the parsed values with
:func:`mnist_edge.runtime.layout.model_path`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from mnist_edge.runtime.layout import DEFAULT

F = TypeVar("F", bound=Callable[..., Any])


def model_options(verb: str) -> Callable[[F], F]:
    """``--model``, ``--int8`` and ``--provider`` for a command that ``verb``\\ s the model ("Use", "Serve")."""
    options = [
        click.option(
            "--model",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help=f"ONNX model file.  [default: {DEFAULT.model()}]",
        ),
        click.option(
            "--int8",
            is_flag=True,
            help=f"{verb} the quantized model ({DEFAULT.model('int8')}, or NAME.int8.onnx beside --model).",
        ),
        click.option(
            "--provider",
            default="auto",
            show_default=True,
            help="Execution provider: auto, cpu, cuda, tensorrt, openvino, ... (auto: int8 files on openvino when installed, fp32 on cuda when present, else cpu).",
        ),
    ]

    def decorate(f: F) -> F:
        for option in reversed(options):  # the order they are listed in --help
            f = option(f)
        return f

    return decorate
