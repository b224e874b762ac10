"""What ONNX Runtime's mobile usability checker says about a file (NNAPI and CoreML coverage).

The same analysis as ``python -m onnxruntime.tools.check_onnx_model_mobile_usability FILE``
(optimize to the "basic" level, infer shapes, estimate the partitions each
execution provider would take), called through its Python functions and
returned as numbers instead of log lines. For each provider: how many nodes
it can take and in how many partitions, as the file is (dynamic axes count
as unsupported for NNAPI) and with its dynamic axes fixed, and the checker's
verdict (``YES``/``MAYBE``/``NO``).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.tools.mobile_helpers import usability_checker as uc
from onnxruntime.tools.onnx_model_utils import is_fixed_size_tensor, optimize_model

# The providers the checker knows, and the supported-operator list each one reads.
PROVIDERS = {
    "NNAPI": None,
    "CoreML NeuralNetwork": "coreml_supported_neuralnetwork_ops.md",
    "CoreML MLProgram": "coreml_supported_mlprogram_ops.md",
}


@dataclass(frozen=True)
class Coverage:
    """One provider's share of one graph, as estimated by the checker."""

    nodes: int
    supported_nodes: int
    partitions: int
    verdict: str  # the checker's suitability: YES, MAYBE or NO
    unsupported_ops: tuple[str, ...]

    @property
    def percent(self) -> float:
        return 100.0 * self.supported_nodes / self.nodes if self.nodes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "percent": round(self.percent, 1),
            "unsupported_ops": list(self.unsupported_ops),
        }


@dataclass(frozen=True)
class MobileUsability:
    """The checker's findings for one file: per provider, as is and with fixed shapes."""

    dynamic_inputs: tuple[str, ...]
    as_is: dict[str, Coverage]
    fixed_shapes: dict[str, Coverage]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dynamic_inputs": list(self.dynamic_inputs),
            "as_is": {k: v.to_dict() for k, v in self.as_is.items()},
            "fixed_shapes": {k: v.to_dict() for k, v in self.fixed_shapes.items()},
        }


def _coverage(model: onnx.ModelProto, provider: str, require_fixed: bool) -> Coverage:
    ops_file = PROVIDERS[provider]
    if ops_file is None:
        info = uc.check_nnapi_partitions(model, require_fixed)
    else:
        info = uc.check_coreml_partitions(model, require_fixed, ops_file)
    return Coverage(
        nodes=info.num_nodes,
        supported_nodes=info.num_supported_nodes,
        partitions=info.num_partitions,
        verdict=info.suitability().name,
        unsupported_ops=tuple(sorted(info.unsupported_ops)),
    )


def mobile_usability(model: bytes) -> MobileUsability:
    """Run the checker's analysis on a serialized ONNX model.

    Raises:
        RuntimeError: ONNX Runtime cannot optimize the model (it would not load either).
    """
    with tempfile.TemporaryDirectory(prefix="mnist-edge-mobile-") as tmp:
        src, optimized = Path(tmp) / "model.onnx", Path(tmp) / "optimized.onnx"
        src.write_bytes(model)
        optimize_model(src, optimized)  # the checker's default: "basic" level first
        proto = onnx.shape_inference.infer_shapes(onnx.load(str(optimized)), strict_mode=True)
    dynamic = tuple(i.name for i in proto.graph.input if not is_fixed_size_tensor(i))
    checker_log = logging.getLogger("usability_checker")
    level = checker_log.level
    checker_log.setLevel(logging.WARNING)
    try:
        as_is = {p: _coverage(proto, p, True) for p in PROVIDERS}
        fixed = {p: _coverage(proto, p, False) for p in PROVIDERS}
    finally:
        checker_log.setLevel(level)
    return MobileUsability(dynamic, as_is, fixed)
