"""Write one C library folder (``mnist.h``, ``mnist_model.c``, the frame files) for one ONNX file."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from mnist_edge.export.c.build import TargetSize, measure_cortex_m4
from mnist_edge.export.c.emit import CLASSES, header, model_source, plan
from mnist_edge.export.c.network import Network, NetworkError, Quant, read_network

FRAME_SOURCES = ("mnist_frame.c", "mnist_frame.h")  # copied verbatim
FRAME_API = "frame_api.h"  # pasted into mnist.h
LIBM_STACK = 256  # allowance for libm's expf/lrintf frames, which -fstack-usage cannot see


@dataclass(frozen=True)
class CLibrary:
    """One written C library folder and what it needs.

    Attributes:
        folder: where ``mnist.h`` and the ``.c`` files are.
        precision: ``"fp32"`` or ``"int8"``.
        model: the ONNX file it was emitted from, and its SHA-256.
        weight_bytes: the ``static const`` weights, tables and scales.
        buffer_bytes: ``mnist_classify``'s activation buffers and int8 conv patches (on the
            caller's stack).
        target: the Cortex-M4 measurement, or None without arm-none-eabi-gcc.
    """

    folder: Path
    precision: str
    model: Path
    model_sha256: str
    weight_bytes: int
    buffer_bytes: int
    target: TargetSize | None
    files: list[Path] = field(default_factory=list)

    @property
    def stack_bound(self) -> int | None:
        """Bytes of stack one call needs at most (Cortex-M4), or None when not measured."""
        return None if self.target is None else self.target.stack + LIBM_STACK

    @property
    def reentrant(self) -> bool | None:
        return None if self.target is None else self.target.static_ram == 0

    def to_dict(self) -> dict[str, object]:
        t = self.target
        m4: dict[str, object] | None = None
        if t is not None:
            m4 = {"flash": t.flash, "static_ram": t.static_ram, "stack_bound": self.stack_bound}
            m4["compiler"] = t.compiler
        return {
            "folder": str(self.folder),
            "precision": self.precision,
            "model": self.model.name,
            "weight_bytes": self.weight_bytes,
            "buffer_bytes": self.buffer_bytes,
            "cortex_m4": m4,
        }


def input_table(quant: Quant, divisor: float) -> np.ndarray:
    """QuantizeLinear(pixel / divisor) for pixels 0..255, computed by ONNX Runtime itself."""
    from onnx import TensorProto, helper

    from mnist_edge.export.parity import open_session

    node = helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"])
    graph = helper.make_graph(
        [node], "input_table",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [256])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [quant.scale]),
         helper.make_tensor("zero", TensorProto.UINT8, [], [quant.zero_point])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    x = np.arange(256, dtype=np.float32) / np.float32(divisor)  # as the core model is fed
    session = open_session(model.SerializeToString())
    return session.run(None, {"x": x})[0]


def frame_dir() -> Path:
    """The package folder holding the frame preprocessing sources."""
    return Path(str(resources.files("mnist_edge.export.c")))


def _memory_lines(net: Network, weights: int, buffers: int, t: TargetSize | None) -> list[str]:
    p = plan(net)
    patches = f"; conv patches: {p.patches}" if p.patches else ""
    lines = [
        f"weights: {weights} bytes of static const arrays (flash)",
        f"mnist_classify's activation buffers: {buffers} bytes on the caller's stack"
        f" (a, b: {'uint8_t' if net.precision == 'int8' else 'float'}{patches}; logits: {CLASSES * 4})",
    ]
    if t is None:
        lines.append("Cortex-M4 figures not measured (arm-none-eabi-gcc was not installed)")
        return lines
    where = f"{t.compiler} -O2 {' '.join(('-mcpu=cortex-m4', '-mthumb', '-mfloat-abi=hard'))}"
    lines += [
        f"flash: {t.flash} bytes: code + const data of this folder's objects ({where};",
        "  libm's expf/lrintf and the C runtime not included)",
        f"static RAM (data + bss): {t.static_ram} bytes"
        + (": no static buffers" if t.static_ram == 0 else ""),
        f"stack of one call: at most {t.stack + LIBM_STACK} bytes (every function's frame added up,",
        f"  -fstack-usage, plus {LIBM_STACK} for libm)",
        "reentrant: yes, every buffer is on the caller's stack"
        if t.static_ram == 0
        else "reentrant: no, the library has static buffers",
    ]
    return lines


def emit_library(model: Path, out_dir: Path, *, frames: Path | None = None) -> CLibrary:
    """Write the C library for one ONNX file (fp32 or QDQ int8, read from the graph) into ``out_dir``.

    Nothing is compiled for the host or validated here (:func:`export_c` does that);
    with arm-none-eabi-gcc installed the header states the measured Cortex-M4 figures.

    Args:
        model: an ``mnist.onnx`` or ``mnist.int8.onnx`` of the reference network.
        out_dir: created if needed; existing files of the same names are replaced.
        frames: folder with ``mnist_frame.c``, ``mnist_frame.h`` and ``frame_api.h``
            (default: the ones shipped in this package).

    Raises:
        NetworkError: the graph is outside the emitter's family, or a frame file is missing.
    """
    net = read_network(model)
    frames = frames or frame_dir()
    missing = [n for n in (*FRAME_SOURCES, FRAME_API) if not (frames / n).is_file()]
    if missing:
        raise NetworkError(f"frame sources missing from {frames}: {', '.join(missing)}")
    table = input_table(net.input_quant, net.divisor) if net.input_quant else None
    out_dir.mkdir(parents=True, exist_ok=True)
    source = model.name
    (out_dir / "mnist_model.c").write_text(model_source(net, source, table))
    for name in FRAME_SOURCES:
        shutil.copyfile(frames / name, out_dir / name)
    api = (frames / FRAME_API).read_text()
    weights = net.weight_bytes + (256 if table is not None else 0)
    buffers = plan(net).bytes + CLASSES * 4
    (out_dir / "mnist.h").write_text(header(net, source, api, _memory_lines(net, weights, buffers, None)))  # fmt: skip
    target = measure_cortex_m4(out_dir)
    (out_dir / "mnist.h").write_text(header(net, source, api, _memory_lines(net, weights, buffers, target)))  # fmt: skip
    files = [out_dir / n for n in ("mnist.h", "mnist_model.c", *FRAME_SOURCES)]
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    return CLibrary(out_dir, net.precision, model, sha, weights, buffers, target, files)
