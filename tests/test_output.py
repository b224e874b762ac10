"""Result writers and the run summary (runtime/output.py): one column order, honest numbers."""

from __future__ import annotations

import csv
import io
import json

import pytest

from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.messages import Result
from mnist_edge.runtime.output import (
    ResultWriter,
    RunStats,
    confidence_text,
    output_format,
    plural,
)


@pytest.mark.parametrize(
    ("p", "digits", "text"),
    [
        (0.99998, 4, "0.9999"),
        (0.99995, 4, "0.9999"),
        (0.9999996, 6, "0.999999"),
        (1.0, 4, "1.0000"),
        (0.12346, 4, "0.1235"),  # rounding elsewhere stays rounding
        (0.0, 4, "0.0000"),
    ],
)
def test_confidence_never_rounds_up_to_one(p, digits, text) -> None:
    assert confidence_text(p, digits) == text


@pytest.mark.parametrize(
    ("fmt", "output", "want"),
    [
        (None, None, "table"),
        (None, "r.csv", "csv"),
        (None, "R.JSONL", "jsonl"),
        (None, "r.ndjson", "jsonl"),
        (None, "r.txt", "table"),
        (None, "results", "table"),
        (None, "r.parquet", "parquet"),
        ("csv", "r.csv", "csv"),
        ("jsonl", "r.log", "jsonl"),
        ("csv", None, "csv"),
    ],
)
def test_output_format_from_the_extension(fmt, output, want) -> None:
    assert output_format(fmt, output) == want


def test_output_format_refuses_a_mismatch_and_json() -> None:
    with pytest.raises(ConfigError, match=r"format csv does not match r\.jsonl") as info:
        output_format("csv", "r.jsonl")
    assert info.value.field == "fmt"
    with pytest.raises(ConfigError, match="one JSON record per line") as info:
        output_format(None, "r.json")
    assert info.value.field == "output"


RESULTS = [
    Result("a/0.png", label="7", confidence=0.99998, top_k=(("7", 0.99998), ("1", 0.00002))),
    Result("a/much-longer-name.png", error="not an image"),
]


def _written(fmt: str, top_k: int = 2) -> str:
    stream = io.StringIO()
    writer = ResultWriter(stream, fmt, top_k)
    for result in RESULTS:
        writer.write(result)
    return stream.getvalue()


def test_every_format_has_path_label_confidence_first() -> None:
    table = _written("table").splitlines()
    assert table[0].split() == ["path", "label", "confidence", "top-k"]
    assert table[1].split() == ["a/0.png", "7", "0.9999", "7:0.9999", "1:0.0000"]
    assert table[2].split()[:3] == ["a/much-longer-name.png", "ERROR", "-"]
    assert table[2].endswith("not an image")
    rows = list(csv.reader(io.StringIO(_written("csv"))))
    assert rows[0][:3] == ["path", "label", "confidence"]
    assert rows[1][:5] == ["a/0.png", "7", "0.999980", "7", "0.999980"]
    assert rows[2] == ["a/much-longer-name.png", "", "", "", "", "", "", "not an image"]
    records = [json.loads(line) for line in _written("jsonl").splitlines()]
    assert list(records[0])[:3] == ["path", "label", "confidence"]
    assert records[1] == {"path": "a/much-longer-name.png", "error": "not an image"}


def test_table_column_is_as_wide_as_the_first_path() -> None:
    table = _written("table", top_k=0).splitlines()
    assert table[0].index("label") == table[1].index("7") == len("a/0.png") + 2


def test_plurals() -> None:
    assert [plural(n, "image") for n in (0, 1, 2, 1024)] == [
        "0 images",
        "1 image",
        "2 images",
        "1,024 images",
    ]


def test_summary_has_no_rate_when_nothing_was_classified() -> None:
    stats = RunStats()
    stats.add(RESULTS[1])
    line = stats.summary("cpu", "m.onnx (fp32)")
    assert line.startswith("1 image, 1 failed (") and "images/s" not in line
    assert line.endswith("provider cpu, model m.onnx (fp32)")
    stats.add(RESULTS[0])
    assert stats.summary("cpu", "m").startswith(
        "2 images, 1 failed, "
    ) and "images/s (" in stats.summary("cpu", "m")


def test_run_time_stops_with_the_work_and_leaves_start_up_out() -> None:
    stats = RunStats(started=100.0)
    stats.add(RESULTS[0])
    stats.leave_out(2.0)  # start-up inside the run
    stats.ended = 103.0  # as stop() sets it
    assert stats.seconds == 1.0 and stats.rate == 1.0
    stats = RunStats()
    stats.stop()
    stopped = stats.seconds
    assert stats.seconds == stopped  # a stopped clock stays put
