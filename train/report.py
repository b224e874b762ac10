"""The training report: ``metrics.json``, ``training.png``, ``confusion.png``, ``report.md``.

Every file is written atomically. ``report.md`` is written fresh by training
(a new model makes every later section stale); later stages add their own
block between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` with
:func:`upsert_section`, which replaces that block or appends it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_edge.runtime.atomic import atomic_path, atomic_write_text
from mnist_edge.runtime.layout import CONFUSION_PLOT, TRAINING_PLOT, Artifacts


@dataclass(frozen=True)
class ReportPaths:
    metrics: Path
    report: Path
    curves: Path
    confusion: Path


def write_outputs(out_dir: Path, metrics: dict[str, Any]) -> ReportPaths:
    """Write all four report files for a finished run into ``out_dir``.

    Args:
        metrics: the run's metrics (keys as written by :func:`mnist_edge.train.loop.train`:
            ``history``, ``test_loss``, ``test_accuracy``, ``confusion_matrix``,
            ``dataset``, ``device``, ``parameters``, ``recipe``, ``seconds_per_epoch``).
    """
    art = Artifacts(Path(out_dir))
    paths = ReportPaths(
        metrics=art.metrics,
        report=art.report,
        curves=art.training_plot,
        confusion=art.confusion_plot,
    )
    atomic_write_text(paths.metrics, json.dumps(metrics, indent=2) + "\n")
    plot_curves(metrics["history"], paths.curves)
    plot_confusion(metrics["confusion_matrix"], metrics["dataset"]["classes"], paths.confusion)
    atomic_write_text(paths.report, training_markdown(metrics))
    return paths


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch, training and validation, side by side."""
    plt = _figure()
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
            ax.plot(epochs, [h[key] for h in history], "o-", label="train")
            val = [h[f"val_{key}"] for h in history]
            if all(v is not None for v in val):
                ax.plot(epochs, val, "s-", label="validation")
            ax.set(title=title, xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path) -> Path:
    """The test confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    plt = _figure()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(7, 6))
    try:
        image = ax.imshow(matrix, cmap="Blues")
        fig.colorbar(image, ax=ax)
        ax.set(
            xticks=range(n),
            yticks=range(n),
            xlabel="predicted",
            ylabel="true",
            title="Test confusion matrix",
        )
        ax.set_xticklabels(classes, rotation=45, ha="right")
        ax.set_yticklabels(classes)
        top = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    color = "white" if count > top / 2 else "black"
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def training_markdown(metrics: dict[str, Any]) -> str:
    """``report.md`` for a finished run: key numbers, both figures, the per-epoch table."""
    data, recipe, history = metrics["dataset"], metrics["recipe"], metrics["history"]
    best = max(
        (h for h in history if h["val_accuracy"] is not None),
        key=lambda h: h["val_accuracy"],
        default=None,
    )
    lines = [
        f"# mnist-edge report: {data['name']}",
        "",
        "<!-- training:begin -->",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| Test accuracy | **{metrics['test_accuracy']:.4f}** |",
        f"| Test loss | {metrics['test_loss']:.4f} |",
        f"| Best validation accuracy | {best['val_accuracy']:.4f} (epoch {best['epoch']}) |"
        if best
        else "| Best validation accuracy | no validation split |",
        f"| Parameters | {metrics['parameters']:,} |",
        f"| Epochs | {len(history)} |",
        f"| Seconds per epoch | {metrics['seconds_per_epoch']:.1f} on {metrics['device']} |",
        f"| Images | {data['train_size']:,} train, {data['val_size']:,} validation, "
        f"{data['test_size']:,} test |",
        f"| Recipe | Adam lr {recipe['lr']:g}, batch {recipe['batch_size']}, "
        f"validation split {recipe['val_split']:g}, seed {recipe['seed']} |",
        "",
        f"![Loss and accuracy per epoch]({TRAINING_PLOT})",
        "",
        f"![Test confusion matrix]({CONFUSION_PLOT})",
        "",
        "| Epoch | Loss | Accuracy | Val loss | Val accuracy | Seconds |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for h in history:
        val = (
            f"{h['val_loss']:.4f} | {h['val_accuracy']:.4f}"
            if h["val_loss"] is not None
            else "– | –"
        )
        lines.append(
            f"| {h['epoch']} | {h['loss']:.4f} | {h['accuracy']:.4f} | {val} | {h['seconds']:.1f} |"
        )
    lines += ["<!-- training:end -->", ""]
    return "\n".join(lines)


def upsert_section(report: Path, name: str, body: str) -> None:
    """Put ``body`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``report``.

    An existing block of that name is replaced; otherwise the block is appended
    (the file is created if missing). The write is atomic.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}\n"
    text = Path(report).read_text(encoding="utf-8") if Path(report).is_file() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
    atomic_write_text(report, text)
