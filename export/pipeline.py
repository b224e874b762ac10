"""The export stage: a checkpoint in, validated ONNX files and reports out.

:func:`export_onnx` builds every file in memory, validates each against
PyTorch, and only when all passed (or ``allow_mismatch``) writes them, each
atomically, so a failed export leaves nothing new behind.
:func:`check_artifacts` re-runs the parity comparison on files already
written (``make parity``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mnist_edge.export.onnx import (
    MODEL_VERSION,
    ExportConfig,
    file_name,
    op_counts,
    set_metadata,
    torch_to_onnx,
)
from mnist_edge.export.ort_format import CONFIG_NAME, required_operators, to_ort_format
from mnist_edge.export.quantize import QuantizeConfig, quantize_int8
from mnist_edge.export.report import ExportedFile, ExportReport, write_reports
from mnist_edge.export.verify import (
    ORT_ERRORS,
    GraphSpec,
    ParityReport,
    Reference,
    Tolerance,
    ValidationError,
    open_session,
    raise_for_failures,
    validate,
)
from mnist_edge.runtime.atomic import atomic_write_bytes, atomic_write_text
from mnist_edge.runtime.metadata import ModelMetadata, Preprocessing
from mnist_edge.train.data import DATASETS

Log = Callable[[str], None]


class ArtifactError(ValueError):
    """The files to check are missing or not mnist-edge models; the message says how to make them."""


def model_preprocessing(dataset: str, spec: GraphSpec) -> Preprocessing:
    """The preprocessing recorded in a file: how the dataset's images were made
    (MNIST defaults for unknown datasets), with the file's input dtype."""
    known = DATASETS.get(dataset)
    base = known.preprocessing if known else Preprocessing()
    return replace(base, input_dtype="uint8" if spec.uint8_input else "float32")


def export_versions(trained_with: dict[str, str]) -> dict[str, str]:
    """Tool and library versions recorded in each file (plus the training ones, prefixed)."""
    import onnxruntime
    import onnxscript

    from mnist_edge.train.checkpoint import library_versions

    versions = library_versions() | {
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
    }
    return versions | {f"train.{k}": str(v) for k, v in trained_with.items()}


def _tolerance(config: ExportConfig, precision: str) -> Tolerance:
    if precision == "int8":
        return Tolerance(None, config.int8_max_accuracy_drop, config.int8_min_agreement)
    return Tolerance(config.tolerance, 0.0, 0.0)


def _load(checkpoint: Path, config: ExportConfig, log: Log) -> tuple[Any, Reference, np.ndarray]:
    """The checkpoint, PyTorch's reference outputs on the test set, and calibration images."""
    from mnist_edge.train.checkpoint import load_checkpoint
    from mnist_edge.train.data import DataConfig, load_dataset
    from mnist_edge.train.model import ProbabilityModel

    ckpt = load_checkpoint(checkpoint)
    dataset = load_dataset(
        DataConfig(dataset=ckpt.dataset.get("name", "mnist"), data_dir=config.data_dir), log
    )
    limit = config.eval_limit
    log(f"PyTorch: running {min(limit or 10**9, len(dataset.test_labels)):,} test images")
    reference = Reference.from_model(
        ProbabilityModel(ckpt.model), dataset.test_images[:limit], dataset.test_labels[:limit]
    )
    calibration = dataset.train_images[: config.calibration_images].numpy()  # (N, 1, 28, 28)
    return ckpt, reference, calibration


def _props(
    ckpt: Any, precision: str, spec: GraphSpec, parity: ParityReport, versions: dict[str, str]
) -> dict[str, str]:
    acc = parity.accuracy if np.isfinite(parity.accuracy) else None
    meta = ModelMetadata(
        labels=tuple(ckpt.classes),
        preprocessing=model_preprocessing(str(ckpt.dataset.get("name", "mnist")), spec),
        dataset=str(ckpt.dataset.get("name", "mnist")),
        test_accuracy=acc,
        precision=precision,
        source_sha256=ckpt.sha256,
        recipe=ckpt.recipe,
        versions=versions,
        model_version=f"{MODEL_VERSION}+{ckpt.sha256[:12]}",
    )
    props = meta.to_props()
    props["mnist_edge.test_images"] = str(parity.images)
    props["mnist_edge.validation"] = (
        "passed" if parity.ok else "FAILED: " + "; ".join(parity.failures)
    )
    return props


