"""Validation of exported ONNX files: graph checks, then parity with PyTorch.

Every check appends to a list of failures instead of stopping, so one run
tells the user everything that is wrong (optimum-onnx ``_run_validation``
style). :func:`validate` returns a :class:`ParityReport`; the caller decides
whether its failures raise (:class:`ValidationError`) or are only reported
(``--allow-mismatch``).

Checks on an ONNX graph (:func:`check_graph`): ``onnx.checker``, strict shape
inference with type checks and data propagation (what the checker's
``full_check`` adds, run once), the interface (input ``image`` and output
``probabilities``: names, element types, shapes, the named ``batch`` axis), no
training-only nodes (Dropout, the training domain) and no external data.

Checks by running it (:func:`mnist_edge.export.parity.compare`): ONNX Runtime
loads it, runs batch sizes 1, 7 and 1000 (or the fixed batch), and runs every
evaluation image; its probabilities are compared with PyTorch's: max
|difference|, argmax agreement and accuracy, each against a :class:`Tolerance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from mnist_edge.export.parity import ParityReport, Reference, Tolerance, compare
from mnist_edge.export.spec import INPUT_NAME, OUTPUT_NAME, GraphSpec
from mnist_edge.runtime.errors import MnistEdgeError, first_line

# Node types that only make sense while training; none may survive export.
TRAINING_OPS = frozenset({"Dropout"})
TRAINING_DOMAINS = frozenset({"ai.onnx.preview.training"})


class ValidationError(MnistEdgeError, ValueError):
    """One or more exported models failed validation; ``failures`` lists every problem."""

    def __init__(self, failures: Sequence[str]) -> None:
        self.failures = list(failures)
        self.summary = f"validation failed ({len(self.failures)} problem(s)); nothing was written"
        lines = "\n".join(f"  - {f}" for f in self.failures)
        super().__init__(f"{self.summary}:\n{lines}")


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]


def check_graph(model: onnx.ModelProto, spec: GraphSpec) -> list[str]:
    """Static checks of an ONNX graph; returns every failure found (empty: all passed)."""
    failures: list[str] = []
    # The checker's full_check would run the same strict shape inference as the
    # next step (only without data_prop); run it once, there.
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        failures.append(f"onnx.checker: {first_line(exc)}")
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        failures.append(f"shape inference: {first_line(exc)}")
    graph = model.graph
    for kind, values, name, elem, shape in (
        ("input", graph.input, INPUT_NAME, spec.input_elem_type, spec.input_shape),
        ("output", graph.output, OUTPUT_NAME, onnx.TensorProto.FLOAT, spec.output_shape),
    ):
        names = [v.name for v in values]
        if names != [name]:
            failures.append(f"graph {kind}s are {names}, expected [{name!r}]")
            continue
        value = values[0]
        got_elem = value.type.tensor_type.elem_type
        if got_elem != elem:
            failures.append(
                f"{kind} {name!r} has type {onnx.TensorProto.DataType.Name(got_elem)}, "
                f"expected {onnx.TensorProto.DataType.Name(elem)}"
            )
        if tuple(_dims(value)) != shape:
            failures.append(f"{kind} {name!r} has shape {_dims(value)}, expected {list(shape)}")
    training = sorted(
        {n.op_type for n in graph.node if n.op_type in TRAINING_OPS or n.domain in TRAINING_DOMAINS}
    )
    if training:
        failures.append(f"training-only nodes remain: {', '.join(training)}")
    external = [t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        failures.append(f"weights stored outside the file: {', '.join(external)}")
    return failures


def validate(
    model: onnx.ModelProto | Path,
    reference: Reference,
    spec: GraphSpec,
    tolerance: Tolerance,
    *,
    name: str,
    precision: str,
    batch_size: int = 500,
    session: Any = None,
) -> ParityReport:
    """All checks on one file: :func:`check_graph` (ONNX only) then :func:`compare`.

    Args:
        model: an ONNX ``ModelProto``, or the path of an ``.onnx`` or ``.ort`` file.
        reference: evaluation images, labels and PyTorch's probabilities.
        spec: the interface the file must have.
        tolerance: how close to PyTorch it must stay.
        name: label for reports (e.g. ``"mnist.int8.onnx"``).
        precision: ``"fp32"`` or ``"int8"``.
        batch_size: evaluation batch size (dynamic-batch files).
        session: an ONNX Runtime session already open on ``model``
            (:func:`mnist_edge.export.parity.open_session`), reused instead of opening another.

    Returns:
        The report; ``report.failures`` lists every failed check (empty if all passed).
    """
    report = ParityReport(name=name, precision=precision, images=len(reference.labels))
    if isinstance(model, onnx.ModelProto):
        report.failures.extend(check_graph(model, spec))
        payload: bytes | Path = model.SerializeToString()
    elif model.suffix == ".ort":
        payload = model
    else:
        try:
            proto = onnx.load(model)
        except (OSError, DecodeError, onnx.checker.ValidationError, ValueError) as exc:
            report.failures.append(f"cannot read {model}: {first_line(exc)}")
            return report
        report.failures.extend(check_graph(proto, spec))
        payload = model
    compare(payload, reference, spec, tolerance, report, batch_size, session)
    return report


def raise_for_failures(reports: Sequence[ParityReport]) -> None:
    """Raise one :class:`ValidationError` naming every failure of every report, if any."""
    failures = [f"{r.name}: {f}" for r in reports for f in r.failures]
    if failures:
        raise ValidationError(failures)
