"""Write digit pictures, so ``mnist-infer images/`` works at once: ``mnist-samples images/``.

Writes the first ``--count`` MNIST test digits as PNG (``0000-label7.png``),
plus photo-like variants of a few: inverted (black on white), coloured RGB,
larger with a margin, JPEG, and an RGBA drawing on a transparent background.
``--all`` writes the whole test set (what the end-to-end benchmark reads).
Reads the IDX files in ``data/MNIST/raw`` with numpy, so it needs no torch.
Where there is no test set (outside a clone, or before it is prepared) it
draws digits of its own (:func:`drawn_digits`), as ``--drawn`` always does;
their labels start as the test set's do (7, 2, 1, 0, 4), so the first file is
``0000-label7.png`` either way.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw

from mnist_edge.export.pictures import variants
from mnist_edge.runtime.atomic import atomic_path
from mnist_edge.runtime.command import command
from mnist_edge.runtime.errors import MnistEdgeError
from mnist_edge.runtime.idx import IdxFormatError, read_idx
from mnist_edge.runtime.images import ImageOptions, preprocess

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


def _arc(
    cx: float, cy: float, rx: float, ry: float, start: float, stop: float, n: int = 24
) -> list[tuple[float, float]]:
    """Points of an elliptic arc in a unit box (y down; degrees, 0 = right, 90 = down)."""
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in np.linspace(start, stop, n)
    ]


# Each digit as pen strokes in a unit box, written the way people write them
# (a plain 1, open loops on 6 and 9) rather than as a typeface draws them.
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_arc(0.5, 0.5, 0.3, 0.45, 0, 360, 40)],
    1: [[(0.5, 0.05), (0.5, 0.95)]],
    2: [[*_arc(0.5, 0.3, 0.28, 0.25, 200, 390), (0.2, 0.95), (0.82, 0.95)]],
    3: [_arc(0.5, 0.28, 0.25, 0.23, 200, 450) + _arc(0.5, 0.72, 0.28, 0.23, 270, 520)],
    4: [[(0.65, 0.95), (0.65, 0.05), (0.15, 0.65), (0.85, 0.65)]],
    5: [[(0.78, 0.05), (0.32, 0.05), (0.28, 0.45), *_arc(0.5, 0.68, 0.28, 0.27, 225, 520)]],
    6: [[(0.72, 0.05), (0.5, 0.2), (0.34, 0.42), *_arc(0.52, 0.72, 0.22, 0.23, 190, 550)]],
    7: [[(0.15, 0.08), (0.85, 0.08), (0.42, 0.95)]],
    8: [_arc(0.5, 0.27, 0.2, 0.21, 90, 450), _arc(0.5, 0.71, 0.25, 0.24, 270, 630)],
    9: [[*_arc(0.5, 0.3, 0.23, 0.23, 0, 360), (0.73, 0.3), (0.66, 0.95)]],
}


def _draw(label: int, rng: np.random.Generator, side: int = 112) -> np.ndarray:
    """One digit drawn with a random slant, width and pen, white on black -> uint8 (side, side)."""
    angle = math.radians(rng.uniform(-12, 12))
    shear = rng.uniform(-0.2, 0.2)
    squeeze = rng.uniform(0.75, 1.1)
    width = int(rng.integers(7, 12))
    img = Image.new("L", (side, side), 0)
    pen = ImageDraw.Draw(img)
    for stroke in STROKES[label]:
        points = []
        for x, y in stroke:
            x = (x - 0.5) * squeeze + rng.normal(0, 0.01)
            y = y - 0.5 + rng.normal(0, 0.01)
            x += shear * y
            x, y = (
                x * math.cos(angle) - y * math.sin(angle),
                x * math.sin(angle) + y * math.cos(angle),
            )
            points.append((side / 2 + x * side * 0.72, side / 2 + y * side * 0.72))
        pen.line(points, fill=255, width=width, joint="curve")
        for px, py in (points[0], points[-1]):  # round pen ends
            r = width / 2
            pen.ellipse((px - r, py - r, px + r, py + r), fill=255)
    return np.asarray(img)


# The order drawn digits come in: each digit as it first appears in the MNIST test
# set, so the first files are named as the test set's are (0000-label7.png, ...).
DRAWN_ORDER = (7, 2, 1, 0, 4, 9, 5, 6, 3, 8)


def drawn_digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` digits drawn here, made MNIST-style as ``mnist-infer`` does.

    For a machine without the MNIST test set: each is a pen drawing with a random
    slant, width and wobble, cropped, fitted and centred like MNIST's own. The
    labels cycle through :data:`DRAWN_ORDER` (7, 2, 1, 0, 4, 9, ...).

    Returns:
        images uint8 (count, 28, 28) white on black, and labels uint8 (count,).
    """
    rng = np.random.default_rng(seed)
    labels = np.resize(np.array(DRAWN_ORDER, np.uint8), count)
    options = ImageOptions()
    images = np.zeros((count, 28, 28), np.uint8)
    for i, label in enumerate(labels):
        images[i] = preprocess(_draw(int(label), rng), options)
    return images, labels


