"""Serve the web page (``web/``) and the exported models on 127.0.0.1 (standard library only).

The page is static: ``/`` is the ``web/`` folder and ``/models/NAME`` a file
directly inside the artifacts folder (``mnist.meta.json``, ``*.onnx``,
``*.ort``). Module scripts and WebAssembly are refused by browsers unless
served as ``text/javascript`` and ``application/wasm``, so the types are set
here, not guessed from the host's ``/etc/mime.types``. Nothing is cached, so
a page reloaded after a new export gets the new models.

``python -m mnist_edge.tools.webserve`` (what ``make web`` runs) serves until
Ctrl-C; the browser tests use :func:`running` on a free port.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import click

from mnist_edge.runtime import __version__, layout
from mnist_edge.runtime.errors import MnistEdgeError

MODELS_PREFIX = "/models/"
MODEL_SUFFIXES = (".onnx", ".ort", ".json")
# The onnxruntime-web files the page imports, copied into web/vendor/ by `npm ci`.
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
VENDOR = "vendor"
HIDDEN_DIRS = ("node_modules",)
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".ort": "application/octet-stream",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    "": "application/octet-stream",
}


class WebServeError(MnistEdgeError, RuntimeError):
    """The page cannot be served: its folder or the onnxruntime-web files are missing."""


@dataclass(frozen=True)
class WebConfig:
    """What to serve, and where.

    Attributes:
        web_dir: the page's folder (``index.html``, ``app.mjs``, ``vendor/``).
        models_dir: the folder with ``mnist.meta.json`` and the pixels-in models:
            ``artifacts/`` when it has them, else the bundled reference model.
        host: the address to listen on (loopback by default: the page is a local demo).
        port: the port; 0 picks a free one.
        quiet: do not log each request to stderr.
    """

    web_dir: Path = Path("web")
    models_dir: Path = field(default_factory=lambda: _default_models_dir())
    host: str = "127.0.0.1"
    port: int = 8000
    quiet: bool = False


def _default_models_dir() -> Path:
    return layout.default_models(layout.META_JSON).root


class PageHandler(SimpleHTTPRequestHandler):
    """Static files from the page's folder, models from the artifacts folder, strict MIME types."""

    extensions_map = MIME_TYPES

    def __init__(self, *args: Any, models_dir: Path, quiet: bool, **kwargs: Any) -> None:
        self.models_dir = models_dir
        self.quiet = quiet
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        """``/models/NAME`` -> ``models_dir/NAME`` (plain names only); the rest from the page's folder."""
        url_path = unquote(urlsplit(path).path)
        if url_path.startswith(MODELS_PREFIX):
            name = url_path[len(MODELS_PREFIX) :]
            if (
                "/" in name
                or "\\" in name
                or name.startswith(".")
                or not name.endswith(MODEL_SUFFIXES)
            ):
                return str(self.models_dir / ".not-served")
            return str(self.models_dir / name)
        first = url_path.lstrip("/").split("/", 1)[0]
        if first in HIDDEN_DIRS:
            return str(Path(self.directory) / ".not-served")
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def missing_runtime_files(web_dir: Path) -> list[Path]:
    """The onnxruntime-web files the page needs that are not in ``web_dir/vendor``."""
    return [
        web_dir / VENDOR / name for name in RUNTIME_FILES if not (web_dir / VENDOR / name).is_file()
    ]


def make_server(config: WebConfig) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server for the page and the models.

    Raises:
        WebServeError: ``web_dir`` has no ``index.html``, or the onnxruntime-web files are missing.
        OSError: the address cannot be bound (port in use).
    """
    web_dir = config.web_dir.resolve()
    if not (web_dir / "index.html").is_file():
        raise WebServeError(
            f"{web_dir / 'index.html'} not found: web_dir must be the page's folder"
        )
    missing = missing_runtime_files(web_dir)
    if missing:
        raise WebServeError(
            f"{missing[0]} not found: install the page's runtime with `npm ci` in {web_dir}"
        )
    handler = partial(
        PageHandler,
        directory=str(web_dir),
        models_dir=config.models_dir.resolve(),
        quiet=config.quiet,
    )
    return ThreadingHTTPServer((config.host, config.port), handler)


def url_of(server: ThreadingHTTPServer) -> str:
    """The page's URL on ``server``."""
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}/"


@contextlib.contextmanager
def running(config: WebConfig) -> Iterator[str]:
    """Serve in a background thread; yields the page's URL and stops the server on exit."""
    server = make_server(config)
    thread = threading.Thread(target=server.serve_forever, name="mnist-edge-web", daemon=True)
    thread.start()
    try:
        yield url_of(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--web-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=WebConfig.web_dir,
    show_default=True,
    help="The page's folder.",
)
@click.option(
    "--models",
    "models_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder with mnist.meta.json and the pixels-in models.  [default: artifacts/ if it "
    "has mnist.meta.json, else the bundled reference model]",
)
@click.option("--host", default=WebConfig.host, show_default=True)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=WebConfig.port,
    show_default=True,
    help="0 = any free port.",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not log requests.")
@click.version_option(__version__, prog_name="mnist-edge web")
def main(web_dir: Path, models_dir: Path | None, host: str, port: int, quiet: bool) -> None:
    """Serve the mnist-edge web page and the models until Ctrl-C."""
    models_dir = models_dir or _default_models_dir()
    config = WebConfig(web_dir=web_dir, models_dir=models_dir, host=host, port=port, quiet=quiet)
    try:
        server = make_server(config)
    except WebServeError as exc:
        raise click.ClickException(f"{exc} (from a clone: make web-deps)") from exc
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port"
        ) from exc
    meta = models_dir / layout.META_JSON
    if not meta.is_file():
        click.echo(
            f"note: {meta} not found; the page will say so until mnist-export writes it", err=True
        )
    click.echo(
        f"Serving the mnist-edge page on {url_of(server)}  (models from {models_dir}/; Ctrl-C stops)"
    )
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
