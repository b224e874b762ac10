"""Resume points: what ``last.pt`` holds beyond the weights, and how a run picks it up.

After every epoch the loop writes ``out_dir/last.pt`` (``complete=False``) with
``resume = {optimizer, torch_rng, cuda_rng, shuffle_rng, history}``: all
tensors, numbers, lists and dicts, so ``torch.load(weights_only=True)`` reads
it. Restoring all of them makes a resumed CPU run bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mnist_edge.runtime.errors import first_line
from mnist_edge.runtime.layout import RESUME, Artifacts
from mnist_edge.train.checkpoint import CheckpointError, load_raw
from mnist_edge.train.config import RECIPE_KEYS, TrainConfig, TrainError
from mnist_edge.train.model import ConvNet

RESUME_FILE = RESUME
# Recipe keys that must match the resume point: all but epochs (which may grow)
# and the layout/compile speed flags (which do not change the numbers).
_RESUME_KEYS = tuple(k for k in RECIPE_KEYS if k not in ("epochs", "channels_last", "compile"))


def load_resume_point(config: TrainConfig) -> dict[str, Any]:
    """Read ``out_dir/last.pt`` and check it can continue ``config``.

    Returns:
        The raw checkpoint dict (``state_dict``, ``resume``, ``epoch`` ...).
    Raises:
        TrainError: no resume point, or its recipe differs from ``config``.
        CheckpointError: the file is corrupt or not a resume point.
    """
    path = Artifacts(Path(config.out_dir)).resume
    if not path.is_file():
        raise TrainError(
            f"nothing to resume: {path} does not exist; train without resume (or set out_dir to the run's folder)",
            "resume",
        )
    raw = load_raw(path)
    state = raw.get("resume")
    needed = ("optimizer", "torch_rng", "shuffle_rng", "history")
    if raw.get("complete") or not isinstance(state, dict) or any(k not in state for k in needed):
        raise CheckpointError(f"checkpoint {path} is not a resume point; train without resume")
    saved = raw.get("recipe", {})
    now = config.recipe()
    diffs = [
        f"{k}={now[k]!r} (saved {saved.get(k)!r})" for k in _RESUME_KEYS if saved.get(k) != now[k]
    ]
    if diffs:
        raise TrainError(
            f"resuming with a different recipe: {', '.join(diffs)}; use the saved values or do not resume",
            "resume",
        )
    if raw["epoch"] > config.epochs:
        raise TrainError(
            f"resume point {path} has {raw['epoch']} epochs, more than epochs={config.epochs}; raise epochs",
            "epochs",
        )
    return raw


def resume_state(
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """The ``resume`` entry of a resume point: optimizer, RNG states and history so far."""
    return {
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "shuffle_rng": generator.get_state(),
        "history": list(history),
    }


def restore(
    raw: dict[str, Any],
    model: ConvNet,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Put the weights, optimizer, RNG states and shuffle generator back; return the history.

    Raises:
        CheckpointError: the resume state does not fit this model or optimizer.
    """
    state = raw["resume"]
    try:
        model.load_state_dict(raw["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        generator.set_state(state["shuffle_rng"])
        return [dict(h) for h in state["history"]]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"resume point is damaged ({first_line(exc)}); delete {RESUME_FILE} and train without resume"
        ) from exc
