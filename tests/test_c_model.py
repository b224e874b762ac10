"""The whole C library (export/c/) on the bundled models, against ONNX Runtime.

For each precision, ``emit_library`` writes the library from runtime/models/; it is
compiled with the host's ``cc`` and run on the first test digits (fp32: labels equal and
max |dp| <= 1e-4; int8: labels >= 99.9% equal), and again as a standalone executable
(tests/helpers/c_kernels/digits_harness.c) under AddressSanitizer and UBSan. ``mnist.h``'s
memory figures are checked against arm-none-eabi-gcc and the Cortex-M4 budgets. Then the
refusals: ``export_c`` on a library that disagrees, an unsupported graph, and
``mnist-export --c`` end to end.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from mnist_edge.export.c import check as c_check
from mnist_edge.export.c.build import (
    WARNINGS,
    HostLibrary,
    build_shared,
    host_cc,
    measure_cortex_m4,
)
from mnist_edge.export.c.check import CConfig, CExportError, export_c, load_test_digits
from mnist_edge.export.c.library import LIBM_STACK, CLibrary, emit_library
from mnist_edge.export.c.network import NetworkError
from mnist_edge.export.pixels_check import run_core
from mnist_edge.runtime.errors import MnistEdgeError
from mnist_edge.runtime.layout import BUNDLED, PRECISIONS
from mnist_edge.runtime.metadata import ModelMetadata
from mnist_edge.tools.firmware import BUDGETS, stated_memory

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"
HARNESS = REPO / "tests" / "helpers" / "c_kernels" / "digits_harness.c"
DIGITS = 1000
FP32_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.999
ARM_HINT = "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
RECORD = 4 + 10 * 4  # the harness's answer per digit: int32 label, 10 float32


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """The first test digits, uint8 (N, 28, 28), read as export_c reads them (data/ prepared if needed).

    Not the `mnist` fixture: its torch tensors cost ~30 s and nothing here needs them.
    """
    return load_test_digits(DATA_DIR, DIGITS)[0]


@pytest.fixture(scope="module", params=PRECISIONS)
def library(request, tmp_path_factory) -> CLibrary:
    """The C library emitted from a bundled file."""
    try:
        host_cc()
    except MnistEdgeError as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp(f"c-{request.param}")
    return emit_library(BUNDLED.model(request.param), out / "library")


@pytest.fixture(scope="module")
def answers(library, digits, tmp_path_factory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C labels, C probabilities, ONNX Runtime probabilities) on the digits."""
    so = build_shared(library.folder, tmp_path_factory.mktemp("so") / "libmnist.so")
    labels, probs = HostLibrary(so).classify(digits)
    props = {p.key: p.value for p in onnx.load(str(library.model), load_external_data=False).metadata_props}  # fmt: skip
    ref = run_core(library.model.read_bytes(), digits, ModelMetadata.from_props(props).preprocessing)  # fmt: skip
    return labels, probs, ref


def test_library_agrees_with_onnx_runtime(library, answers):
    labels, probs, ref = answers
    agreement = float(np.mean(labels == ref.argmax(1)))
    assert np.isfinite(probs).all()
    if library.precision == "fp32":
        assert agreement == 1.0
        assert float(np.abs(probs - ref).max()) <= FP32_TOLERANCE
    else:
        assert agreement >= INT8_MIN_AGREEMENT, agreement


def test_sanitized_harness_gives_the_same_labels(library, digits, answers, tmp_path):
    exe = tmp_path / "digits_harness"
    sources = [*sorted(str(p) for p in library.folder.glob("*.c")), str(HARNESS)]
    cmd = [host_cc(), *WARNINGS, "-O1", "-g", *SANITIZE, f"-I{library.folder}", *sources, "-o", str(exe), "-lm"]  # fmt: skip
    built = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    done = subprocess.run(
        [str(exe)], input=np.ascontiguousarray(digits, np.uint8).tobytes(), capture_output=True,
        check=False, timeout=120, env={"ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"},
    )  # fmt: skip
    report = done.stderr.decode(errors="replace")
    assert done.returncode == 0 and not report, report
    records = np.frombuffer(done.stdout, np.uint8).reshape(len(digits), RECORD)
    labels = records[:, :4].copy().view(np.int32).reshape(-1)
    probs = records[:, 4:].copy().view(np.float32)
    host_labels, host_probs, _ = answers
    assert np.array_equal(labels, host_labels)
    np.testing.assert_allclose(probs, host_probs, rtol=0, atol=1e-6)


