"""Write MNIST test digits as image files, so ``mnist-infer images/`` works at once.

``python -m mnist_edge.tools.samples images/`` writes the first ``--count``
test digits as PNG (``0000-label7.png``), plus photo-like variants of a few:
inverted (black on white), coloured RGB, larger with a margin, JPEG, and an
RGBA drawing on a transparent background. ``--all`` writes the whole test set
(what the end-to-end benchmark reads). Reads the IDX files in
``data/MNIST/raw`` with numpy, so it needs no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
from PIL import Image

from mnist_edge.export.pictures import variants
from mnist_edge.runtime.atomic import atomic_path
from mnist_edge.runtime.errors import MnistEdgeError
from mnist_edge.runtime.idx import IdxFormatError, read_idx

IMAGES_FILE = "t10k-images-idx3-ubyte"
LABELS_FILE = "t10k-labels-idx1-ubyte"


class SamplesError(MnistEdgeError, RuntimeError):
    """The MNIST test files are missing or unreadable."""


def _find(raw: Path, name: str) -> Path:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise SamplesError(f"{raw / name} not found; prepare the MNIST dataset there first")


def load_test_set(
    data_dir: Path = Path("data"), dataset: str = "MNIST"
) -> tuple[np.ndarray, np.ndarray]:
    """The test images uint8 (10000, 28, 28) and labels uint8 (10000,) from the raw IDX files.

    Raises:
        SamplesError: the files are missing or not valid IDX.
    """
    raw = data_dir / dataset / "raw"
    try:
        images = read_idx(_find(raw, IMAGES_FILE))
        labels = read_idx(_find(raw, LABELS_FILE))
    except IdxFormatError as exc:
        raise SamplesError(f"{exc}; delete {raw} and prepare the dataset again") from None
    if images.ndim != 3 or len(images) != len(labels):
        raise SamplesError(f"{raw}: images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def _save(img: Image.Image, path: Path, **kwargs) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format=kwargs.pop("format"), **kwargs)


def write_samples(
    out_dir: Path, images: np.ndarray, labels: np.ndarray, count: int = 20, variant_count: int = 3
) -> list[Path]:
    """Write ``count`` digits as PNG and variants of the first ``variant_count``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    width = max(4, len(str(len(images) - 1)))
    for i in range(min(count, len(images))):
        path = out_dir / f"{i:0{width}d}-label{int(labels[i])}.png"
        _save(Image.fromarray(images[i], mode="L"), path, format="PNG")
        written.append(path)
    for i in range(min(variant_count, len(images))):
        for name, (img, fmt) in variants(images[i]).items():
            path = out_dir / f"{i:0{width}d}-label{int(labels[i])}-{name}"
            _save(img, path, format=fmt)
            written.append(path)
    return written


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("images"))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    show_default=True,
)
@click.option(
    "--count",
    type=click.IntRange(0, None),
    default=20,
    show_default=True,
    help="Test digits to write.",
)
@click.option("--all", "everything", is_flag=True, help="Write the whole test set (no variants).")
def main(out_dir: Path, data_dir: Path, count: int, everything: bool) -> None:
    """Write MNIST test digits (and photo-like variants) as image files into OUT_DIR."""
    try:
        images, labels = load_test_set(data_dir)
    except SamplesError as exc:
        raise click.ClickException(f"{exc} (`make data`)") from None
    written = write_samples(
        out_dir, images, labels, len(images) if everything else count, 0 if everything else 3
    )
    click.echo(f"wrote {len(written)} images to {out_dir}/; try: mnist-infer {out_dir}/", err=True)


if __name__ == "__main__":
    sys.exit(main())
