"""The bundled reference model: where its files are, and what each one takes.

The package ships four ONNX files and ``mnist.meta.json`` (``runtime/models/``,
:data:`~mnist_edge.runtime.layout.BUNDLED`), so a ``pip install '.[cpu]'``
answers with no training. :func:`~mnist_edge.runtime.layout.bundled_model` gives
one file's path by name; :func:`bundled_models` describes them all, read from
the files themselves (``mnist-infer --list-models`` prints it).

Importing this module costs only the standard library and click; ONNX Runtime
loads when :func:`bundled_models` reads the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from mnist_edge.runtime import layout
from mnist_edge.runtime.layout import BUNDLED_NAMES, bundled_model

PRECISION_KEY = "mnist_edge.precision"
# ONNX Runtime's element type names -> numpy's.
_ELEMENT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}


@dataclass(frozen=True)
class BundledModel:
    """One bundled file, as read from the file.

    Attributes:
        name: what :func:`bundled_model` takes (``"pixels-int8"``).
        path: the file's absolute path.
        precision: ``"fp32"`` or ``"int8"`` (the file's ``mnist_edge.precision`` metadata).
        input: the graph's input: name, element type and shape (``"image float32
            [batch, 1, 28, 28]"``, ``"pixels uint8 [height, width]"``).
        size: the file's size in bytes.
    """

    name: str
    path: Path
    precision: str
    input: str
    size: int


def _describe(name: str, path: Path) -> BundledModel:
    from mnist_edge.runtime.session import SessionConfig, create_session

    session = create_session(path, SessionConfig(provider="cpu", threads=1))
    props = session.get_modelmeta().custom_metadata_map
    (graph_input,) = session.get_inputs()
    element = _ELEMENT_TYPES.get(graph_input.type, graph_input.type)
    shape = ", ".join(str(d) for d in graph_input.shape)
    return BundledModel(
        name=name,
        path=path,
        precision=props.get(PRECISION_KEY, "(not recorded)"),
        input=f"{graph_input.name} {element} [{shape}]",
        size=path.stat().st_size,
    )


def bundled_models() -> list[BundledModel]:
    """Every bundled model file, in the order of :data:`~mnist_edge.runtime.layout.BUNDLED_NAMES`, described from the file.

    Raises:
        ModelError: a file is missing or not a loadable ONNX model (a broken install).
    """
    return [_describe(name, bundled_model(name)) for name in BUNDLED_NAMES]


def models_table(models: list[BundledModel]) -> str:
    """A table of ``models``: name, precision, input, size, then the path (last, for copying)."""
    rows = [("name", "precision", "input", "size", "path")]
    rows += [
        (m.name, m.precision, m.input, f"{m.size / 1024:.1f} KiB", str(m.path)) for m in models
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    ]
    meta = layout.BUNDLED.meta_json
    lines.append(f"metadata for the pixels-in files (web page, apps): {meta}")
    return "\n".join(lines)


def list_models_option(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Click callback of ``--list-models``: print :func:`models_table` and exit 0 (no inputs needed)."""
    if not value or ctx.resilient_parsing:
        return
    from mnist_edge.runtime.command import errors_to_exit
    from mnist_edge.runtime.extras import require_extras

    with errors_to_exit():
        require_extras(ctx.info_name or "mnist-infer", "cpu")
        click.echo(models_table(bundled_models()))
    ctx.exit(0)