def _doc(dataset: str, precision: str, spec: GraphSpec, sha: str) -> str:
    pre = model_preprocessing(dataset, spec)
    centring = "centred by centre of mass" if pre.centering == "center-of-mass" else "box centred"
    shape = ", ".join(str(d) for d in spec.input_shape)
    pixels = "raw uint8 pixels" if spec.uint8_input else "pixels scaled to [0, 1]"
    return (
        f"mnist-edge {dataset} convnet ({precision}). Input 'image': "
        f"{'uint8' if spec.uint8_input else 'float32'} [{shape}], {pixels}, white on black, "
        f"28x28, {centring}. Output 'probabilities': float32 [{spec.batch_dim}, "
        f"{spec.num_classes}], softmax over the classes in metadata 'labels'. "
        f"Exported from checkpoint sha256 {sha[:12]}."
    )


def export_onnx(
    checkpoint: Path, out_dir: Path, config: ExportConfig | None = None, log: Log | None = None
) -> ExportReport:
    """Export, validate and write the fp32 and int8 ONNX files (and the edge variants asked for).

    Args:
        checkpoint: an mnist-edge checkpoint (``artifacts/model.pt``).
        out_dir: where the files, ``export.json`` and the ``report.md`` section go.
        config: export settings.
        log: called with one progress line at a time (default: silent).

    Returns:
        The report, also written to ``out_dir/export.json`` and ``out_dir/report.md``.

    Raises:
        CheckpointError: the checkpoint is missing or unreadable.
        DataError: the dataset cannot be loaded.
        ValidationError: some file failed validation (and not ``allow_mismatch``);
            it lists every failure of every file, and nothing was written.
    """

    config = config or ExportConfig()
    log = log or (lambda _: None)
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    start = time.perf_counter()
    timings: dict[str, float] = dict.fromkeys(
        ("load", "export", "quantize", "validate", "ort", "write"), 0.0
    )
    ckpt, reference, calibration = _load(checkpoint, config, log)
    timings["load"] = time.perf_counter() - start
    versions = export_versions(ckpt.versions)
    qconfig = QuantizeConfig(calibration_images=config.calibration_images)

    built: list[tuple[ExportedFile, onnx.ModelProto]] = []
    for spec in config.specs():
        t = time.perf_counter()
        fp32 = torch_to_onnx(ckpt.model, spec, config.opset)
        timings["export"] += time.perf_counter() - t
        models = [("fp32", fp32)]
        if config.int8:
            t = time.perf_counter()
            log(f"int8: calibrating on {len(calibration):,} training images")
            models.append(("int8", quantize_int8(fp32, calibration, spec, qconfig)))
            timings["quantize"] += time.perf_counter() - t
        for precision, model in models:
            t = time.perf_counter()
            name = file_name(spec, precision)
            log(f"validating {name}")
            parity = validate(
                model,
                reference,
                spec,
                _tolerance(config, precision),
                name=name,
                precision=precision,
                batch_size=config.batch_size,
            )
            doc = _doc(str(ckpt.dataset.get("name", "mnist")), precision, spec, ckpt.sha256)
            set_metadata(model, _props(ckpt, precision, spec, parity, versions), doc, MODEL_VERSION)
            try:
                onnx.checker.check_model(model)
            except onnx.checker.ValidationError as exc:
                parity.failures.append(f"onnx.checker after setting metadata: {exc}")
            timings["validate"] += time.perf_counter() - t
            entry = ExportedFile(
                out_dir / name, precision, spec, op_counts=op_counts(model), parity=parity
            )
            built.append((entry, model))

    files: dict[Path, bytes] = {}
    for entry, model in built:
        data = model.SerializeToString()
        entry.size_bytes = len(data)
        files[entry.path] = data
    report_files = [entry for entry, _ in built]
    ops_text = None
    if config.ort:
        t = time.perf_counter()
        ort_entries, ops_text = _ort_files(built, files, reference, config, log)
        report_files += ort_entries
        timings["ort"] = time.perf_counter() - t

    report = ExportReport(
        checkpoint=checkpoint,
        checkpoint_sha256=ckpt.sha256,
        dataset=str(ckpt.dataset.get("name", "mnist")),
        opset=config.opset,
        eval_images=len(reference.labels),
        pytorch_accuracy=reference.accuracy,
        calibration_images=len(calibration) if config.int8 else 0,
        quantization=asdict(qconfig) | {"format": "QDQ", "activations": "uint8", "weights": "int8"},
        files=report_files,
        versions=versions,
    )
    if not config.allow_mismatch:
        raise_for_failures([f.parity for f in report_files if f.parity])
    t = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in report_files:
        atomic_write_bytes(entry.path, files[entry.path])
        entry.written = True
    if ops_text is not None:
        report.required_operators = out_dir / CONFIG_NAME
        atomic_write_text(report.required_operators, ops_text)
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    report.timings = timings
    write_reports(report, out_dir)
    return report


