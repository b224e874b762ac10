"""Bad input to the console commands: one ``Error:`` line, no traceback, exit 2 or 1.

:data:`CASES` is one table for every command: ``(command, args, exit code, words)``.
A row whose exit code is 2 (usage) or 1 (the run failed as a whole) must print
exactly one ``Error:`` line holding every word; a row marked ``per_input`` is a
run whose inputs each failed: exit 1, no ``Error:`` line, each input's reason
among the results. Placeholders in ``args`` are filled per test: ``{model}``
(a small valid model), ``{tmp}`` (an empty folder), ``{picture}`` (a good
picture), ``{file}`` (a plain file), ``{text_dir}`` (a folder of files that are
not pictures), ``{empty_dir}`` (an empty folder), ``{busy_port}`` (a port already
taken, so a serve row whose option were wrongly accepted fails instead of serving).

Commands run in this process through click's ``CliRunner`` (every row here fails
before any server, cluster or worker starts). To add a command, add it to
:data:`COMMANDS` (imported only when one of its rows runs) and its rows to
:data:`CASES`.

The last tests check that ``top_k`` and the pixel limit are refused with one
message by the CLI, the Python API and the server.
"""

from __future__ import annotations

import importlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.models import digit, linear_model
from PIL import Image

COMMANDS = {
    "mnist-infer": "mnist_edge.runtime.cli:main",
    "mnist-serve": "mnist_edge.runtime.serve.cli:main",
}
"""Command name -> ``module:attribute`` of its click command."""


@dataclass(frozen=True)
class Case:
    """One bad command line and how it must end."""

    command: str
    args: tuple[str, ...]
    exit_code: int
    words: tuple[str, ...]
    per_input: bool = False  # every input failed on its own: no Error: line

    @property
    def id(self) -> str:
        return f"{self.command} {' '.join(self.args)}"


def case(command: str, args: str, exit_code: int, *words: str, per_input: bool = False) -> Case:
    return Case(command, tuple(args.split()), exit_code, words, per_input)


INFER = "mnist-infer"
SERVE = "mnist-serve"
TOP_K_RANGE = "top_k must be 0 (none) to 10 (the model's classes)"
MAX_BATCH_RANGE = "1<=x<=8192"  # BatchConfig.max_queue_rows: the rows that may wait
# mnist-serve rows end in {busy_port}: see the module's docstring.
ON_BUSY_PORT = "--host 127.0.0.1 --port {busy_port} --no-grpc"

