"""The page's server: MIME types browsers insist on, models under /models/, nothing else leaks."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mnist_edge.tools.webserve import (
    RUNTIME_FILES,
    VENDOR,
    WebConfig,
    WebServeError,
    main,
    make_server,
    running,
)


def _site(tmp_path: Path) -> tuple[Path, Path]:
    """A page folder (index, module, vendor runtime, node_modules) and a models folder."""
    web = tmp_path / "web"
    (web / VENDOR).mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>t</title>")
    (web / "app.mjs").write_text("export const x = 1;")
    (web / "style.css").write_text("body {}")
    for name in RUNTIME_FILES:
        (web / VENDOR / name).write_bytes(b"\0asm" if name.endswith(".wasm") else b"export {};")
    (web / "node_modules").mkdir()
    (web / "node_modules" / "secret.js").write_text("x")
    models = tmp_path / "artifacts"
    models.mkdir()
    (models / "mnist.meta.json").write_text('{"format": 1}')
    (models / "mnist.pixels.onnx").write_bytes(b"onnx bytes")
    (models / "mnist.pixels.ort").write_bytes(b"ort bytes")
    (models / "model.pt").write_bytes(b"checkpoint")
    return web, models


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    return _site(tmp_path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a server on a free port for one :func:`_site`."""
    web, models = _site(tmp_path_factory.mktemp("site"))
    with running(WebConfig(web_dir=web, models_dir=models, port=0, quiet=True)) as url:
        yield url


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, "", b""


def test_serves_page_runtime_and_models_with_the_types_browsers_require(served: str) -> None:
    assert served.startswith("http://127.0.0.1:")
    status, ctype, body = _get(served)
    assert (status, ctype) == (200, "text/html; charset=utf-8")
    assert body.startswith(b"<!doctype html>")
    assert _get(served + "app.mjs")[:2] == (200, "text/javascript; charset=utf-8")
    assert _get(served + "style.css")[:2] == (200, "text/css; charset=utf-8")
    assert _get(served + "vendor/ort-wasm-simd-threaded.wasm")[:2] == (200, "application/wasm")
    assert _get(served + "vendor/ort.wasm.min.mjs")[:2] == (200, "text/javascript; charset=utf-8")
    assert _get(served + "models/mnist.meta.json")[:2] == (200, "application/json")
    assert _get(served + "models/mnist.pixels.onnx") == (
        200,
        "application/octet-stream",
        b"onnx bytes",
    )
    assert _get(served + "models/mnist.pixels.ort")[2] == b"ort bytes"


@pytest.mark.parametrize(
    "path",
    [
        "models/model.pt",  # only models and their metadata, not checkpoints
        "models/../web/index.html",
        "models/%2e%2e%2fweb%2findex.html",
        "models/.hidden.json",
        "models/missing.onnx",
        "node_modules/secret.js",
        "../artifacts/model.pt",
    ],
)
def test_refuses_everything_else(served: str, path: str) -> None:
    status, _, body = _get(served + path)
    assert status == 404
    assert b"checkpoint" not in body


def test_missing_page_or_runtime_is_one_clear_error(site: tuple[Path, Path]) -> None:
    web, models = site
    with pytest.raises(WebServeError, match=r"index\.html not found"):
        make_server(WebConfig(web_dir=models, models_dir=models, port=0))
    (web / VENDOR / "ort-wasm-simd-threaded.wasm").unlink()
    with pytest.raises(WebServeError, match=r"ort-wasm-simd-threaded\.wasm not found: .*npm ci"):
        make_server(WebConfig(web_dir=web, models_dir=models, port=0))


def test_cli_without_runtime_exits_with_one_line(site: tuple[Path, Path]) -> None:
    web, models = site
    (web / VENDOR / "ort.wasm.min.mjs").unlink()
    result = CliRunner().invoke(
        main, ["--web-dir", str(web), "--models", str(models), "--port", "0"]
    )
    assert result.exit_code == 1
    assert "ort.wasm.min.mjs not found" in result.output
    assert "make web-deps" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_models_fall_back_to_the_bundled_ones(tmp_path: Path, monkeypatch) -> None:
    """``make web`` in a folder without an export serves the bundled pixels-in files."""
    from mnist_edge.runtime import layout

    web, _ = _site(tmp_path / "site")
    monkeypatch.chdir(tmp_path)
    assert WebConfig().models_dir == layout.BUNDLED_DIR
    with running(WebConfig(web_dir=web, port=0, quiet=True)) as url:
        status, _, body = _get(url + "models/mnist.meta.json")
        assert status == 200 and body == layout.BUNDLED.meta_json.read_bytes()
        status, _, body = _get(url + "models/mnist.pixels.int8.onnx")
        assert body == layout.BUNDLED.model("int8", pixels=True).read_bytes()
    monkeypatch.chdir(tmp_path / "site")  # here artifacts/ has an export: it wins
    assert WebConfig().models_dir == Path("artifacts")
