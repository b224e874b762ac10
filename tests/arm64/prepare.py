"""Make the case that ``make test-arm64`` checks: inputs, ``.ort`` files and the x86 answers.

Run on the host with the host's venv (``tests/arm64/run.sh`` does), before the arm64 root
is entered. It writes into ``OUT``:

- ``digits.npy``: the first ``--digits`` MNIST test digits, uint8 ``(N, 28, 28)``;
- ``pictures/*.png``: a few of them as pictures of other sizes and either polarity;
- ``models/``: the four bundled ONNX files and ``.ort`` twins of two of them
  (``export/ort_format.py``, the conversion ``mnist-export --ort`` uses);
- ``expected.json``: what this machine's ONNX Runtime answers for each of them, through the
  same front ends the arm64 tests call (``classify`` with all ten probabilities, and the
  core files' raw probabilities for the server).

Not a test module: ``test_arm64.py`` reads what it writes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from mnist_edge.export.ort_format import to_ort_format
from mnist_edge.runtime import classify
from mnist_edge.runtime.atomic import atomic_write_text
from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.idx import read_idx

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "runtime" / "models"
ONNX_FILES = ("mnist.onnx", "mnist.int8.onnx", "mnist.pixels.onnx", "mnist.pixels.int8.onnx")
ORT_FILES = ("mnist.int8.onnx", "mnist.pixels.onnx")  # one core and one pixels-in file
CORE_FILES = ("mnist.onnx", "mnist.int8.onnx")
PICTURES = 6


def pictures(digits: np.ndarray, out: Path) -> list[str]:
    """Write ``PICTURES`` digits as PNGs: enlarged, stretched, inverted, or small on a canvas."""
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, digit in enumerate(digits[:PICTURES]):
        img = Image.fromarray(digit)  # white on black, 28x28
        if i % 3 == 0:
            img = img.resize((56, 56), Image.Resampling.BILINEAR)
        elif i % 3 == 1:
            img = img.resize((100, 80), Image.Resampling.BILINEAR)
        else:
            canvas = Image.new("L", (240, 180))
            canvas.paste(
                img.resize((60, 60), Image.Resampling.BILINEAR), (30 + 20 * i, 40 + 10 * i)
            )
            img = canvas
        if i % 2:
            img = Image.eval(img, lambda v: 255 - v)  # dark on light: auto-inverted
        name = f"picture{i}-{img.width}x{img.height}.png"
        img.save(out / name)
        names.append(f"pictures/{name}")
    return names


def answers(model: Path, inputs: list[str]) -> list[dict[str, object]]:
    """``classify``'s records (all ten probabilities) for ``inputs``, relative to the case folder.

    Raises:
        SystemExit: an input failed here, so there would be nothing to compare with.
    """
    records = classify(inputs, model=model, top_k=10, provider="cpu")
    failed = [r for r in records if "error" in r]
    if failed:
        raise SystemExit(f"{model}: {failed[0]['path']}: {failed[0]['error']}")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="empty or new folder for the case")
    parser.add_argument("--digits", type=int, default=32, help="test digits to use")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "MNIST" / "raw")
    args = parser.parse_args()

    idx = args.data / "t10k-images-idx3-ubyte"
    if not idx.exists():
        raise SystemExit(f"{idx} is missing: run `make data` first")
    out: Path = args.out.resolve()
    (out / "models").mkdir(parents=True, exist_ok=True)
    digits = np.ascontiguousarray(read_idx(idx)[: args.digits])  # (N, 28, 28) uint8
    np.save(out / "digits.npy", digits)
    picture_names = pictures(digits, out / "pictures")

    models = []
    for name in ONNX_FILES:
        shutil.copyfile(BUNDLED / name, out / "models" / name)
        models.append(name)
    for name in ORT_FILES:
        ort_name = name.removesuffix(".onnx") + ".ort"
        to_ort_format(out / "models" / name, out / "models" / ort_name)
        models.append(ort_name)

    # Relative paths, so the records' "path" reads the same inside the root.
    cwd = Path.cwd()
    try:
        os.chdir(out)
        infer = {
            name: answers(Path("models") / name, ["digits.npy", *picture_names]) for name in models
        }
    finally:
        os.chdir(cwd)
    x = digits[:, None].astype(np.float32) / 255.0  # (N, 1, 28, 28), as a client sends them
    served = {
        name: Classifier(out / "models" / name, provider="cpu").run(x).tolist()
        for name in CORE_FILES
    }
    expected = {
        "machine": platform.machine(),
        "onnxruntime": ort.__version__,
        "models": models,
        "pictures": picture_names,
        "infer": infer,
        "served": served,
    }
    atomic_write_text(out / "expected.json", json.dumps(expected, indent=1) + "\n")
    print(
        f"prepared {out}: {len(digits)} digits, {len(picture_names)} pictures, {len(models)} models"
    )


if __name__ == "__main__":
    main()
