"""Microcontroller benchmark: the C library on QEMU's Cortex-M boards, with emx-onnx-cgen beside it.

Run from the repo root (``make bench-mcu``, part of ``make bench``)::

    .venv/bin/python bench/bench_mcu.py
    .venv/bin/python bench/bench_mcu.py --emx-cgen .venv-emx/bin/emx-onnx-cgen

For the fp32 and int8 files of ``--models`` (default: ``artifacts/`` when it holds an export,
else the bundled models), it emits our C library (``mnist_edge.export.c.emit_library``, as
``mnist-export --c`` does) into ``--build-dir`` and, for each board (mps2-an386 Cortex-M4F,
mps2-an500 Cortex-M7), builds the example firmware and runs it on QEMU
(``mnist_edge.tools.firmware.measure``). It reports flash (the library's objects and the libm
functions they pull in), RAM (static data + bss + the peak stack of one call, painted),
instructions per image (QEMU -icount shift=0, counted with SysTick; a proxy, not device time),
the board's labels against the same library on the host (``--digits`` test digits and two
frames), and the host library's labels against ONNX Runtime on ``--host-digits`` test digits.

With ``--emx-cgen`` (``make venv-emx`` installs it), the same files compiled by emx-onnx-cgen
(``mnist_edge.tools.firmware_emx``) get the same rows on the Cortex-M4 board, plus their labels
against ours. Without the cross tools it prints how to get them and exits 0.

Merges an ``"mcu"`` section into ``artifacts/bench.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from benchutil import (  # bench/ is sys.path[0] for scripts
    BENCH_JSON,
    cpu_flags,
    cpu_flags_line,
    cpu_name,
    merge_section,
)

from mnist_edge.runtime.layout import PRECISIONS, Artifacts, default_models
from mnist_edge.tools.firmware import Measurement, measure
from mnist_edge.tools.firmware_build import (
    BOARDS,
    CROSS_GCC,
    CROSS_PACKAGES,
    QEMU,
    Classified,
    FirmwareError,
    Pictures,
    classify_on_host,
    make_pictures,
    missing_tools,
)
from mnist_edge.tools.firmware_emx import (
    EMX_PACKAGE,
    EMX_STACK,
    classify_emx_on_host,
    emx_library,
)
from mnist_edge.tools.samples import SamplesError, load_test_set

REPO = Path(__file__).resolve().parents[1]
EMX_BOARD = "mps2-an386"  # the budget's part, the Cortex-M4F


def ort_labels(model: Path, digits: np.ndarray) -> np.ndarray:
    """ONNX Runtime's labels for uint8 (N, 28, 28) digits, fed as the file expects (pixels / 255)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = digits.astype(np.float32)[:, None] / np.float32(255)  # (N, 1, 28, 28)
    return np.concatenate(
        [session.run(None, {name: x[i : i + 256]})[0].argmax(1) for i in range(0, len(x), 256)]
    )


def first(host: Classified, count: int) -> Classified:
    """The host's answers on the first ``count`` digits and on every frame."""
    return Classified(
        host.digit_labels[:count],
        host.digit_probabilities[:count],
        host.frame_labels,
        host.frame_probabilities,
    )


def row(path: str, precision: str, m: Measurement) -> dict:
    run = m.run
    return {
        "path": path,
        "precision": precision,
        "board": m.board.machine,
        "core": m.board.core,
        "flash": m.size.flash,
        "flash_libm": m.size.libm,
        "static_ram": m.size.static_ram,
        "stack_classify": run.stack_classify,
        "stack_frame": run.stack_frame,
        "ram": m.ram,
        "instructions_per_image": round(run.instructions_per_image),
        "board_digits_equal_host": int((run.classified.digit_labels == m.host.digit_labels).sum()),
        "board_frames_equal_host": int((run.classified.frame_labels == m.host.frame_labels).sum()),
        "board_digits": len(m.host.digit_labels),
        "board_frames": len(m.host.frame_labels),
        "max_probability_diff": m.max_probability_diff,
    }


def bench_precision(
    args: argparse.Namespace, precision: str, board_pics: Pictures, host_pics: Pictures
) -> list[dict]:
    """The rows of one precision: ours on each board, then emx-onnx-cgen's on the Cortex-M4."""
    from mnist_edge.export.c import emit_library

    model = Artifacts(args.models).model(precision)
    build = args.build_dir / precision
    ort = ort_labels(model, host_pics.digits)
    print(f"{precision}: our emitter ...", file=sys.stderr)
    folder = emit_library(model, build / "ours" / "library").folder
    ours = classify_on_host(folder, host_pics, build / "ours" / "host")
    agreement = {"host_equal_ort": int((ours.digit_labels == ort).sum())}
    rows = []
    for board in BOARDS:
        m = measure(folder, board_pics, board, build / "ours", REPO / "firmware",
                    timeout=args.timeout, host=first(ours, args.digits))  # fmt: skip
        rows.append(row("mnist-export --c", precision, m) | agreement)
    if args.emx_cgen is None:
        return rows
    print(f"{precision}: emx-onnx-cgen ...", file=sys.stderr)
    folder = emx_library(model, build / "emx" / "library", args.emx_cgen, REPO / "firmware")
    emx = classify_emx_on_host(folder, host_pics, build / "emx" / "host")
    m = measure(folder, board_pics, EMX_BOARD, build / "emx", REPO / "firmware",
                timeout=args.timeout, host=first(emx, args.digits), stack_size=EMX_STACK)  # fmt: skip
    rows.append(
        row("emx-onnx-cgen", precision, m)
        | {
            "host_equal_ort": int((emx.digit_labels == ort).sum()),
            "host_equal_ours": int((emx.digit_labels == ours.digit_labels).sum()),
        }
    )
    return rows


