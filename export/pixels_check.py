"""Validation of the pixels-in models against ``mnist-infer``'s Python path.

The Python path is what ``mnist-infer`` does with a picture:
:func:`mnist_edge.runtime.images.preprocess` (inversion, crop, fit, centre),
``/ 255``, then the core model (``mnist.onnx`` or ``mnist.int8.onnx``) in ONNX
Runtime. The pixels-in model must give the same labels on:

- the test digits written as pictures of several sizes, in both polarities
  (``test-28``, ``test-56``, ``test-100x80``, ``test-300``, and ``-inverted``);
- the photo-like variants ``make samples`` writes (encoded and decoded as files);
- digits drawn off-centre on large canvases, in both polarities.

:func:`check_pixels` collects every failure (graph, interface, edge cases,
agreement, accuracy) into a :class:`PixelsParityReport`, like
:func:`mnist_edge.export.verify.validate` does for the other files.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from PIL import Image

from mnist_edge.export.parity import ORT_ERRORS, ParityReport, open_session
from mnist_edge.export.pictures import variants
from mnist_edge.export.pixels import OPSET, OUTPUTS, PIXELS_INPUT, PROBABILITIES
from mnist_edge.runtime.errors import first_line
from mnist_edge.runtime.images import ImageOptions, decode_image_bytes, preprocess
from mnist_edge.runtime.metadata import Preprocessing

RESIZED = {"28": (28, 28), "56": (56, 56), "100x80": (100, 80), "300": (300, 300)}  # (w, h)
CANVAS = (240, 180)  # (w, h) of the off-centre canvases
# Pictures at the edges of the input domain. Each must run and give a distribution
# whose argmax is `label`; those that need no resizing (so the graph's digit equals
# preprocess's exactly) must also give the Python path's label.
EDGE_CASES = {
    "1x1": (np.full((1, 1), 200, np.uint8), True),
    "1x50": (np.tile(np.array([0, 0, 255, 255, 0], np.uint8), 10)[None, :], False),
    "50x1": (np.tile(np.array([0, 0, 255, 255, 0], np.uint8), 10)[:, None], False),
    "blank 40x30": (np.zeros((40, 30), np.uint8), True),
    "white 500x300": (np.full((500, 300), 255, np.uint8), True),
}


@dataclass(frozen=True)
class PixelsTolerance:
    """How close a pixels-in model must stay to the Python path.

    Attributes:
        min_agreement: smallest fraction of pictures whose label equals the Python path's.
        max_accuracy_gap: largest |accuracy - Python path's accuracy| (0.002 = 0.2 points).
    """

    min_agreement: float = 0.995
    max_accuracy_gap: float = 0.002


@dataclass(frozen=True)
class Pictures:
    """Validation pictures: uint8 (H, W) each, their labels, and the variant each belongs to."""

    pixels: list[np.ndarray]
    labels: np.ndarray  # (N,) int64
    variants: list[str]

    def __len__(self) -> int:
        return len(self.pixels)


@dataclass
class PixelsParityReport(ParityReport):
    """A :class:`ParityReport` against the Python path, with agreement and accuracy per variant."""

    by_variant: dict[str, dict[str, float]] = field(default_factory=dict)


def validation_pictures(digits: np.ndarray, labels: np.ndarray, per_variant: int) -> Pictures:
    """The validation pictures made from the first ``per_variant`` MNIST digits.

    Args:
        digits: uint8 (N, 28, 28) test digits, white on black.
        labels: (N,) their classes.
        per_variant: digits per variant (all of them when fewer).
    """
    n = min(per_variant, len(digits))
    pixels: list[np.ndarray] = []
    names: list[str] = []
    out_labels: list[int] = []
    for name, picture, label in _variants(digits[:n], labels[:n]):
        pixels.append(picture)
        names.append(name)
        out_labels.append(int(label))
    return Pictures(pixels, np.asarray(out_labels, dtype=np.int64), names)


def _variants(digits: np.ndarray, labels: np.ndarray) -> Iterator[tuple[str, np.ndarray, int]]:
    rng = np.random.default_rng(0)
    for digit, label in zip(digits, labels, strict=True):
        img = Image.fromarray(digit, mode="L")
        for size_name, size in RESIZED.items():
            big = (
                np.asarray(img.resize(size, Image.Resampling.BICUBIC))
                if size != (28, 28)
                else digit
            )
            yield f"test-{size_name}", big, label
            yield f"test-{size_name}-inverted", 255 - big, label
        for name, (picture, fmt) in variants(digit).items():  # what `make samples` writes
            buf = io.BytesIO()
            picture.save(buf, format=fmt)
            yield f"sample-{name}", decode_image_bytes(buf.getvalue()), label
        side = int(rng.integers(40, 100))
        y = int(rng.integers(0, CANVAS[1] - side + 1))
        x = int(rng.integers(0, CANVAS[0] - side + 1))
        canvas = np.zeros((CANVAS[1], CANVAS[0]), np.uint8)
        canvas[y : y + side, x : x + side] = np.asarray(
            img.resize((side, side), Image.Resampling.BICUBIC)
        )
        yield "off-centre", canvas, label
        yield "off-centre-inverted", 255 - canvas, label


def open_picture_session(model: bytes | Path) -> Any:
    """An ONNX Runtime CPU session for one picture at a time: one intra-op thread.

    A picture's operators are small; waking a thread pool for each costs more
    than it saves.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def python_path(core: bytes, pictures: Sequence[np.ndarray], pre: Preprocessing) -> np.ndarray:
    """``mnist-infer`` on each picture: ``preprocess``, ``/ 255``, the core model -> float32 (N, classes)."""
    digits = np.stack([preprocess(p, ImageOptions(pre)) for p in pictures])  # (N, 28, 28) uint8
    return run_core(core, digits, pre)