def _save(img: Image.Image, path: Path, fmt: str) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt)


def write_samples(
    out_dir: Path, images: np.ndarray, labels: np.ndarray, count: int = 20, variant_count: int = 3
) -> list[Path]:
    """Write ``count`` digits as PNG and variants of the first ``variant_count``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    width = max(4, len(str(len(images) - 1)))
    for i in range(min(count, len(images))):
        path = out_dir / f"{i:0{width}d}-label{int(labels[i])}.png"
        _save(Image.fromarray(images[i], mode="L"), path, "PNG")
        written.append(path)
    for i in range(min(variant_count, len(images))):
        for name, (img, fmt) in variants(images[i]).items():
            path = out_dir / f"{i:0{width}d}-label{int(labels[i])}-{name}"
            _save(img, path, fmt)
            written.append(path)
    return written


def _make_folder(out_dir: Path) -> None:
    """Create ``out_dir`` and prove a file can be written there, before any work.

    Raises:
        click.BadParameter: it cannot be created or written (a file in the way,
            no permission, a file system like /proc), in one line (exit 2).
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, (FileExistsError, NotADirectoryError)):  # a file where a folder goes
            reason = "a file is in the way"
        raise click.BadParameter(
            f"cannot write pictures into {out_dir} ({reason}); choose a folder that can be written",
            param_hint="OUT_DIR",
        ) from None


@command("mnist-samples")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("images"))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    show_default=True,
    help="Where the MNIST test set is (data/MNIST/raw); without it, digits are drawn.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Digits to write (with --all: ignored).",
)
@click.option("--all", "everything", is_flag=True, help="Write the whole test set (no variants).")
@click.option("--drawn", is_flag=True, help="Draw the digits even when the test set is there.")
def main(out_dir: Path, data_dir: Path, count: int, everything: bool, drawn: bool) -> None:
    """Write digit pictures (and photo-like variants of a few) into OUT_DIR for mnist-infer.

    The MNIST test set's digits when --data-dir has it, else digits drawn here.
    """
    source = "drawn digits"
    if drawn and everything:
        raise click.BadParameter(
            "--all writes the MNIST test set; drop --drawn", param_hint="--all"
        )
    _make_folder(out_dir)
    if drawn:
        images, labels = drawn_digits(count)
    else:
        try:
            images, labels = load_test_set(data_dir)
            source = "MNIST test digits"
        except SamplesError as exc:
            if everything:
                raise click.BadParameter(
                    f"{exc} (mnist-train --prepare-only --data-dir {data_dir} does that)",
                    param_hint="--all",
                ) from None
            images, labels = drawn_digits(count)
            source = f"drawn digits ({data_dir} has no MNIST test set)"
    written = write_samples(
        out_dir, images, labels, len(images) if everything else count, 0 if everything else 3
    )
    click.echo(
        f"wrote {len(written)} pictures of {source} to {out_dir}/; try: mnist-infer {out_dir}/",
        err=True,
    )


if __name__ == "__main__":
    sys.exit(main())
