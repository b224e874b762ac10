"""The artifact layout: every file name and default path the stages write or read.

One owner for the names, so ``mnist-train``, ``mnist-export``, ``mnist-infer``,
the bundled files and the tests agree on where things are. Standard library only:
the torch-free runtime and the CLIs' option defaults import it.

::

    artifacts/
      model.pt                   checkpoint (train -> export)
      last.pt                    resume point, rewritten every epoch
      metrics.json  report.md  training.png  confusion.png
      mnist.onnx                 fp32, float32 [batch, 1, 28, 28]
      mnist.int8.onnx            int8 (QDQ)
      mnist[.int8][.batchN][.uint8].onnx    --fixed-batch / --uint8-input variants
      mnist.pixels[.int8].onnx   pixels-in: uint8 [height, width], preprocessing in the graph
      *.ort  mnist.required_operators.config    --ort
      mnist.meta.json            the models' metadata for runtimes that cannot read it (web)
      export.json                the export report

The package also ships the reference recipe's files (fp32, int8, the two
pixels-in files and ``mnist.meta.json``) in ``runtime/models/``
(:data:`BUNDLED`), copied there by ``make bundle``. The default model is
``artifacts/mnist.onnx`` (relative to the working folder) when it exists, else
the bundled one (:func:`default_models`). :func:`bundled_model` gives a bundled
file's path by name (``mnist_edge.runtime.bundled_model``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mnist_edge.runtime.errors import ConfigError, ModelError

DEFAULT_DIR = Path("artifacts")
BUNDLED_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_DATA_DIR = Path("data")

CHECKPOINT = "model.pt"
RESUME = "last.pt"
METRICS = "metrics.json"
REPORT = "report.md"
TRAINING_PLOT = "training.png"
CONFUSION_PLOT = "confusion.png"
EXPORT_REPORT = "export.json"
REQUIRED_OPERATORS = "mnist.required_operators.config"
META_JSON = "mnist.meta.json"

MODEL_STEM = "mnist"
PRECISIONS = ("fp32", "int8")


def model_name(
    precision: str = "fp32",
    *,
    fixed_batch: int | None = None,
    uint8_input: bool = False,
    pixels: bool = False,
    suffix: str = ".onnx",
) -> str:
    """``mnist[.pixels][.int8][.batchN][.uint8].onnx`` (or ``.ort`` with ``suffix``).

    Raises:
        ValueError: an unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    parts = [MODEL_STEM]
    if pixels:
        parts.append("pixels")
    if precision == "int8":
        parts.append("int8")
    if fixed_batch is not None:
        parts.append(f"batch{fixed_batch}")
    if uint8_input:
        parts.append("uint8")
    return ".".join(parts) + suffix


# The interface parts of a variant's name, which follow its precision (model_name's order).
INTERFACE_PART = re.compile(r"batch[0-9]+|uint8")
MODEL_SUFFIXES = ("onnx", "ort")


def int8_sibling(model: str | os.PathLike[str]) -> Path:
    """The quantized file beside ``model``, named as :func:`model_name` (mnist-export) names it.

    ``int8`` goes after the name's stem (and ``pixels``) and before its interface parts
    (``batchN``, ``uint8``); the suffix stays: ``m.onnx`` -> ``m.int8.onnx``,
    ``mnist.batch8.uint8.onnx`` -> ``mnist.int8.batch8.uint8.onnx``, ``mnist.ort`` ->
    ``mnist.int8.ort``. A file already named as int8 (``int8`` among the dotted parts of
    its name, ``mnist.int8.onnx``, ``mnist.int8.batch8.onnx``) is its own int8 file.

    Raises:
        ModelError: the name ends in neither ``.onnx`` nor ``.ort``, so it names no int8 file.
    """
    model = Path(model)
    stem, *middle = model.name.split(".")
    suffix = middle.pop() if middle else ""
    if suffix not in MODEL_SUFFIXES:
        raise ModelError(
            f"{model} does not end in .onnx or .ort, so it names no int8 file; "
            "give the int8 file itself as the model"
        )
    if "int8" in middle:
        return model
    at = len(middle)
    while at and INTERFACE_PART.fullmatch(middle[at - 1]):
        at -= 1
    return model.with_name(".".join([stem, *middle[:at], "int8", *middle[at:], suffix]))


