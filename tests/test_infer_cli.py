"""The `mnist-infer` command: formats, modes, bad inputs, exit codes (CliRunner and a real subprocess)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.models import digit, expected_probabilities, linear_model
from PIL import Image

from mnist_edge.runtime.cli import main
from mnist_edge.runtime.idx import write_idx

PYTHON = sys.executable


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return linear_model(tmp_path_factory.mktemp("model") / "mnist.onnx")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six digits: plain PNGs, an inverted JPEG-free PNG, an RGB one and a BMP."""
    root = tmp_path_factory.mktemp("digits")
    for i in range(3):
        Image.fromarray(digit(i)).save(root / f"{i}.png")
    Image.fromarray(255 - digit(3)).save(root / "3-inverted.png")
    Image.fromarray(np.repeat(digit(4)[..., None], 3, axis=2)).save(root / "4-rgb.png")
    Image.fromarray(digit(5)).save(root / "5.bmp")
    return root


def _expected_label(image: np.ndarray) -> str:
    return str(int(expected_probabilities(image[None])[0].argmax()))


def _invoke(*args: str, stdin: str | None = None):
    return CliRunner().invoke(main, list(args), input=stdin, catch_exceptions=False)


def _jsonl(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_jsonl_labels_every_file_in_order(model, folder):
    result = _invoke(str(folder), "--model", str(model), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    rows = _jsonl(result.stdout)
    names = sorted(p.name for p in folder.iterdir())
    assert [Path(r["path"]).name for r in rows] == names
    seeds = {"0.png": 0, "1.png": 1, "2.png": 2, "3-inverted.png": 3, "4-rgb.png": 4, "5.bmp": 5}
    for row in rows:
        assert set(row) == {"path", "label", "confidence"}
        assert row["label"] == _expected_label(digit(seeds[Path(row["path"]).name]))
        assert 0 < row["confidence"] <= 1
    assert "6 images, 0 failed" in result.stderr and "provider cpu (auto)" in result.stderr


def test_top_k_in_jsonl_and_csv(model, folder):
    rows = _jsonl(
        _invoke(
            str(folder / "0.png"), "--model", str(model), "--format", "jsonl", "--top-k", "3"
        ).stdout
    )
    probs = expected_probabilities(digit(0)[None])[0]
    assert [t["label"] for t in rows[0]["top_k"]] == [str(int(j)) for j in np.argsort(-probs)[:3]]
    out = _invoke(
        str(folder / "0.png"), "--model", str(model), "--format", "csv", "--top-k", "2"
    ).stdout
    header, row = list(csv.reader(io.StringIO(out)))
    assert header == [
        "path",
        "label",
        "confidence",
        "label_1",
        "confidence_1",
        "label_2",
        "confidence_2",
        "error",
    ]
    assert row[1] == row[3] == str(int(probs.argmax()))


def test_table_and_csv_formats(model, folder):
    table = _invoke(str(folder / "1.png"), "--model", str(model)).stdout.splitlines()
    assert table[0].split() == ["path", "label", "confidence"]  # the csv/jsonl order
    path, label, conf = table[1].split()
    assert label == _expected_label(digit(1)) and path.endswith("1.png") and 0 < float(conf) <= 1
    rows = list(
        csv.DictReader(
            io.StringIO(_invoke(str(folder), "--model", str(model), "--format", "csv").stdout)
        )
    )
    assert len(rows) == 6 and all(r["error"] == "" for r in rows)


def test_output_file(model, folder, tmp_path):
    out = tmp_path / "results.jsonl"
    result = _invoke(str(folder), "--model", str(model), "--format", "jsonl", "-o", str(out))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert len(_jsonl(out.read_text())) == 6


def test_output_file_takes_its_format_from_the_extension(model, folder, tmp_path):
    for name in ("r.csv", "r.jsonl", "r.txt", "r.out"):
        result = _invoke(
            str(folder / "0.png"), "--model", str(model), "-q", "-o", str(tmp_path / name)
        )
        assert result.exit_code == 0, result.output
    assert (tmp_path / "r.csv").read_text().startswith("path,label,confidence,error\n")
    assert _jsonl((tmp_path / "r.jsonl").read_text())[0]["path"].endswith("0.png")
    for name in ("r.txt", "r.out"):  # no known extension: the table
        assert (tmp_path / name).read_text().split()[:3] == ["path", "label", "confidence"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--format", "csv", "-o", "r.jsonl"], ["--format", "does not match", "(jsonl)"]),
        (["-o", "r.json"], ["-o", "one JSON record per line", ".jsonl"]),
        (["-o", "r.parquet"], ["-o", "names a parquet file", "--engine ray", "--format"]),
        (["--format", "parquet", "-o", "r.out"], ["--format", "--engine ray only"]),
        (["--format", "parquet", "-o", "-"], ["--format", "--engine ray only"]),
    ],
    ids=["mismatch", "json", "parquet-suffix", "parquet-format", "parquet-stdout"],
)
def test_output_format_conflicts_exit_2(model, folder, tmp_path, args, words):
    args = [a if not a.startswith("r.") else str(tmp_path / a) for a in args]
    result = CliRunner().invoke(main, [str(folder / "0.png"), "--model", str(model), *args])
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output
    assert list(tmp_path.iterdir()) == []


def test_output_dash_is_stdout(model, folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke(str(folder / "0.png"), "--model", str(model), "-o", "-", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.split()[:3] == ["path", "label", "confidence"]
    assert list(tmp_path.iterdir()) == []  # no file named -


def test_top_k_zero_means_none(model, folder):
    result = _invoke(
        str(folder / "0.png"), "--model", str(model), "--format", "jsonl", "--top-k", "0"
    )
    assert result.exit_code == 0 and set(_jsonl(result.stdout)[0]) == {
        "path",
        "label",
        "confidence",
    }


def test_max_pixels_refuses_each_big_picture_and_raising_it_lets_them_through(model, tmp_path):
    Image.fromarray(digit(2)).resize((100, 100)).save(tmp_path / "big.png")  # 10,000 pixels
    Image.fromarray(digit(1)).save(tmp_path / "small.png")  # 784 pixels
    args = [str(tmp_path), "--model", str(model), "--format", "jsonl"]
    refused = _invoke(*args, "--max-pixels", "9999")
    assert refused.exit_code == 1
    big, small = _jsonl(refused.stdout)
    assert big["error"] == (
        "picture is 100x100 = 10,000 pixels, over the limit of 9,999 pixels "
        "(possible decompression bomb; max_pixels raises the limit)"
    )
    assert "label" in small
    raised = _invoke(*args, "--max-pixels", "10000")
    assert raised.exit_code == 0 and all("label" in r for r in _jsonl(raised.stdout))


def test_summary_of_a_run_that_classified_nothing(model, tmp_path):
    result = _invoke(str(tmp_path / "missing.png"), "--model", str(model))
    assert result.exit_code == 1
    assert "1 image, 1 failed (" in result.stderr and "images/s" not in result.stderr
    assert f"model {model} (fp32)" in result.stderr


@pytest.mark.parametrize(
    ("invert", "expect_seed_image"),
    [("auto", lambda d: d), ("never", lambda d: 255 - d), ("always", lambda d: d)],
    ids=["auto", "never", "always"],
)
def test_invert_option(model, tmp_path, invert, expect_seed_image):
    Image.fromarray(255 - digit(7)).save(tmp_path / "dark-on-light.png")
    rows = _jsonl(
        _invoke(
            str(tmp_path), "--model", str(model), "--format", "jsonl", "--invert", invert
        ).stdout
    )
    assert rows[0]["label"] == _expected_label(expect_seed_image(digit(7)))


def _bad_inputs(root: Path) -> dict[str, str]:
    """name -> words its error must contain."""
    good = root / "good.png"
    Image.fromarray(digit(0)).save(good)
    (root / "zero.png").write_bytes(b"")
    (root / "text.png").write_text("not an image\n")
    (root / "truncated.png").write_bytes(good.read_bytes()[:60])
    big = root / "bomb.png"
    Image.new("1", (100, 100)).save(big)
    raw = bytearray(big.read_bytes())
    raw[16:24] = (40000).to_bytes(4, "big") * 2  # IHDR claims 40000x40000
    big.write_bytes(bytes(raw))
    os.symlink(root / "nowhere.png", root / "broken.png")
    os.symlink(root / "loop.png", root / "loop.png")
    unreadable = root / "unreadable.png"
    unreadable.write_bytes(good.read_bytes())
    unreadable.chmod(0)
    (root / "emptydir").mkdir()
    return {
        "zero.png": "empty file",
        "text.png": "not an image",
        "truncated.png": "",
        "bomb.png": "",
        "broken.png": "broken symlink",
        "loop.png": "symlink loop",
        "unreadable.png": "" if os.geteuid() == 0 else "denied",
        "emptydir": "empty directory",
        "missing.png": "no such file",
    }


def test_every_bad_input_gets_its_own_error_and_exit_1(model, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    expect = _bad_inputs(root)
    names = ["good.png", *expect]
    args = [str(root / n) for n in names]
    result = _invoke(*args, "--model", str(model), "--format", "jsonl")
    assert result.exit_code == 1
    rows = _jsonl(result.stdout)
    assert [Path(r["path"]).name for r in rows] == names  # each input exactly once, in order
    assert "label" in rows[0]
    for row in rows[1:]:
        name = Path(row["path"]).name
        if name == "unreadable.png" and os.geteuid() == 0:
            continue  # root reads mode-0 files
        assert set(row) == {"path", "error"}, row
        assert expect[name] in row["error"]
    assert f"{len(names)} images" in result.stderr


def test_paths_from_stdin(model, folder):
    paths = f"{folder / '2.png'}\n{folder / '0.png'}\n"
    rows = _jsonl(_invoke("-", "--model", str(model), "--format", "jsonl", stdin=paths).stdout)
    assert [Path(r["path"]).name for r in rows] == ["2.png", "0.png"]


def test_npy_and_idx_inputs(model, tmp_path):
    stack = np.stack([digit(i) for i in range(4)])
    np.save(tmp_path / "d.npy", stack)
    write_idx(tmp_path / "d-images-idx3-ubyte", stack)
    rows = _jsonl(_invoke(str(tmp_path), "--model", str(model), "--format", "jsonl").stdout)
    assert [r["path"].split(os.sep)[-1] for r in rows] == [
        f"d-images-idx3-ubyte[{i}]" for i in range(4)
    ] + [f"d.npy[{i}]" for i in range(4)]
    assert [r["label"] for r in rows[:4]] == [_expected_label(d) for d in stack]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--provider", "cuda"], ["--provider", "not available", "[gpu]"]),
        (["--provider", "warp-drive"], ["unknown provider"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--format", "xml"], ["--format"]),
        (["--top-k", "11"], ["--top-k", "0 (none) to 10 (the model's classes), not 11"]),
    ],
    ids=["cuda-missing", "unknown-provider", "batch-size", "format", "top-k"],
)
def test_usage_errors_exit_2(model, folder, args, words):
    result = CliRunner().invoke(main, [str(folder), "--model", str(model), *args])
    assert result.exit_code == 2
    for word in words:
        assert word in result.output


def test_no_inputs_is_a_usage_error():
    assert CliRunner().invoke(main, []).exit_code == 2


def test_missing_and_corrupt_model(tmp_path, folder):
    result = CliRunner().invoke(main, [str(folder), "--model", str(tmp_path / "none.onnx")])
    assert result.exit_code == 2 and "--model picks another file" in result.output
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage" * 10)
    result = CliRunner().invoke(main, [str(folder), "--model", str(bad)])
    assert result.exit_code == 2 and "not a valid ONNX model" in result.output


def test_int8_flag_picks_the_int8_file_beside_the_model(tmp_path, folder):
    fp32 = linear_model(tmp_path / "m.onnx")
    result = CliRunner().invoke(main, [str(folder / "0.png"), "--model", str(fp32), "--int8"])
    assert result.exit_code == 2 and "m.int8.onnx" in result.output
    int8 = linear_model(tmp_path / "m.int8.onnx")
    assert _invoke(str(folder / "0.png"), "--model", str(fp32), "--int8").exit_code == 0
    # An int8 file named with --int8 is that file (not m.int8.int8.onnx).
    named = _invoke(str(folder / "0.png"), "--model", str(int8), "--int8")
    assert named.exit_code == 0, named.output
    assert f"model {int8} (" in named.stderr


def test_model_without_metadata_warns_once(tmp_path, folder):
    path = linear_model(tmp_path / "foreign.onnx", metadata=None)
    result = _invoke(str(folder / "0.png"), "--model", str(path))
    assert result.exit_code == 0
    assert result.stderr.count("no mnist-edge metadata") == 1


def test_real_subprocess_never_imports_torch(model, folder, tmp_path):
    """The installed entry point, run for real: results on stdout, summary on stderr, no torch."""
    code = (
        "import sys; from mnist_edge.runtime.cli import main\n"
        "try:\n    main()\nfinally:\n"
        "    sys.stderr.write('TORCH=%s\\n' % ('torch' in sys.modules))\n"
    )
    args = [
        PYTHON,
        "-c",
        code,
        str(folder),
        "--model",
        str(model),
        "--format",
        "jsonl",
        "--workers",
        "2",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(_jsonl(proc.stdout)) == 6
    assert "TORCH=False" in proc.stderr
    assert "6 images, 0 failed" in proc.stderr


def test_cli_and_pipeline_import_no_heavy_module():
    """mnist-infer starts its workers before numpy, pillow or ONNX Runtime load here."""
    code = (
        "import sys; import mnist_edge.runtime.cli, mnist_edge.runtime.stream\n"
        "print(sorted(m for m in ('numpy', 'PIL', 'onnxruntime') if m in sys.modules))\n"
    )
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_invert_choices_are_the_library_modes():
    from mnist_edge.runtime import cli, images
    from mnist_edge.runtime.serve import cli as serve_cli

    for command in (cli.main, serve_cli.main):
        (invert,) = [p for p in command.params if p.name == "invert"]
        assert tuple(invert.type.choices) == images.INVERT_MODES


def test_console_script_exit_codes(model, folder, tmp_path):
    script = Path(PYTHON).with_name("mnist-infer")
    ok = subprocess.run(
        [script, str(folder), "--model", str(model)], capture_output=True, timeout=120
    )
    assert ok.returncode == 0
    bad = subprocess.run(
        [script, str(tmp_path / "none.png"), "--model", str(model)],
        capture_output=True,
        timeout=120,
    )
    assert bad.returncode == 1
    usage = subprocess.run(
        [script, "--provider", "cuda", str(folder), "--model", str(model)],
        capture_output=True,
        timeout=120,
    )
    assert usage.returncode == 2


def test_progress_goes_to_stderr_only_when_asked(model, folder):
    shown = _invoke(str(folder), "--model", str(model), "--format", "jsonl", "--progress")
    assert "\r" in shown.stderr and "images" in shown.stderr
    assert "\r" not in shown.stdout and len(_jsonl(shown.stdout)) == 6
    hidden = _invoke(str(folder), "--model", str(model))  # CliRunner's stderr is not a terminal
    assert "\r" not in hidden.stderr
