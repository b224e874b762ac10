"""One epoch of fitting and one evaluation pass, on tensors already on the device.

Batches are index slices of the whole split (no per-item DataLoader); the
running loss and accuracy are summed on the device, so a CUDA run does not wait
on the host at each step. The only syncs are the progress bar's redraws (a
few a second) and one at the end of each pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mnist_edge.train.model import ConvNet
from mnist_edge.train.progress import ProgressBar


@dataclass(frozen=True)
class EpochStats:
    """One line of the training history (validation values are ``None`` without a split)."""

    epoch: int
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float

    def line(self, epochs: int) -> str:
        """The Keras-like summary line for this epoch."""
        text = f"Epoch {self.epoch}/{epochs} - {self.seconds:.1f}s - loss: {self.loss:.4f} - accuracy: {self.accuracy:.4f}"
        if self.val_loss is not None:
            text += f" - val_loss: {self.val_loss:.4f} - val_accuracy: {self.val_accuracy:.4f}"
        return text


@dataclass(frozen=True)
class Evaluation:
    """Mean cross-entropy, accuracy and the predicted class of each image of a split."""

    loss: float
    accuracy: float
    predictions: torch.Tensor  # (N,) int64, on the device


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
    *,
    amp: bool = False,
) -> Evaluation:
    """Mean cross-entropy, accuracy and predictions of ``model`` (put in eval mode) on a split.

    Args:
        images: (N, C, H, W) on the model's device. labels: (N,) int64.
    """
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    preds = []
    for start in range(0, len(images), batch_size):
        with _autocast(images.device, amp):
            logits = model(images[start : start + batch_size])  # (B, classes)
        loss_sum += F.cross_entropy(
            logits.float(), labels[start : start + batch_size], reduction="sum"
        )
        preds.append(logits.argmax(1))
    predictions = torch.cat(preds)
    n = max(len(labels), 1)
    correct = (predictions == labels).sum()
    return Evaluation(
        loss=loss_sum.item() / n, accuracy=correct.item() / n, predictions=predictions
    )


def _autocast(device: torch.device, amp: bool):
    """bfloat16 autocast (convs and the dense layer in bf16, weights and loss in fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


def train_epoch(
    model: ConvNet,
    step_fn: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    amp: bool = False,
    bar: ProgressBar | None = None,
) -> tuple[float, float]:
    """One shuffled pass; returns the running-average (loss, accuracy) as Keras reports them.

    ``step_fn`` is ``model`` or its compiled form. The permutation comes from
    ``generator`` (CPU), so a resumed run draws the same batches.
    """
    model.train()
    n = len(images)
    order = torch.randperm(n, generator=generator).to(images.device, non_blocking=True)  # (N,)
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    steps = math.ceil(n / batch_size)
    for step in range(steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        x, y = images.index_select(0, idx), labels.index_select(0, idx)  # (B, C, H, W), (B,)
        with _autocast(images.device, amp):
            logits = step_fn(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        if bar is not None and bar.due(step + 1):
            seen = min((step + 1) * batch_size, n)

            def values(
                s: int = seen, ls: torch.Tensor = loss_sum, c: torch.Tensor = correct
            ) -> dict[str, float]:
                return {"loss": ls.item() / s, "accuracy": c.item() / s}

            bar.update(step + 1, values)
    if bar is not None:
        bar.close()
    return loss_sum.item() / n, correct.item() / n