def model_path(model: str | os.PathLike[str] | None, int8: bool = False) -> Path:
    """The model a command runs: ``model`` or the default (:func:`default_models`), or its int8 sibling."""
    if model is None:
        return default_models().model("int8" if int8 else "fp32")
    return int8_sibling(model) if int8 else Path(model)


@dataclass(frozen=True)
class Artifacts:
    """The files of one artifacts folder (``artifacts/`` unless told otherwise)."""

    root: Path = DEFAULT_DIR

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def resume(self) -> Path:
        return self.root / RESUME

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def training_plot(self) -> Path:
        return self.root / TRAINING_PLOT

    @property
    def confusion_plot(self) -> Path:
        return self.root / CONFUSION_PLOT

    @property
    def export_report(self) -> Path:
        return self.root / EXPORT_REPORT

    @property
    def required_operators(self) -> Path:
        return self.root / REQUIRED_OPERATORS

    @property
    def meta_json(self) -> Path:
        return self.root / META_JSON

    def model(
        self,
        precision: str = "fp32",
        *,
        fixed_batch: int | None = None,
        uint8_input: bool = False,
        pixels: bool = False,
        suffix: str = ".onnx",
    ) -> Path:
        """A model file in this folder (arguments as for :func:`model_name`)."""
        name = model_name(
            precision,
            fixed_batch=fixed_batch,
            uint8_input=uint8_input,
            pixels=pixels,
            suffix=suffix,
        )
        return self.root / name


DEFAULT = Artifacts()
BUNDLED = Artifacts(BUNDLED_DIR)
"""The reference model files that ship inside the package (``make bundle`` copies them in)."""


def default_models(needs: str = model_name()) -> Artifacts:
    """Where the default models come from: ``artifacts/`` when it holds ``needs``, else :data:`BUNDLED`.

    One folder for all of them, so ``--int8`` or the pixels-in files never mix
    a freshly exported model with the bundled one. ``artifacts/`` is relative to
    the working folder.

    Args:
        needs: the file that marks an export: ``mnist.onnx`` for the commands,
            ``mnist.meta.json`` for the web page (it reads the pixels-in files).
    """
    return DEFAULT if (DEFAULT.root / needs).is_file() else BUNDLED


# name -> (precision, pixels-in): the names bundled_model() takes, in listing order.
BUNDLED_NAMES: dict[str, tuple[str, bool]] = {
    "fp32": ("fp32", False),
    "int8": ("int8", False),
    "pixels": ("fp32", True),
    "pixels-int8": ("int8", True),
}


def bundled_model(name: str = "fp32") -> Path:
    """The path of one bundled model file, for code that opens it directly.

    Args:
        name: ``"fp32"`` (``mnist.onnx``: preprocessed digits in), ``"int8"``
            (``mnist.int8.onnx``), ``"pixels"`` (``mnist.pixels.onnx``: a picture's
            grey pixels in, the preprocessing inside the graph) or ``"pixels-int8"``
            (``mnist.pixels.int8.onnx``). ``mnist.meta.json``, the pixels-in files'
            metadata for runtimes that cannot read it from the file, is beside them.

    Returns:
        The absolute path of the file inside the installed package.

    Raises:
        ConfigError: an unknown ``name`` (field ``name``).
        ModelError: the file is missing from the package (a broken install).
    """
    if name not in BUNDLED_NAMES:
        raise ConfigError(
            f"no bundled model {name!r}; the names are {', '.join(BUNDLED_NAMES)}", field="name"
        )
    precision, pixels = BUNDLED_NAMES[name]
    path = BUNDLED.model(precision, pixels=pixels)
    if not path.is_file():
        raise ModelError(f"{path} is missing from the package; reinstall mnist-edge")
    return path
