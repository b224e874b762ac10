"""Parity with PyTorch: run an exported file in ONNX Runtime and compare its probabilities.

:func:`compare` loads a file (ONNX or ORT format) into an ONNX Runtime CPU
session, runs batch sizes 1, 7 and 1000 (or the fixed batch), then every
evaluation image of a :class:`Reference` (PyTorch's probabilities); it fills a
:class:`ParityReport` with max |difference|, argmax agreement and accuracy,
and appends a failure for each one outside its :class:`Tolerance`.
:func:`open_session` and :func:`run_session` are the session helpers it uses.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from mnist_edge.export.spec import INPUT_NAME, OUTPUT_NAME, GraphSpec
from mnist_edge.runtime.arrays import batches
from mnist_edge.runtime.errors import first_line

# What ONNX Runtime raises for a file it cannot load or run (its own types are plain Exceptions).
ORT_ERRORS: tuple[type[BaseException], ...] = (
    _ort_state.Fail,
    _ort_state.InvalidArgument,
    _ort_state.InvalidGraph,
    _ort_state.InvalidProtobuf,
    _ort_state.NoSuchFile,
    _ort_state.NotImplemented,
    _ort_state.RuntimeException,
    RuntimeError,
    ValueError,
)


@dataclass(frozen=True)
class Tolerance:
    """How close a model must stay to PyTorch.

    Attributes:
        max_abs_diff: largest allowed |ONNX - PyTorch| over all probabilities;
            ``None`` skips the check (int8, where accuracy is what counts).
        max_accuracy_drop: largest allowed drop of accuracy below PyTorch's, as a
            fraction (0.002 = 0.2 points); 0 means at least PyTorch's accuracy.
        min_agreement: smallest allowed fraction of images whose argmax equals PyTorch's.
    """

    max_abs_diff: float | None = 1e-5
    max_accuracy_drop: float = 0.0
    min_agreement: float = 0.0


@dataclass(frozen=True)
class Reference:
    """The evaluation images, their labels and PyTorch's probabilities for them."""

    images: np.ndarray  # (N, 1, 28, 28) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    probabilities: np.ndarray  # (N, classes) float32

    @property
    def accuracy(self) -> float:
        return accuracy(self.probabilities, self.labels)

    @classmethod
    def from_model(cls, model: Any, images: Any, labels: Any, batch_size: int = 1000) -> Reference:
        """Run a torch module that returns probabilities over ``images`` (a tensor, N x 1 x 28 x 28)."""
        import torch

        model.eval()
        outs = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                outs.append(model(images[start : start + batch_size]).float())
        probs = torch.cat(outs).numpy() if outs else np.zeros((0, 10), np.float32)
        return cls(
            images=images.numpy().astype(np.float32, copy=False),
            labels=labels.numpy().astype(np.int64, copy=False),
            probabilities=probs,
        )


@dataclass
class ParityReport:
    """What validating one file found. ``failures`` is empty when it passed."""

    name: str
    precision: str
    images: int
    input_shape: list[int | str] = field(default_factory=list)
    output_shape: list[int | str] = field(default_factory=list)
    max_abs_diff: float = float("nan")
    mean_abs_diff: float = float("nan")
    agreement: float = float("nan")
    reference_accuracy: float = float("nan")
    accuracy: float = float("nan")
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label (NaN for no rows)."""
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def open_session(model: bytes | Path) -> Any:
    """An ONNX Runtime CPU session for ONNX/ORT bytes or a path, logging errors only."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's info/warning lines are not ours to print
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def run_session(
    session: Any, spec: GraphSpec, images: np.ndarray, batch_size: int = 500
) -> np.ndarray:
    """Probabilities (N, classes) for float ``images`` (N, 1, 28, 28), fed in batches."""
    size = spec.fixed_batch or batch_size
    feed = spec.feed(images)
    outs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0][:rows]
        for batch, rows in batches(feed, size, pad_last=spec.fixed_batch is not None)
    ]
    return np.concatenate(outs) if outs else np.zeros((0, spec.num_classes), np.float32)


def compare(
    model: bytes | Path,
    reference: Reference,
    spec: GraphSpec,
    tolerance: Tolerance,
    report: ParityReport,
    batch_size: int = 500,
    session: Any = None,
) -> None:
    """Run ``model`` (ONNX or ORT format) in ONNX Runtime and compare it with ``reference``.

    Fills the numbers of ``report`` and appends to ``report.failures``. ``session``:
    an ONNX Runtime session already open on ``model`` (from :func:`open_session`), used
    instead of opening another.
    """
    start = time.perf_counter()
    if session is None:
        try:
            session = open_session(model)
        except ORT_ERRORS as exc:
            report.failures.append(f"ONNX Runtime cannot load it: {first_line(exc)}")
            return
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        report.failures.append(
            f"ONNX Runtime sees inputs {[i.name for i in inputs]} and outputs "
            f"{[o.name for o in outputs]}, expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]"
        )
        return
    report.input_shape = [d if isinstance(d, int) else str(d) for d in inputs[0].shape]
    report.output_shape = [d if isinstance(d, int) else str(d) for d in outputs[0].shape]
    feed = spec.feed(reference.images[: max(spec.batch_sizes)])
    for size in spec.batch_sizes:
        batch = np.resize(feed, (size, *feed.shape[1:]))  # repeats images if there are too few
        try:
            out = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        except ORT_ERRORS as exc:
            report.failures.append(f"batch size {size} does not run: {first_line(exc)}")
            continue
        if out.shape != (size, spec.num_classes):
            report.failures.append(
                f"batch size {size} gives shape {list(out.shape)}, expected [{size}, {spec.num_classes}]"
            )
    try:
        probs = run_session(session, spec, reference.images, batch_size)
    except ORT_ERRORS as exc:
        report.failures.append(f"evaluation does not run: {first_line(exc)}")
        return
    report.seconds = time.perf_counter() - start
    if probs.shape != reference.probabilities.shape or probs.dtype != np.float32:
        report.failures.append(
            f"probabilities have shape {list(probs.shape)} ({probs.dtype}), "
            f"expected {list(reference.probabilities.shape)} (float32)"
        )
        return
    diff = np.abs(probs.astype(np.float64) - reference.probabilities)
    report.max_abs_diff = float(diff.max()) if diff.size else 0.0
    report.mean_abs_diff = float(diff.mean()) if diff.size else 0.0
    report.agreement = float(np.mean(probs.argmax(1) == reference.probabilities.argmax(1)))
    report.reference_accuracy = reference.accuracy
    report.accuracy = accuracy(probs, reference.labels)
    _apply_tolerance(report, tolerance, finite=bool(np.isfinite(probs).all()))


def _apply_tolerance(report: ParityReport, tol: Tolerance, finite: bool) -> None:
    if not finite:
        report.failures.append("probabilities contain NaN or infinity")
    if tol.max_abs_diff is not None and not report.max_abs_diff <= tol.max_abs_diff:
        report.failures.append(
            f"max |probability difference| {report.max_abs_diff:.3g} exceeds tolerance {tol.max_abs_diff:g}"
        )
    drop = report.reference_accuracy - report.accuracy
    if not drop <= tol.max_accuracy_drop + 1e-12:
        report.failures.append(
            f"accuracy {report.accuracy:.4f} is {drop * 100:.2f} points below PyTorch's "
            f"{report.reference_accuracy:.4f} (allowed: {tol.max_accuracy_drop * 100:.2f})"
        )
    if not report.agreement >= tol.min_agreement:
        report.failures.append(
            f"argmax agrees with PyTorch on {report.agreement:.2%} of images (required: {tol.min_agreement:.2%})"
        )
