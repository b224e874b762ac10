"""The C library on QEMU's Cortex-M boards (firmware/, mnist_edge.tools.firmware*).

For each precision (the bundled fp32 and int8 files) and board (mps2-an386 Cortex-M4F,
mps2-an500 Cortex-M7), the example firmware classifies 100 test digits and two frames: its
labels must equal the same library's compiled on the host, the library must fit the Cortex-M4
budget, and ``mnist.h`` must state what the board measures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mnist_edge.runtime.layout import BUNDLED, PRECISIONS
from mnist_edge.tools.firmware import BUDGETS, Measurement, measure, stated_memory
from mnist_edge.tools.firmware_build import (
    BOARDS,
    CROSS_PACKAGES,
    Classified,
    Pictures,
    classify_on_host,
    make_pictures,
    missing_tools,
)

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"
DIGITS = 100
MISSING = missing_tools()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING), reason=f"needs {', '.join(MISSING)}: apt-get install {CROSS_PACKAGES}"
    ),
]


@pytest.fixture(scope="module")
def digits(mnist) -> tuple[Pictures, np.ndarray]:
    """The first test digits, two frames made of them, and the digits' true labels."""
    from mnist_edge.tools.samples import load_test_set

    images, labels = load_test_set(DATA_DIR)  # `mnist` prepared data/
    return make_pictures(images, DIGITS), labels[:DIGITS]


@pytest.fixture(scope="module", params=PRECISIONS)
def library(request, digits, tmp_path_factory) -> tuple[str, Path, Classified]:
    """A C library emitted from a bundled file, and its answers on the host."""
    pytest.importorskip("onnx")
    from mnist_edge.export.c import emit_library

    precision = request.param
    out = tmp_path_factory.mktemp(f"c-{precision}")
    folder = emit_library(BUNDLED.model(precision), out / "library").folder
    return precision, folder, classify_on_host(folder, digits[0], out / "host")


@pytest.fixture(scope="module", params=list(BOARDS))
def measured(request, library, digits, tmp_path_factory) -> tuple[str, Path, Measurement]:
    precision, folder, host = library
    build = tmp_path_factory.mktemp(f"fw-{precision}-{request.param}")
    return precision, folder, measure(folder, digits[0], request.param, build, REPO / "firmware", host=host)  # fmt: skip


def test_board_labels_equal_host_library(measured, digits):
    _, _, m = measured
    pictures, truth = digits
    run = m.run
    assert len(run.classified.digit_labels) == DIGITS
    assert np.array_equal(run.classified.digit_labels, m.host.digit_labels)
    assert np.array_equal(run.classified.frame_labels, m.host.frame_labels)
    assert (run.digits_agreed, run.frames_agreed) == (DIGITS, len(pictures.frames))
    assert m.max_probability_diff <= 1e-5
    # Real answers, not merely equal ones: the test digits are recognised, and each frame's
    # digit is found where the frame hides it (off-centre; light and enlarged).
    assert (run.classified.digit_labels == truth).mean() >= 0.95
    assert list(run.classified.frame_labels) == [truth[0], truth[1]]
    assert (run.digit_ticks > 0).all() and (run.frame_ticks > 0).all()


def test_library_fits_cortex_m4_budget(measured):
    precision, _, m = measured
    budget = BUDGETS[precision]
    assert m.size.flash <= budget.flash, f"{precision} flash {m.size.flash} > {budget.flash} bytes"
    assert m.ram <= budget.ram, f"{precision} RAM {m.ram} > {budget.ram} bytes"


def test_header_states_what_the_board_measures(measured):
    _, folder, m = measured
    stated = stated_memory(folder)
    peak = max(m.run.stack_classify, m.run.stack_frame)
    assert stated.static_ram == m.size.static_ram
    # The stated stack is a bound: at least the painted peak, and not so loose as to mislead.
    assert peak <= stated.stack <= 2 * peak, (peak, stated.stack)
    # Flash is stated for the Cortex-M4 flags; the M7's code differs by a few bytes.
    objects = m.size.text + m.size.data
    assert abs(objects - stated.flash) <= 0.02 * stated.flash, (objects, stated.flash)
    if m.board.core == "Cortex-M4F":
        assert objects <= stated.flash


EMX_CGEN = Path(os.environ.get("MNIST_EDGE_EMX_CGEN", REPO / ".venv-emx" / "bin" / "emx-onnx-cgen"))


@pytest.mark.skipif(not EMX_CGEN.is_file(), reason=f"no {EMX_CGEN} (make venv-emx)")
def test_emx_library_gives_our_labels_on_the_board(digits, tmp_path):
    """emx-onnx-cgen's fp32 library behind the adapter (firmware/emx/): the same labels as ours
    on the host, and the board reproduces them with the stack it needs."""
    pytest.importorskip("onnx")
    from mnist_edge.export.c import emit_library
    from mnist_edge.tools.firmware_emx import EMX_STACK, classify_emx_on_host, emx_library

    pictures = make_pictures(digits[0].digits, 10)
    model = BUNDLED.model("fp32")
    folder = emx_library(model, tmp_path / "emx", EMX_CGEN, REPO / "firmware")
    emx = classify_emx_on_host(folder, pictures, tmp_path / "emx-host")
    ours = classify_on_host(emit_library(model, tmp_path / "ours").folder, pictures, tmp_path / "h")
    assert np.array_equal(emx.digit_labels, ours.digit_labels)
    assert np.array_equal(emx.frame_labels, ours.frame_labels)
    assert np.abs(emx.digit_probabilities - ours.digit_probabilities).max() <= 1e-4
    m = measure(folder, pictures, "mps2-an386", tmp_path / "fw", REPO / "firmware",
                host=emx, stack_size=EMX_STACK)  # fmt: skip
    assert m.labels_agree and m.max_probability_diff <= 1e-5
    assert m.ram > BUDGETS["fp32"].ram  # why it is a cross-check and not the shipped path