def run_core(
    core: bytes, digits: np.ndarray, pre: Preprocessing, batch_size: int = 500
) -> np.ndarray:
    """The core model on uint8 (N, 28, 28) digits, scaled as ``Classifier`` does -> (N, classes)."""
    session = open_session(core)
    x = (digits.astype(np.float32) / np.float32(round(1.0 / pre.scale)))[:, None]  # (N, 1, 28, 28)
    outs = [
        session.run([PROBABILITIES], {"image": x[i : i + batch_size]})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs)


def check_graph(model: onnx.ModelProto) -> list[str]:
    """Static checks of a pixels-in graph: the checker (full), standard ops at opset 18, the interface."""
    failures: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        failures.append(f"onnx.checker: {first_line(exc)}")
    opsets = {o.domain or "": o.version for o in model.opset_import}
    if opsets.get("") != OPSET:
        failures.append(f"standard opset is {opsets.get('')}, expected {OPSET}")
    custom = sorted(
        {f"{n.domain}:{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    )
    if custom:
        failures.append(f"non-standard operators: {', '.join(custom)}")
    schemas = [n.op_type for n in model.graph.node if not onnx.defs.has(n.op_type, "")]
    if schemas:
        failures.append(f"unknown operators: {', '.join(sorted(set(schemas)))}")
    graph = model.graph
    inputs = [
        (i.name, i.type.tensor_type.elem_type, len(i.type.tensor_type.shape.dim))
        for i in graph.input
    ]
    if inputs != [(PIXELS_INPUT, onnx.TensorProto.UINT8, 2)]:
        failures.append(f"inputs are {inputs}, expected [('pixels', uint8, rank 2)]")
    outputs = [o.name for o in graph.output]
    if outputs != list(OUTPUTS):
        failures.append(f"outputs are {outputs}, expected {list(OUTPUTS)}")
    return failures


def check_pixels(
    model: onnx.ModelProto | bytes | Path,
    core: bytes,
    pictures: Pictures,
    pre: Preprocessing,
    tolerance: PixelsTolerance,
    *,
    name: str,
    precision: str,
    reference: np.ndarray | None = None,
) -> PixelsParityReport:
    """Every check of one pixels-in file against the Python path on ``core``.

    Args:
        model: the pixels-in ``ModelProto``, or the bytes/path of an ``.onnx``/``.ort`` file
            (graph checks run on a ``ModelProto`` only).
        core: the serialized core model it wraps (the Python path runs it).
        pictures: from :func:`validation_pictures`.
        pre: the model's preprocessing.
        tolerance: the bounds.
        name, precision: for the report.
        reference: the Python path's probabilities on ``pictures``, if already computed.

    Returns:
        The report; ``failures`` is empty when every check passed.
    """
    import time

    start = time.perf_counter()
    report = PixelsParityReport(name=name, precision=precision, images=len(pictures))
    if isinstance(model, onnx.ModelProto):
        report.failures.extend(check_graph(model))
        payload: Any = model.SerializeToString()
    else:
        payload = model
    try:
        session = open_picture_session(payload)
    except ORT_ERRORS as exc:
        report.failures.append(f"ONNX Runtime cannot load it: {first_line(exc)}")
        return report
    outs = [o.name for o in session.get_outputs()]
    if [i.name for i in session.get_inputs()] != [PIXELS_INPUT] or outs != list(OUTPUTS):
        report.failures.append(f"ONNX Runtime sees outputs {outs}, expected {list(OUTPUTS)}")
        return report
    report.input_shape = [str(d) for d in session.get_inputs()[0].shape]
    report.output_shape = [
        d if isinstance(d, int) else str(d) for d in session.get_outputs()[0].shape
    ]
    if reference is None:
        reference = python_path(core, pictures.pixels, pre)

    # edge cases: each runs and gives a distribution and its argmax (see EDGE_CASES)
    edge_ref = python_path(core, [p for p, _ in EDGE_CASES.values()], pre)
    for (case, (picture, exact)), expected in zip(EDGE_CASES.items(), edge_ref, strict=True):
        try:
            probs, label = session.run(None, {PIXELS_INPUT: picture})
        except ORT_ERRORS as exc:
            report.failures.append(f"{case} picture does not run: {first_line(exc)}")
            continue
        if probs.shape != expected.shape or not np.isfinite(probs).all():
            report.failures.append(
                f"{case} picture gives probabilities {probs.shape}, not finite {expected.shape}"
            )
        elif int(label) != int(probs.argmax()) or (exact and int(label) != int(expected.argmax())):
            report.failures.append(
                f"{case} picture gives label {int(label)}; argmax {int(probs.argmax())}, "
                f"Python path {int(expected.argmax())}"
            )

    try:
        results = [session.run(None, {PIXELS_INPUT: p}) for p in pictures.pixels]
    except ORT_ERRORS as exc:
        report.failures.append(f"evaluation does not run: {first_line(exc)}")
        return report
    probs = np.stack([r[0] for r in results])  # (N, classes)
    labels = np.array([int(r[1]) for r in results], dtype=np.int64)
    report.seconds = time.perf_counter() - start
    if not np.array_equal(labels, probs.argmax(axis=1)):
        report.failures.append("output 'label' differs from the argmax of 'probabilities'")
    diff = np.abs(probs.astype(np.float64) - reference)
    report.max_abs_diff = float(diff.max()) if diff.size else 0.0
    report.mean_abs_diff = float(diff.mean()) if diff.size else 0.0
    agree = labels == reference.argmax(axis=1)
    report.agreement = float(agree.mean())
    report.reference_accuracy = float(np.mean(reference.argmax(axis=1) == pictures.labels))
    report.accuracy = float(np.mean(labels == pictures.labels))
    variants_arr = np.asarray(pictures.variants)
    for variant in dict.fromkeys(pictures.variants):
        rows = variants_arr == variant
        report.by_variant[variant] = {
            "pictures": int(rows.sum()),
            "agreement": float(agree[rows].mean()),
            "accuracy": float(np.mean(labels[rows] == pictures.labels[rows])),
            "python_accuracy": float(np.mean(reference[rows].argmax(1) == pictures.labels[rows])),
        }
    if not np.isfinite(probs).all():
        report.failures.append("probabilities contain NaN or infinity")
    if not report.agreement >= tolerance.min_agreement:
        worst = sorted(report.by_variant.items(), key=lambda kv: kv[1]["agreement"])[:3]
        report.failures.append(
            f"label agrees with mnist-infer's Python path on {report.agreement:.2%} of pictures "
            f"(required: {tolerance.min_agreement:.2%}); lowest: "
            + ", ".join(f"{k} {v['agreement']:.2%}" for k, v in worst)
        )
    gap = abs(report.accuracy - report.reference_accuracy)
    if not gap <= tolerance.max_accuracy_gap + 1e-12:
        report.failures.append(
            f"accuracy {report.accuracy:.4f} differs from the Python path's "
            f"{report.reference_accuracy:.4f} by {gap * 100:.2f} points "
            f"(allowed: {tolerance.max_accuracy_gap * 100:.2f})"
        )
    return report
