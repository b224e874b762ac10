"""Report files: metrics.json, valid PNGs, report.md with the key numbers, marked sections."""

from __future__ import annotations

import json

import pytest

from mnist_edge.train.report import training_markdown, upsert_section, write_outputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(val: bool = True) -> dict:
    history = [
        {
            "epoch": e,
            "loss": 1.0 / e,
            "accuracy": 0.9 + e / 100,
            "seconds": 2.5,
            "val_loss": 0.5 / e if val else None,
            "val_accuracy": 0.95 + e / 100 if val else None,
        }
        for e in (1, 2, 3)
    ]
    return {
        "dataset": {
            "name": "mnist",
            "classes": [str(i) for i in range(10)],
            "train_size": 540,
            "val_size": 60,
            "test_size": 100,
        },
        "device": "cpu",
        "parameters": 34_826,
        "recipe": {"lr": 1e-3, "batch_size": 128, "val_split": 0.1, "seed": 42},
        "history": history,
        "test_loss": 0.0321,
        "test_accuracy": 0.9876,
        "seconds_per_epoch": 2.5,
        "seconds_total": 7.5,
        "confusion_matrix": [
            [10 if i == j else (1 if j == (i + 1) % 10 else 0) for j in range(10)]
            for i in range(10)
        ],
    }


@pytest.mark.parametrize("val", [True, False], ids=["with-val", "no-val"])
def test_write_outputs_makes_all_files(tmp_path, val):
    metrics = _metrics(val)
    paths = write_outputs(tmp_path, metrics)
    assert json.loads(paths.metrics.read_text()) == metrics
    for png in (paths.curves, paths.confusion):
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size > 5_000
    text = paths.report.read_text()
    assert "0.9876" in text and "34,826" in text
    assert "(training.png)" in text and "(confusion.png)" in text
    assert ("0.9800 (epoch 3)" in text) == val
    assert not list(tmp_path.glob(".*.tmp")), "atomic writes leave no temp files"


def test_markdown_has_one_row_per_epoch():
    rows = [
        ln
        for ln in training_markdown(_metrics()).splitlines()
        if ln.startswith("| ") and ln[2].isdigit()
    ]
    assert len(rows) == 3


def test_upsert_section_appends_then_replaces(tmp_path):
    report = tmp_path / "report.md"
    report.write_text(training_markdown(_metrics()))
    upsert_section(report, "export", "## Export\n\nfirst")
    upsert_section(report, "export", "## Export\n\nsecond")
    text = report.read_text()
    assert text.count("<!-- export:begin -->") == 1 and "second" in text and "first" not in text
    assert text.index("<!-- training:end -->") < text.index("<!-- export:begin -->")
    assert "Test accuracy" in text


def test_upsert_section_creates_missing_file(tmp_path):
    report = tmp_path / "report.md"
    upsert_section(report, "export", "body")
    assert report.read_text() == "<!-- export:begin -->\nbody\n<!-- export:end -->\n"
