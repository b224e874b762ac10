"""The export stage: a checkpoint in, validated ONNX files and reports out.

:func:`export_onnx` builds every file in memory, validates each against
PyTorch, and only when all passed (or ``allow_mismatch``) writes them, each
atomically, so a failed export leaves nothing new behind.
:func:`mnist_edge.export.artifacts.check_artifacts` re-runs the parity
comparison on files already written (``make parity``); it shares
:func:`load_inputs` and :func:`tolerance_for` with the export.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from mnist_edge.export.config import ExportConfig
from mnist_edge.export.cpu import host_cpu_features
from mnist_edge.export.mobile import mobile_usability
from mnist_edge.export.onnx import (
    MODEL_VERSION,
    file_name,
    op_counts,
    set_metadata,
    torch_to_onnx,
)
from mnist_edge.export.ort_format import CONFIG_NAME, required_operators, to_ort_format
from mnist_edge.export.parity import ORT_ERRORS, ParityReport, Reference, Tolerance
from mnist_edge.export.pixels_export import PixelsValidator, build_pixels_files, meta_document
from mnist_edge.export.presets import int8_preset
from mnist_edge.export.provenance import Int8Provenance, export_versions, file_doc, file_props
from mnist_edge.export.quantize import quantize_int8
from mnist_edge.export.report import ExportedFile, ExportReport, write_reports
from mnist_edge.export.verify import ValidationError, raise_for_failures, validate
from mnist_edge.runtime.atomic import atomic_write_bytes, atomic_write_text
from mnist_edge.runtime.layout import META_JSON

if TYPE_CHECKING:
    from mnist_edge.train.checkpoint import Checkpoint

Log = Callable[[str], None]


def tolerance_for(config: ExportConfig, precision: str) -> Tolerance:
    """How close a file of ``precision`` (``"fp32"`` or ``"int8"``) must stay to PyTorch under ``config``."""
    if precision == "int8":
        return Tolerance(None, config.int8_max_drop, config.int8_min_agreement)
    return Tolerance(config.tolerance, 0.0, 0.0)


def load_inputs(
    checkpoint: Path, config: ExportConfig, log: Log, *, calibration: bool = True
) -> tuple[Checkpoint, Reference, np.ndarray | None]:
    """The checkpoint, PyTorch's reference outputs on the test set, and calibration images.

    Only the slices needed are loaded (the evaluation images and the first
    ``config.calibration_images`` training images). With ``calibration=False``
    (re-checking files already written) no training images are loaded and
    ``None`` is returned in their place.
    """
    from mnist_edge.train.checkpoint import load_checkpoint
    from mnist_edge.train.data import DataConfig, load_dataset
    from mnist_edge.train.model import ProbabilityModel

    ckpt = load_checkpoint(checkpoint)
    dataset = load_dataset(
        DataConfig(dataset=ckpt.dataset.name, data_dir=config.data_dir),
        log,
        train_limit=config.calibration_images if calibration else 0,
        test_limit=config.test_limit,
    )
    test_images = dataset.test_images  # (N, 1, 28, 28) float32
    test_labels = dataset.test_labels  # (N,)
    calib = dataset.train_images.numpy() if calibration else None  # (C, 1, 28, 28)
    log(f"PyTorch: running {len(test_labels):,} test images")
    reference = Reference.from_model(ProbabilityModel(ckpt.model), test_images, test_labels)
    return ckpt, reference, calib


def export_onnx(
    checkpoint: Path, out_dir: Path, config: ExportConfig | None = None, log: Log | None = None
) -> ExportReport:
    """Export, validate and write the fp32 and int8 ONNX files (and the edge variants asked for).

    With ``config.pixels`` (the default) also the pixels-in files
    (:mod:`mnist_edge.export.pixels`), validated against ``mnist-infer``'s Python
    path, and ``mnist.meta.json`` beside them. Each ``.onnx`` file's entry in the
    report carries ONNX Runtime's mobile usability analysis (:mod:`.mobile`).

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
        ("load", "export", "quantize", "validate", "pixels", "mobile", "ort", "write"), 0.0
    )
    ckpt, reference, calibration = load_inputs(checkpoint, config, log, calibration=config.int8)
    timings["load"] = time.perf_counter() - start
    versions = export_versions(ckpt.versions)
    host = host_cpu_features()
    preset = int8_preset(config.int8_target, config.calibration_images, host)
    qconfig = preset.quantize
    int8_origin = Int8Provenance(preset.target, preset.tuned_for, host.summary())
    if config.int8:
        log(f"int8: preset {preset.target} (for {preset.tuned_for}; this CPU: {host.summary()})")

    built: list[tuple[ExportedFile, onnx.ModelProto]] = []
    for spec in config.specs():
        t = time.perf_counter()
        fp32 = torch_to_onnx(ckpt.model, spec, config.opset)
        timings["export"] += time.perf_counter() - t
        models = [("fp32", fp32)]
        if calibration is not None:  # loaded when config.int8
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
                tolerance_for(config, precision),
                name=name,
                precision=precision,
                batch_size=config.batch_size,
            )
            doc = file_doc(ckpt.dataset.name, precision, spec, ckpt.sha256)
            set_metadata(
                model,
                file_props(ckpt, precision, spec, parity, versions, int8_origin),
                doc,
                MODEL_VERSION,
            )
            try:
                onnx.checker.check_model(model)
            except onnx.checker.ValidationError as exc:
                parity.failures.append(f"onnx.checker after setting metadata: {exc}")
            timings["validate"] += time.perf_counter() - t
            entry = ExportedFile(
                out_dir / name, precision, spec, op_counts=op_counts(model), parity=parity
            )
            built.append((entry, model))

    pixels: PixelsValidator | None = None
    if (
        config.pixels
    ):  # pixels-in twins of the main files, checked against mnist-infer's Python path
        t = time.perf_counter()
        pixels_built, pixels = build_pixels_files(
            built, reference, ckpt, config, versions, int8_origin, log
        )
        built += pixels_built
        timings["pixels"] = time.perf_counter() - t

    files: dict[Path, bytes] = {}
    t = time.perf_counter()
    for entry, model in built:
        data = model.SerializeToString()
        entry.size_bytes = len(data)
        files[entry.path] = data
        entry.mobile = _mobile(data)
    timings["mobile"] = time.perf_counter() - t
    report_files = [entry for entry, _ in built]
    ops_text = None
    if config.ort:
        t = time.perf_counter()
        ort_entries, ops_text = _ort_files(built, files, reference, config, log, pixels)
        report_files += ort_entries
        timings["ort"] = time.perf_counter() - t

    report = ExportReport(
        checkpoint=checkpoint,
        checkpoint_sha256=ckpt.sha256,
        dataset=ckpt.dataset.name,
        opset=config.opset,
        eval_images=len(reference.labels),
        pytorch_accuracy=reference.accuracy,
        calibration_images=len(calibration) if calibration is not None else 0,
        quantization=asdict(qconfig)
        | {
            "weights": "int8",
            "target": preset.target,
            "tuned_for": preset.tuned_for,
            "export_cpu": host.summary(),
        },
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
    if pixels is not None:  # the pixels-in files' metadata for runtimes that cannot read it (web)
        report.meta_json = out_dir / META_JSON
        atomic_write_text(report.meta_json, meta_document(report_files, ckpt, versions).to_json())
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
    pixels: PixelsValidator | None = None,
) -> tuple[list[ExportedFile], str]:
    """Convert each built model to ORT format in a temp folder and validate the result."""
    entries: list[ExportedFile] = []
    with tempfile.TemporaryDirectory(prefix="mnist-edge-ort-") as tmp:
        ort_paths = []
        for entry, _ in built:
            src = Path(tmp) / entry.path.name
            src.write_bytes(files[entry.path])
            dst = src.with_suffix(".ort")
            ort_entry = ExportedFile(
                entry.path.with_suffix(".ort"), entry.precision, entry.spec, pixels=entry.pixels
            )
            log(f"converting {entry.path.name} to {dst.name}")
            try:
                to_ort_format(src, dst)
            except (RuntimeError, ValueError) as exc:
                ort_entry.parity = ParityReport(
                    dst.name, entry.precision, 0, failures=[f"ORT conversion failed: {exc}"]
                )
                entries.append(ort_entry)
                continue
            if entry.pixels and pixels is not None:
                ort_entry.parity = pixels.check(dst, entry.precision, dst.name)
            else:
                ort_entry.parity = validate(
                    dst,
                    reference,
                    entry.spec,
                    tolerance_for(config, entry.precision),
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


def _mobile(model: bytes) -> dict[str, Any]:
    """ONNX Runtime's mobile usability checker on one file, as a report entry."""
    try:
        return mobile_usability(model).to_dict()
    except ORT_ERRORS as exc:  # a file ORT cannot load fails its validation anyway
        return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}


__all__ = [
    "ExportReport",
    "ExportedFile",
    "ValidationError",
    "export_onnx",
    "load_inputs",
    "tolerance_for",
]