CASES = [
    # the model
    case(INFER, "{picture} --model {tmp}/none.onnx", 2, "--model", "not found"),
    case(INFER, "{picture} --model {file}", 2, "--model", "not a valid ONNX model"),
    case(INFER, "{picture} --model {tmp}", 2, "--model", "directory"),
    case(INFER, "{picture} --model {model} --int8", 2, "--model", "mnist.int8.onnx"),
    case(INFER, "{picture} --model {file} --int8", 2, "--model", "does not end in .onnx or .ort"),
    case(INFER, "{picture} --model {model} --provider warp-drive", 2, "--provider", "unknown"),
    case(INFER, "{picture} --model {model} --provider cuda", 2, "--provider", "not available"),
    # where the results go
    case(INFER, "{picture} --model {model} -o {tmp}/missing/x.csv", 2, "-o", "does not exist"),
    case(INFER, "{picture} --model {model} -o {file}/x.csv", 2, "-o", "is a file, not a folder"),
    case(INFER, "{picture} --model {model} -o /proc/x.csv", 2, "-o", "/proc"),
    case(INFER, "{picture} --model {model} -o {tmp}", 2, "-o", "is a folder"),
    case(INFER, "{picture} --model {model} -o {tmp}/r.json", 2, "-o", ".jsonl"),
    case(INFER, "{picture} --model {model} -o {tmp}/r.parquet", 2, "-o", "--engine ray"),
    case(INFER, "{picture} --model {model} --format xml", 2, "--format", "xml"),
    case(INFER, "{picture} --model {model} --format parquet -o -", 2, "--format", "--engine ray"),
    case(INFER, "{picture} --model {model} --format csv -o {tmp}/r.jsonl", 2, "--format"),
    # option values
    case(INFER, "{picture} --model {model} --top-k 11", 2, "--top-k", TOP_K_RANGE),
    case(INFER, "{picture} --model {model} --top-k -1", 2, "--top-k", TOP_K_RANGE),
    case(INFER, "{picture} --model {model} --top-k three", 2, "--top-k", "not a valid integer"),
    case(INFER, "{picture} --model {model} --max-pixels 0", 2, "--max-pixels", ">= 1"),
    case(INFER, "{picture} --model {model} --max-pixels 1e6", 2, "--max-pixels", "integer"),
    case(INFER, "{picture} --model {model} --batch-size 0", 2, "--batch-size"),
    case(INFER, "{picture} --model {model} --workers -1", 2, "--workers"),
    case(INFER, "{picture} --model {model} --invert sometimes", 2, "--invert"),
    case(INFER, "", 2, "Missing argument"),
    # inputs that fail one by one
    case(INFER, "{text_dir} --model {model}", 1, "not an image", per_input=True),
    case(INFER, "{empty_dir} --model {model}", 1, "empty directory", per_input=True),
    case(INFER, "{tmp}/none.png --model {model}", 1, "no such file", per_input=True),
    # mnist-serve: each fails before it would bind
    case(SERVE, f"--max-batch 10000 {ON_BUSY_PORT}", 2, "--max-batch", MAX_BATCH_RANGE),
    case(SERVE, f"--max-batch 0 {ON_BUSY_PORT}", 2, "--max-batch", MAX_BATCH_RANGE),
    case(SERVE, f"--max-pixels 0 {ON_BUSY_PORT}", 2, "--max-pixels", ">= 1"),
    case(SERVE, f"--model {{tmp}}/none.onnx {ON_BUSY_PORT}", 2, "--model", "not found"),
    case(SERVE, f"--model {{model}} --int8 {ON_BUSY_PORT}", 2, "--model", "mnist.int8.onnx"),
    case(SERVE, f"--model {{model}} --provider warp-drive {ON_BUSY_PORT}", 2, "--provider"),
    case(SERVE, f"--model {{model}} --invert sometimes {ON_BUSY_PORT}", 2, "--invert"),
    case(SERVE, f"--model {{model}} --max-body-mb 0 {ON_BUSY_PORT}", 2, "--max-body-mb"),
    case(SERVE, "--model {model} --port 70000", 2, "--port"),
    case(
        SERVE, "--model {model} --host 127.0.0.1 --port {busy_port}", 2, "--port", "cannot listen"
    ),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("bad-input")
    model = linear_model(root / "mnist.onnx")
    picture = root / "digit.png"
    Image.fromarray(digit(1)).save(picture)
    plain = root / "plain.txt"
    plain.write_text("not a model, not a folder\n")
    text_dir = root / "text"
    text_dir.mkdir()
    for name in ("a.png", "b.jpg"):
        (text_dir / name).write_text("not a picture\n")
    (root / "empty").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield {
            "model": str(model),
            "picture": str(picture),
            "file": str(plain),
            "text_dir": str(text_dir),
            "empty_dir": str(root / "empty"),
            "busy_port": str(busy.getsockname()[1]),
        }


def _command(name: str):
    module, attribute = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


@pytest.mark.parametrize("row", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line(row: Case, places: dict[str, str], tmp_path: Path) -> None:
    args = [a.format(**places, tmp=tmp_path) for a in row.args]
    result = CliRunner().invoke(_command(row.command), args)
    output = result.output
    assert result.exit_code == row.exit_code, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    if row.per_input:
        assert errors == [], output
        assert all(word in result.stdout for word in row.words), output
    else:
        assert len(errors) == 1, output
        assert all(word in errors[0] for word in row.words), output
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written where it was refused


def test_max_batch_is_refused_in_the_options_words(places: dict[str, str]) -> None:
    args = ["--max-batch", "10000", *ON_BUSY_PORT.format(busy_port=places["busy_port"]).split()]
    result = CliRunner().invoke(_command(SERVE), args)
    assert result.exit_code == 2 and "max_queue_rows" not in result.output  # no such option


# ---------------------------------------------------------------- one refusal everywhere

PICTURE = (100, 80)  # width x height: 8,000 pixels, over the small limit below
LIMIT = 7_999
OVER_LIMIT = (
    "picture is 100x80 = 8,000 pixels, over the limit of 7,999 pixels "
    "(possible decompression bomb; max_pixels raises the limit)"
)


@pytest.fixture(scope="module")
def big_picture(places: dict[str, str]) -> Path:
    path = Path(places["file"]).with_name("big.png")
    Image.fromarray(np.asarray(Image.fromarray(digit(4)).resize(PICTURE))).save(path)
    return path


@pytest.fixture(scope="module")
def server(places: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    from helpers.serve_process import serving

    log = tmp_path_factory.mktemp("bad-input-serve")
    with serving(Path(places["model"]), log, "--no-grpc", "--max-pixels", str(LIMIT)) as proc:
        yield proc


def _classify(server, picture: Path, query: str = "") -> tuple[int, dict]:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{picture.name}"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + picture.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    conn = server.connection()
    try:
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        conn.request("POST", f"/v1/classify{query}", body, headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_one_pixel_limit_message_in_cli_api_and_server(places, big_picture, server) -> None:
    from mnist_edge.runtime import classify
    from mnist_edge.runtime.cli import main

    cli = CliRunner().invoke(
        main,
        [
            str(big_picture),
            "--model",
            places["model"],
            "--format",
            "jsonl",
            "--max-pixels",
            str(LIMIT),
        ],
    )
    assert cli.exit_code == 1
    assert json.loads(cli.stdout)["error"] == OVER_LIMIT
    (record,) = classify(big_picture, model=places["model"], max_pixels=LIMIT)
    assert record["error"] == OVER_LIMIT
    status, answer = _classify(server, big_picture)
    assert status == 422 and answer["results"][0]["error"] == OVER_LIMIT
    # Raised by one pixel, it goes through everywhere.
    assert classify(big_picture, model=places["model"], max_pixels=LIMIT + 1)[0]["label"]
    raised = CliRunner().invoke(
        main, [str(big_picture), "--model", places["model"], "--max-pixels", str(LIMIT + 1)]
    )
    assert raised.exit_code == 0, raised.output
    status, answer = _classify(server, Path(places["picture"]))  # 28x28: under the limit
    assert status == 200 and answer["results"][0]["label"]


@pytest.mark.parametrize("top_k", [11, -1], ids=["over", "negative"])
def test_one_top_k_refusal_in_cli_api_and_server(places, server, top_k: int) -> None:
    from mnist_edge.runtime import classify
    from mnist_edge.runtime.cli import main
    from mnist_edge.runtime.errors import ConfigError
    from mnist_edge.runtime.stream import Pipeline, PipelineConfig

    message = f"{TOP_K_RANGE}, not {top_k}"
    cli = CliRunner().invoke(
        main, [places["picture"], "--model", places["model"], "--top-k", str(top_k)]
    )
    assert cli.exit_code == 2 and message in cli.output
    with pytest.raises(ConfigError) as info:
        classify(places["picture"], model=places["model"], top_k=top_k)
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:
        Pipeline(places["model"], [places["picture"]], PipelineConfig(top_k=top_k, workers=0))
    assert str(info.value) == message
    status, answer = _classify(server, Path(places["picture"]), f"?top_k={top_k}")
    assert (status, answer) == (400, {"error": message})


def test_a_top_k_that_is_no_number_gets_the_one_refusal(places, server) -> None:
    from mnist_edge.runtime import classify
    from mnist_edge.runtime.errors import ConfigError

    message = f"{TOP_K_RANGE}, not 'abc'"
    with pytest.raises(ConfigError) as info:
        classify(places["picture"], model=places["model"], top_k="abc")
    assert str(info.value) == message
    status, answer = _classify(server, Path(places["picture"]), "?top_k=abc")
    assert (status, answer) == (400, {"error": message})


def test_the_top_k_range_ends_at_the_classes(places, server) -> None:
    from mnist_edge.runtime import classify

    (record,) = classify(places["picture"], model=places["model"], top_k=10)
    assert len(record["top_k"]) == 10
    status, answer = _classify(server, Path(places["picture"]), "?top_k=10")
    assert status == 200 and len(answer["results"][0]["top_k"]) == 10
    status, answer = _classify(server, Path(places["picture"]), "?top_k=0")
    assert status == 200 and "top_k" not in answer["results"][0]
