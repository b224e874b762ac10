"""Result writers and the run summary (runtime/output.py): one column order, honest numbers."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from mnist_edge.runtime.errors import ConfigError, OutputPathError
from mnist_edge.runtime.messages import Result
from mnist_edge.runtime.output import (
    ResultWriter,
    RunStats,
    check_output_file,
    check_streams,
    confidence_text,
    open_text_output,
    output_format,
    plural,
    to_stdout,
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


def test_dash_is_stdout(tmp_path, monkeypatch, capsys) -> None:
    assert to_stdout(None) and to_stdout("-") and not to_stdout("r.csv")
    monkeypatch.chdir(tmp_path)
    with open_text_output("-") as stream:
        stream.write("on stdout\n")
    assert capsys.readouterr().out == "on stdout\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("output", [None, "-"], ids=["none", "dash"])
def test_only_streaming_formats_go_to_stdout(output) -> None:
    for fmt in ("table", "csv", "jsonl"):
        check_streams(fmt, output)
    check_streams("parquet", "out/")
    with pytest.raises(ConfigError, match="parquet cannot go to standard output") as info:
        check_streams("parquet", output)
    assert info.value.field == "fmt" and "table, csv, jsonl" in str(info.value)


def test_an_output_file_that_can_be_written_passes_and_leaves_nothing(tmp_path) -> None:
    check_output_file(tmp_path / "r.csv")
    (tmp_path / "old.csv").write_text("kept")
    check_output_file(tmp_path / "old.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["old.csv"]
    assert (tmp_path / "old.csv").read_text() == "kept"
    check_output_file("/dev/null")  # a device is written in place


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("missing/r.csv", "the folder {tmp}/missing does not exist; create it first"),
        ("plain.txt/r.csv", "{tmp}/plain.txt is a file, not a folder"),
        ("", "{tmp}/ is a folder; name a file"),
        ("/proc/r.csv", "no file can be made in /proc"),
    ],
    ids=["no-folder", "file-as-folder", "a-folder", "proc"],
)
def test_an_output_file_that_cannot_be_written_is_refused(tmp_path, where, words) -> None:
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(OutputPathError) as info:
        check_output_file(where if where.startswith("/") else f"{tmp_path}/{where}")
    assert words.format(tmp=tmp_path) in str(info.value)
    assert info.value.field == "output" and info.value.exit_code == 2


def test_a_folder_without_write_permission_is_refused(tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere
            pytest.skip("running as root: permissions do not stop writes")
        with pytest.raises(OutputPathError, match=r"no file can be made in .*Permission denied"):
            check_output_file(locked / "r.csv")
    finally:
        locked.chmod(0o700)


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