def tool_version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    return out.splitlines()[0] if out else "unknown"


def markdown(section: dict) -> str:
    n, host_n = section["digits"], section["host_digits"]
    lines = [
        f"| C library | precision | board | flash | RAM | instructions/image "
        f"| board = host ({n} digits + 2 frames) | host = ONNX Runtime ({host_n:,} digits) "
        "| = ours |",
        "|---|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in section["rows"]:
        same = f"{r['board_digits_equal_host']}/{r['board_digits']} + {r['board_frames_equal_host']}/{r['board_frames']}"  # fmt: skip
        ours = f"{r['host_equal_ours']:,}/{host_n:,}" if "host_equal_ours" in r else "—"
        lines.append(
            f"| {r['path']} | {r['precision']} | {r['board']} ({r['core']}) | {r['flash']:,} B "
            f"| {r['ram']:,} B | {r['instructions_per_image'] / 1e6:.2f} M | {same} "
            f"| {r['host_equal_ort']:,}/{host_n:,} | {ours} |"
        )
    tools = section["tools"]
    lines += [
        "",
        f"RAM = static RAM + the deeper peak stack of mnist_classify and mnist_classify_frame. "
        f"{tools['gcc']}; {tools['qemu']}; emx: {tools['emx'] or 'not run'}.",
        f"Host: {section['host']['cpu']}, {cpu_flags_line(section['host']['cpu_flags'])}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=default_models().root,
                        help="folder with mnist.onnx and mnist.int8.onnx")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--digits", type=int, default=100, help="test digits run on each board")
    parser.add_argument("--host-digits", type=int, default=1000,
                        help="test digits compared with ONNX Runtime on the host")  # fmt: skip
    parser.add_argument("--build-dir", type=Path, default=Path("build/bench-mcu"))
    parser.add_argument("--emx-cgen", type=Path, default=None,
                        help=f"the emx-onnx-cgen command ({EMX_PACKAGE}; make venv-emx)")  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds one QEMU run may take"
    )
    parser.add_argument("--out", type=Path, default=BENCH_JSON)
    args = parser.parse_args(argv)
    if not 2 <= args.digits <= args.host_digits <= 10_000:
        parser.error("need 2 <= --digits <= --host-digits <= 10000")
    missing = missing_tools()
    if missing:
        print(f"bench_mcu: skipped, needs {', '.join(missing)}: apt-get install {CROSS_PACKAGES}")
        return 0
    models = [Artifacts(args.models).model(p) for p in PRECISIONS]
    absent = [str(p) for p in models if not p.is_file()]
    if absent:
        print(f"Error: no {', '.join(absent)}; run `make train export` first", file=sys.stderr)
        return 2
    if args.emx_cgen is not None and not args.emx_cgen.is_file():
        print(f"bench_mcu: emx-onnx-cgen rows skipped, no {args.emx_cgen} (make venv-emx)",
              file=sys.stderr)  # fmt: skip
        args.emx_cgen = None
    try:
        images, _ = load_test_set(args.data_dir)  # (10000, 28, 28) uint8
    except SamplesError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    board_pics = make_pictures(images, args.digits)
    host_pics = make_pictures(images, args.host_digits)
    start = time.perf_counter()
    try:
        rows = [r for p in PRECISIONS for r in bench_precision(args, p, board_pics, host_pics)]
    except FirmwareError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    section = {
        "models": str(args.models),
        "digits": args.digits,
        "host_digits": args.host_digits,
        "rows": rows,
        "tools": {
            "gcc": f"{CROSS_GCC} {tool_version([CROSS_GCC, '-dumpversion'])} -O2",
            "qemu": tool_version([QEMU, "--version"]),
            "emx": EMX_PACKAGE if args.emx_cgen is not None else None,
        },
        "host": {"cpu": cpu_name(), "cpu_flags": cpu_flags()},
        "seconds": round(time.perf_counter() - start, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    merge_section(args.out, "mcu", section)
    print(markdown(section))
    print(f"\nsaved to {args.out} (section 'mcu')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
