"""Re-checking files already written (``make parity`` = ``mnist-export --parity-only``).

:func:`check_artifacts` compares every exported file in a folder with the
checkpoint it should come from, with the same checks and tolerances as the
export itself (:func:`mnist_edge.export.verify.validate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnist_edge.export.config import ExportConfig
from mnist_edge.export.parity import ORT_ERRORS, ParityReport, open_session
from mnist_edge.export.pipeline import Log, load_inputs, tolerance_for
from mnist_edge.export.pixels import PIXELS_INPUT
from mnist_edge.export.pixels_export import PixelsValidator
from mnist_edge.export.spec import GraphSpec
from mnist_edge.export.verify import validate
from mnist_edge.runtime.errors import MnistEdgeError
from mnist_edge.runtime.layout import Artifacts, model_name
from mnist_edge.runtime.metadata import ModelMetadata


class ArtifactError(MnistEdgeError, ValueError):
    """The files to check are missing or not mnist-edge models; the message says how to make them."""


def _spec_of(session: Any) -> GraphSpec:
    """The interface of a loaded file, read from its input (fixed batch, uint8)."""
    inp = session.get_inputs()[0]
    batch = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None
    return GraphSpec(fixed_batch=batch, uint8_input=inp.type == "tensor(uint8)")


def check_artifacts(
    checkpoint: Path, out_dir: Path, config: ExportConfig | None = None, log: Log | None = None
) -> list[ParityReport]:
    """Compare every ``mnist*.onnx`` / ``mnist*.ort`` in ``out_dir`` with ``checkpoint`` (``make parity``).

    The pixels-in files (input ``pixels``) are compared with ``mnist-infer``'s
    Python path on the core file of their precision beside them. Each file's
    precision comes from its metadata and its interface from its input; a file
    exported from another checkpoint (SHA-256 in its metadata) fails.

    Returns:
        One report per file; their ``failures`` say what is out of tolerance.

    Raises:
        ArtifactError: there is no ``mnist.onnx`` in ``out_dir``.
        CheckpointError, DataError: as for :func:`mnist_edge.export.pipeline.export_onnx`.
    """
    config = config or ExportConfig()
    log = log or (lambda _: None)
    out_dir = Path(out_dir)
    art = Artifacts(out_dir)
    if not art.model().is_file():
        raise ArtifactError(f"{art.model()} does not exist; export the model first")
    ckpt, reference, _ = load_inputs(Path(checkpoint), config, log, calibration=False)
    paths = sorted(
        [*out_dir.glob("mnist*.onnx"), *out_dir.glob("mnist*.ort")],
        key=lambda p: (p.suffix != ".onnx", p.name.count("."), ".int8" in p.name, p.name),
    )
    reports = []
    pixels: PixelsValidator | None = None  # made on the first pixels-in file
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
        report: ParityReport
        if [i.name for i in session.get_inputs()] == [PIXELS_INPUT]:
            # pixels-in: compared with mnist-infer's Python path on the core file beside it
            core = out_dir / model_name(precision)
            if not core.is_file():
                reports.append(
                    ParityReport(path.name, precision, 0, failures=[f"{core.name} is missing"])
                )
                continue
            if pixels is None:
                pixels = PixelsValidator.from_reference(reference, meta.preprocessing, config)
            pixels.cores.setdefault(precision, core.read_bytes())
            report = pixels.check(path, precision, path.name)
        else:
            report = validate(
                path,
                reference,
                _spec_of(session),
                tolerance_for(config, precision),
                name=path.name,
                precision=precision,
                batch_size=config.batch_size,
                session=session,
            )
        if meta.source_sha256 != ckpt.sha256:
            report.failures.insert(
                0,
                f"exported from checkpoint sha256 {meta.source_sha256[:12] or '(none)'}, not from "
                f"{checkpoint} ({ckpt.sha256[:12]}); export it again",
            )
        reports.append(report)
    return reports