def _ort_files(
    built: list[tuple[ExportedFile, onnx.ModelProto]],
    files: dict[Path, bytes],
    reference: Reference,
    config: ExportConfig,
    log: Log,
) -> tuple[list[ExportedFile], str]:
    """Convert each built model to ORT format in a temp folder and validate the result."""
    entries: list[ExportedFile] = []
    with tempfile.TemporaryDirectory(prefix="mnist-edge-ort-") as tmp:
        ort_paths = []
        for entry, _ in built:
            src = Path(tmp) / entry.path.name
            src.write_bytes(files[entry.path])
            dst = src.with_suffix(".ort")
            ort_entry = ExportedFile(entry.path.with_suffix(".ort"), entry.precision, entry.spec)
            log(f"converting {entry.path.name} to {dst.name}")
            try:
                to_ort_format(src, dst)
            except (RuntimeError, ValueError) as exc:
                ort_entry.parity = ParityReport(
                    dst.name, entry.precision, 0, failures=[f"ORT conversion failed: {exc}"]
                )
                entries.append(ort_entry)
                continue
            ort_entry.parity = validate(
                dst,
                reference,
                entry.spec,
                _tolerance(config, entry.precision),
                name=dst.name,
                precision=entry.precision,
                batch_size=config.batch_size,
            )
            files[ort_entry.path] = dst.read_bytes()
            ort_entry.size_bytes = len(files[ort_entry.path])
            ort_paths.append(dst)
            entries.append(ort_entry)
        ops_text = required_operators(ort_paths) if ort_paths else ""
    return entries, ops_text


def _spec_of(session: Any) -> GraphSpec:
    """The interface of a loaded file, read from its input (fixed batch, uint8)."""
    inp = session.get_inputs()[0]
    batch = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None
    return GraphSpec(fixed_batch=batch, uint8_input=inp.type == "tensor(uint8)")


def check_artifacts(
    checkpoint: Path, out_dir: Path, config: ExportConfig | None = None, log: Log | None = None
) -> list[ParityReport]:
    """Compare every ``mnist*.onnx`` / ``mnist*.ort`` in ``out_dir`` with ``checkpoint`` (``make parity``).

    Each file's precision comes from its metadata and its interface from its
    input; a file exported from another checkpoint (SHA-256 in its metadata)
    fails.

    Returns:
        One report per file; their ``failures`` say what is out of tolerance.

    Raises:
        ArtifactError: there is no ``mnist.onnx`` in ``out_dir``.
        CheckpointError, DataError: as for :func:`export_onnx`.
    """
    config = config or ExportConfig()
    log = log or (lambda _: None)
    out_dir = Path(out_dir)
    if not (out_dir / "mnist.onnx").is_file():
        raise ArtifactError(
            f"{out_dir / 'mnist.onnx'} does not exist; run `make export` (or `mnist-export`) first"
        )
    ckpt, reference, _ = _load(Path(checkpoint), config, log)
    paths = sorted(
        [*out_dir.glob("mnist*.onnx"), *out_dir.glob("mnist*.ort")],
        key=lambda p: (p.suffix != ".onnx", p.name.count("."), ".int8" in p.name, p.name),
    )
    reports = []
    for path in paths:
        log(f"checking {path.name}")
        try:
            session = open_session(path)
        except ORT_ERRORS as exc:
            reports.append(
                ParityReport(path.name, "?", 0, failures=[f"ONNX Runtime cannot load it: {exc}"])
            )
            continue
        meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
        precision = meta.precision if meta.from_file else "fp32"
        report = validate(
            path,
            reference,
            _spec_of(session),
            _tolerance(config, precision),
            name=path.name,
            precision=precision,
            batch_size=config.batch_size,
        )
        if meta.source_sha256 != ckpt.sha256:
            report.failures.insert(
                0,
                f"exported from checkpoint sha256 {meta.source_sha256[:12] or '(none)'}, not from "
                f"{checkpoint} ({ckpt.sha256[:12]}); run `make export` again",
            )
        reports.append(report)
    return reports


__all__ = [
    "ArtifactError",
    "ExportReport",
    "ExportedFile",
    "ValidationError",
    "check_artifacts",
    "export_onnx",
]