def test_header_states_the_cortex_m4_measurement(library):
    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("arm-none-eabi-size") is None:
        pytest.skip(ARM_HINT)
    measured = measure_cortex_m4(library.folder)
    assert measured is not None
    stated = stated_memory(library.folder)
    assert stated.flash == measured.flash
    assert stated.static_ram == measured.static_ram
    assert stated.stack == measured.stack + LIBM_STACK
    header = (library.folder / "mnist.h").read_text()
    assert ("reentrant: yes" in header) == (measured.static_ram == 0)
    assert ("reentrant: no" in header) == (measured.static_ram != 0)
    budget = BUDGETS[library.precision]
    assert measured.flash <= budget.flash, f"{library.precision} flash {measured.flash} > {budget.flash}"  # fmt: skip
    ram = measured.static_ram + stated.stack
    assert ram <= budget.ram, f"{library.precision} RAM {ram} > {budget.ram}"


def _tampered_emit(model: Path, out_dir: Path, **kwargs) -> CLibrary:
    """emit_library, then class 0's dense bias raised so that the C disagrees with ONNX Runtime."""
    lib = emit_library(model, out_dir, **kwargs)
    source = out_dir / "mnist_model.c"
    text, n = re.subn(r"(dense_bias\[CLASSES\] = \{\s*)[^,]+,", r"\g<1>50.0f,", source.read_text(), count=1)  # fmt: skip
    assert n == 1
    source.write_text(text)
    return lib


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing"])
def test_export_refuses_a_library_that_disagrees(existing, digits, tmp_path, monkeypatch):
    monkeypatch.setattr(c_check, "emit_library", _tampered_emit)
    monkeypatch.setattr("mnist_edge.export.c.library.measure_cortex_m4", lambda folder: None)
    out = tmp_path / "c"
    if existing:
        (out / "fp32").mkdir(parents=True)
        (out / "fp32" / "mnist.h").write_text("/* an earlier library */\n")
        (out / "c.json").write_text("[]\n")
    before = _snapshot(out) if existing else None
    config = CConfig(data_dir=DATA_DIR, digit_limit=100, pictures_per_variant=2, precisions=("fp32",))  # fmt: skip
    with pytest.raises(CExportError) as caught:
        export_c(BUNDLED.root, out, config)
    assert any("fp32 labels differ" in f for f in caught.value.failures), caught.value.failures
    if existing:
        assert _snapshot(out) == before
        assert sorted(p.name for p in out.iterdir()) == ["c.json", "fp32"]
    else:
        assert not out.exists()


def test_unsupported_graph_is_one_line(tmp_path):
    model = onnx.load(str(BUNDLED.model("fp32")))
    node = next(n for n in model.graph.node if n.op_type in ("Reshape", "Flatten"))
    node.op_type = "Tanh"
    del node.input[1:]
    path = tmp_path / "tanh.onnx"
    onnx.save(model, str(path))
    with pytest.raises(NetworkError) as caught:
        emit_library(path, tmp_path / "out")
    message = str(caught.value)
    assert "Tanh" in message and "not supported" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_cli_writes_both_libraries(digits, tmp_path):
    from mnist_edge.export.cli import main

    for precision in PRECISIONS:
        for name in c_check.FILES[precision]:
            shutil.copyfile(BUNDLED.root / name, tmp_path / name)
    args = ["--c", "--out-dir", str(tmp_path), "--data-dir", str(DATA_DIR), "--test-limit", "50", "--pixels-images", "2"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for precision in PRECISIONS:
        assert (tmp_path / "c" / precision / "mnist.h").is_file()
        assert (tmp_path / "c" / precision / "mnist_model.c").is_file()
    assert (tmp_path / "c" / "c.json").is_file()
    assert f"wrote {tmp_path / 'c' / 'c.json'}" in result.output


def test_cli_missing_model_is_one_error_line(tmp_path):
    from mnist_edge.export.cli import main

    result = CliRunner().invoke(main, ["--c", "--out-dir", str(tmp_path), "--data-dir", str(DATA_DIR)])  # fmt: skip
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "mnist.onnx" in lines[0], result.output  # fmt: skip
    assert "Traceback" not in result.output
    assert not (tmp_path / "c").exists()
