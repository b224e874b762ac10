"""Checkpoints that carry their own recipe, loadable with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(path, weights_only=True)`` reads it without unpickling code:

=================  ==========================================================
key                value
=================  ==========================================================
format             ``"mnist-edge-checkpoint"``
format_version     ``1``
model_config       :meth:`ConvNetConfig.to_dict` (rebuilds the net alone)
state_dict         the model weights
recipe             the training config as a JSON-able dict
dataset            ``{"name": str, "classes": [str, ...]}``
metrics            test/val loss and accuracy, per-epoch ``history``
versions           torch, torchvision, mnist-edge, python
device             the device the model was trained on
created            ISO-8601 UTC timestamp
complete           ``True`` for a finished run, ``False`` for a resume point
epoch              epochs completed
resume             (resume points only) optimizer state and RNG states
=================  ==========================================================
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mnist_edge.runtime import __version__ as MNIST_EDGE_VERSION
from mnist_edge.runtime.atomic import atomic_path
from mnist_edge.runtime.errors import MnistEdgeError, first_line
from mnist_edge.runtime.metadata import MNIST_LABELS
from mnist_edge.train.model import ConvNet, ConvNetConfig

FORMAT = "mnist-edge-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(MnistEdgeError, ValueError):
    """A checkpoint is missing, unreadable, or not an mnist-edge checkpoint."""


def library_versions() -> dict[str, str]:
    """Versions recorded in checkpoints and ONNX metadata."""
    import torchvision

    return {
        "mnist_edge": MNIST_EDGE_VERSION,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class DatasetInfo:
    """Which dataset a checkpoint was trained on, and its class names (index = output column)."""

    name: str
    classes: tuple[str, ...]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DatasetInfo:
        """From a checkpoint's ``dataset`` entry; checkpoints without one are MNIST's.

        Raises:
            CheckpointError: the entry is not a mapping of a name and class names.
        """
        try:
            name = str(raw.get("name", "mnist"))
            classes = tuple(str(c) for c in raw.get("classes", MNIST_LABELS))
        except (AttributeError, TypeError) as exc:
            raise CheckpointError(f"checkpoint dataset entry {raw!r} is malformed") from exc
        return cls(name, classes)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: what the train stage hands to the export stage.

    Attributes:
        model: the rebuilt net, in eval mode.
        path: the file it was loaded from.
        sha256: of the file's bytes (recorded in every exported model).
        recipe: the training config it was made with (JSON-able).
        dataset: the dataset's name and class names.
        metrics: test/val loss and accuracy, per-epoch history.
        versions: library versions it was trained with.
        device: where it was trained.
        created: ISO-8601 UTC time it was saved.
        complete: ``False`` for a resume point written mid-run.
        epoch: epochs completed.
        raw: the loaded dict itself (resume state included).
    """

    model: ConvNet
    path: Path
    sha256: str
    recipe: dict[str, Any]
    dataset: DatasetInfo
    metrics: dict[str, Any]
    versions: dict[str, str]
    device: str
    created: str
    complete: bool
    epoch: int
    raw: dict[str, Any] = field(repr=False)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes


def _reason(exc: BaseException) -> str:
    """One readable line out of torch's multi-paragraph load errors."""
    for ln in str(exc).splitlines():
        if ln.strip().startswith("WeightsUnpickler error:"):
            return ln.strip()
    reason = first_line(exc)
    return "not a valid torch file" if reason.startswith("Weights only load failed") else reason


def build_payload(
    model: ConvNet,
    *,
    recipe: dict[str, Any],
    dataset: dict[str, Any],
    metrics: dict[str, Any],
    device: str,
    complete: bool,
    epoch: int,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the checkpoint dict (weights moved to CPU)."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "recipe": dict(recipe),
        "dataset": dict(dataset),
        "metrics": dict(metrics),
        "versions": library_versions(),
        "device": device,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": complete,
        "epoch": epoch,
    }
    if resume is not None:
        payload["resume"] = resume
    return payload


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


_HINT = "train a model to make one"


def _read_raw(path: Path) -> tuple[dict[str, Any], bytes]:
    """Read ``path`` once and load it safely; return the checked dict and the file's bytes."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; {_HINT}")
    try:
        data = path.read_bytes()
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"checkpoint {path} is unreadable ({_reason(exc)}); {_HINT}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an mnist-edge checkpoint; {_HINT}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {raw.get('format_version')!r}, "
            f"this mnist-edge reads {FORMAT_VERSION}; retrain with this version"
        )
    return raw, data


def load_raw(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint's dict safely (``weights_only=True``) without building its model.

    Raises:
        CheckpointError: the file is missing, not a torch file, or not an
            mnist-edge checkpoint of this format version (same messages as
            :func:`load_checkpoint`).
    """
    return _read_raw(Path(path))[0]


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint safely (``weights_only=True``) and rebuild its model.

    The file is read once: the same bytes are hashed and loaded.

    Raises:
        CheckpointError: the file is missing, not a torch file, not ours, or its
            weights do not fit its own model config. The message names the file
            and says how to make a good one.
    """
    path = Path(path)
    raw, data = _read_raw(path)
    try:
        config = ConvNetConfig.from_dict(raw["model_config"])
        model = ConvNet(config)
        model.load_state_dict(raw["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not match its model config ({first_line(exc)}); {_HINT}"
        ) from exc
    model.eval()
    return Checkpoint(
        model=model,
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        recipe=raw.get("recipe", {}),
        dataset=DatasetInfo.from_dict(raw.get("dataset", {})),
        metrics=raw.get("metrics", {}),
        versions=raw.get("versions", {}),
        device=raw.get("device", "cpu"),
        created=raw.get("created", ""),
        complete=bool(raw.get("complete", False)),
        epoch=int(raw.get("epoch", 0)),
        raw=raw,
    )
