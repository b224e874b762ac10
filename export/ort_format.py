"""ORT format files for ONNX Runtime's minimal and mobile builds.

Same conversion as ``python -m onnxruntime.tools.convert_onnx_models_to_ort``
with its defaults (fixed optimizations at level "all", without the x86-only
NCHWc layout transformer, so the file runs on ARM too), but one model at a
time and without printing. The ``required_operators`` config lists the
operators a minimal build must include (``build.sh --include_ops_by_config``).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort
from onnxruntime.tools.ort_format_model import create_config_from_models

from mnist_edge.runtime.layout import REQUIRED_OPERATORS as CONFIG_NAME


def to_ort_format(onnx_path: Path, ort_path: Path) -> None:
    """Optimize ``onnx_path`` (level "all", no NCHWc) and save it in ORT format at ``ort_path``.

    Raises:
        RuntimeError: ONNX Runtime cannot load or convert the model.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(ort_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    # Keep uint8 activations as quantized (x86 default); ARM runs them as well.
    options.add_session_config_entry("session.qdqisint8allowed", "0")
    ort.InferenceSession(
        str(onnx_path),
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=["NchwcTransformer"],
    )


def required_operators(ort_paths: Sequence[Path]) -> str:
    """The ``required_operators`` config text for ``ort_paths`` (one ``domain;opset;ops`` line each)."""
    tool_log = logging.getLogger(
        "ort_format_model.utils"
    )  # logs "Created config in <temp path>" at INFO
    level = tool_log.level
    with tempfile.TemporaryDirectory(prefix="mnist-edge-ops-") as tmp:
        out = Path(tmp) / CONFIG_NAME
        tool_log.setLevel(logging.WARNING)
        try:
            with warnings.catch_warnings():
                # onnxruntime's OrtFormatModelProcessor does open(path).read() without closing the file.
                warnings.simplefilter("ignore", ResourceWarning)
                create_config_from_models(list(ort_paths), out, enable_type_reduction=False)
        finally:
            tool_log.setLevel(level)
        lines = [ln for ln in out.read_text().splitlines() if ln and not ln.startswith("#")]
    header = ["# Operators needed by a minimal ONNX Runtime build to run:"]
    header += [f"# - {p.name}" for p in sorted(ort_paths)]
    return "\n".join(header + lines) + "\n"
