"""Export reports: the report objects, ``export.json``, the "Export" section of ``report.md``, the parity table.

The training stage writes ``report.md`` first; the "Export" section goes
between its ``export`` markers through
:func:`mnist_edge.train.report.upsert_section` (replaced if present, else
appended; the file is created if missing). Both files are written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_edge.export.parity import ParityReport
from mnist_edge.export.spec import GraphSpec
from mnist_edge.runtime.atomic import atomic_write_text
from mnist_edge.runtime.layout import Artifacts
from mnist_edge.train.report import upsert_section

REPORT_TITLE = "# mnist-edge report\n"  # heading of a report.md the export creates itself


@dataclass
class ExportedFile:
    """One file an export made (or would have made, had validation passed)."""

    path: Path
    precision: str
    spec: GraphSpec
    size_bytes: int = 0
    op_counts: dict[str, int] = field(default_factory=dict)
    parity: ParityReport | None = None
    written: bool = False
    pixels: bool = False  # the pixels-in model (input ``pixels``, preprocessing inside)
    mobile: dict[str, Any] | None = None  # ONNX Runtime's mobile usability checker (export.mobile)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "precision": self.precision,
            "fixed_batch": self.spec.fixed_batch,
            "uint8_input": self.spec.uint8_input,
            "size_bytes": self.size_bytes,
            "op_counts": self.op_counts,
            "written": self.written,
            "parity": self.parity.to_dict() if self.parity else None,
            "pixels": self.pixels,
            "mobile": self.mobile,
        }


@dataclass
class ExportReport:
    """What :func:`export_onnx` did: its files with their parity numbers, and the time taken."""

    checkpoint: Path
    checkpoint_sha256: str
    dataset: str
    opset: int
    eval_images: int
    pytorch_accuracy: float
    calibration_images: int
    quantization: dict[str, Any]
    files: list[ExportedFile] = field(default_factory=list)
    required_operators: Path | None = None
    meta_json: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        return [f"{f.path.name}: {m}" for f in self.files if f.parity for m in f.parity.failures]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "checkpoint_sha256": self.checkpoint_sha256,
            "dataset": self.dataset,
            "exporter": "torch.onnx.export(dynamo=True, optimize=True)",
            "opset": self.opset,
            "eval_images": self.eval_images,
            "pytorch_accuracy": self.pytorch_accuracy,
            "calibration_images": self.calibration_images,
            "quantization": self.quantization,
            "files": [f.to_dict() for f in self.files],
            "required_operators": self.required_operators.name if self.required_operators else None,
            "meta_json": self.meta_json.name if self.meta_json else None,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "versions": self.versions,
            "ok": self.ok,
            "failures": self.failures,
        }


def _num(x: float, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def parity_rows(
    reports: Sequence[ParityReport], sizes: dict[str, int] | None = None
) -> list[list[str]]:
    """Table rows: file, precision, images, accuracy, vs PyTorch, max |diff|, agreement, size, result."""
    rows = []
    for r in reports:
        delta = r.accuracy - r.reference_accuracy
        rows.append(
            [
                r.name,
                r.precision,
                f"{r.images:,}",
                _num(r.accuracy, ".4f"),
                _num(delta * 100, "+.2f") + " pt" if not math.isnan(delta) else "—",
                _num(r.max_abs_diff, ".2e"),
                _num(r.agreement * 100, ".2f") + " %" if not math.isnan(r.agreement) else "—",
                _size(sizes[r.name]) if sizes and r.name in sizes else "—",
                "ok" if r.ok else "FAIL",
            ]
        )
    return rows


HEADERS = [
    "file",
    "precision",
    "images",
    "accuracy",
    "vs PyTorch",
    "max |Δp|",
    "argmax agree",
    "size",
    "result",
]


def parity_table(
    reports: Sequence[ParityReport], pytorch_accuracy: float, sizes: dict[str, int] | None = None
) -> str:
    """A plain-text table for the terminal, headed by PyTorch's accuracy, failures listed below."""
    rows = [HEADERS, *parity_rows(reports, sizes)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = [f"PyTorch accuracy: {pytorch_accuracy:.4f}"]
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in reports:
        lines += [f"  {r.name}: {f}" for f in r.failures]
    return "\n".join(lines)


def markdown_section(report: ExportReport) -> str:
    """The "Export" section of ``report.md`` (without its markers: :func:`write_reports` adds them)."""
    sizes = {f.path.name: f.size_bytes for f in report.files}
    parities = [f.parity for f in report.files if f.parity]
    table = [
        "| " + " | ".join(h.replace("|", "\\|") for h in HEADERS) + " |",  # escape |Δp|
        "|" + "|".join("---" for _ in HEADERS) + "|",
        *("| " + " | ".join(row) + " |" for row in parity_rows(parities, sizes)),
    ]
    ops = [
        f"- `{f.path.name}`: " + ", ".join(f"{k} {v}" for k, v in f.op_counts.items())
        for f in report.files
        if f.op_counts
    ]
    q = report.quantization
    lines = [
        "## Export",
        "",
        f"Checkpoint `{report.checkpoint}` (sha256 `{report.checkpoint_sha256[:12]}`), dataset {report.dataset}; "
        f"exported with `torch.onnx.export(dynamo=True)`, opset {report.opset}.",
        f"Compared with PyTorch on {report.eval_images:,} test images: PyTorch accuracy {report.pytorch_accuracy:.4f}.",
        "",
        *table,
        "",
        f"int8: preset {q.get('target', '?')} (for {q.get('tuned_for', '?')}; exported on {q.get('export_cpu', '?')}): "
        f"static {q.get('quant_format', 'QDQ')}, activations {q.get('activations', 'uint8')}, weights int8 "
        f"per-channel={q.get('per_channel')} reduce-range={q.get('reduce_range')}, "
        f"calibrated on {report.calibration_images:,} training images.",
        *_pixels_lines(report),
        "",
        "Operators:",
        "",
        *ops,
        *_mobile_lines(report.files),
        "",
        "Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items()),
    ]
    return "\n".join(lines) + "\n"


def _pixels_lines(report: ExportReport) -> list[str]:
    """What the pixels-in rows are compared with (not PyTorch), if there are any."""
    pixels = [f for f in report.files if f.pixels and f.parity]
    if not pixels:
        return []
    return [
        "",
        f"Pixels-in files (`{'`, `'.join(f.path.name for f in pixels)}`): compared with mnist-infer's "
        f"Python path (preprocess + the core file of the same precision), not with PyTorch, on "
        f"{pixels[0].parity.images if pixels[0].parity else 0:,} pictures made from the test digits "
        "(several sizes, both polarities, the `make samples` variants, off-centre on large canvases); "
        "'argmax agree' is the label agreement and 'vs PyTorch' the accuracy difference to that path.",
    ]


MOBILE_EPS = ("NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram")


def mobile_cell(coverage: dict[str, Any] | None) -> str:
    """``"100% in 1 (YES)"``: share of nodes, partitions and the checker's verdict."""
    if not coverage:
        return "—"
    return f"{coverage['percent']:.0f}% in {coverage['partitions']} ({coverage['verdict']})"


def _mobile_lines(files: Sequence[ExportedFile]) -> list[str]:
    """The mobile usability table: per file and provider, as exported / with fixed shapes."""
    rows = [f for f in files if f.mobile and "as_is" in f.mobile]
    if not rows:
        return []
    head = ["file", *(f"{ep} as is / shapes fixed" for ep in MOBILE_EPS)]
    lines = [
        "",
        "Mobile usability (ONNX Runtime's `check_onnx_model_mobile_usability` analysis: share of "
        "nodes the provider can take, in how many partitions, and its verdict):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for f in rows:
        mobile = f.mobile or {}
        cells = [
            f"{mobile_cell(mobile['as_is'].get(ep))} / {mobile_cell(mobile['fixed_shapes'].get(ep))}"
            for ep in MOBILE_EPS
        ]
        lines.append(f"| {f.path.name} | " + " | ".join(cells) + " |")
    return lines


def _json_safe(value: object) -> object:
    """NaN (a check that could not run) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_reports(report: ExportReport, out_dir: Path) -> None:
    """Write ``out_dir/export.json`` and the "Export" section of ``out_dir/report.md``."""
    data = _json_safe(report.to_dict())
    art = Artifacts(out_dir)
    atomic_write_text(art.export_report, json.dumps(data, indent=2, allow_nan=False) + "\n")
    path = art.report
    if not path.is_file():
        atomic_write_text(path, REPORT_TITLE)  # no training report yet: keep the usual heading
    upsert_section(path, "export", markdown_section(report))
