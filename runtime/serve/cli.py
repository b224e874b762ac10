"""``mnist-serve``: serve a model with the Open Inference Protocol (KServe v2) over HTTP and gRPC.

Parses options, loads the model, binds the sockets and runs uvicorn, with the
gRPC server on the same event loop (one batcher for both). SIGTERM (or Ctrl-C)
stops both from accepting, finishes the requests in flight and exits 0.
Exit status 2: bad option, missing/corrupt model, unavailable provider, or an
address that cannot be bound.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from mnist_edge.runtime.command import command
from mnist_edge.runtime.frontend import (
    ModelChoice,
    invert_option,
    load_classifier,
    max_pixels_option,
    model_errors,
    model_options,
    threads_option,
)
from mnist_edge.runtime.serve.batcher import BatchConfig

if TYPE_CHECKING:
    from mnist_edge.runtime.serve.grpc_service import GrpcServer


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: any free port)."""
    sock: socket.socket | None = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise click.BadParameter(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --host/--port",
            param_hint="--port",
        ) from None
    return sock


@command("mnist-serve", extras=("serve", "cpu"))
@model_options("Serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="TCP port (0: any free port, printed at start).",
)
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=8001,
    show_default=True,
    help="gRPC port (Open Inference Protocol; 0: any free port, printed at start).",
)
@click.option("--grpc/--no-grpc", "grpc", default=True, show_default=True, help="Serve gRPC too.")
@click.option(
    "--metrics/--no-metrics",
    default=True,
    show_default=True,
    help="Prometheus metrics at GET /metrics.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, BatchConfig.max_queue_rows),  # no more rows may wait
    default=BatchConfig.max_batch,
    show_default=True,
    help="Most images in one model call (dynamic batching).",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(0, 10_000),
    default=0.0,
    show_default=True,
    help="Longest a request waits for others to join its batch (0: it goes as soon as "
    "the model is idle; requests still gather while a batch runs).",
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(0.001, 4096),
    default=16.0,
    show_default=True,
    help="Largest request body in MiB (bigger ones get 413).",
)
@threads_option()
@invert_option("uploaded pictures (/v1/classify)")
@max_pixels_option()
@click.option(
    "--graceful-timeout",
    type=click.IntRange(0, None),
    default=30,
    show_default=True,
    help="Seconds to let requests in flight finish after SIGTERM.",
)
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn's access log).")
def main(
    model: Path | None,
    int8: bool,
    provider: str,
    host: str,
    port: int,
    grpc_port: int,
    grpc: bool,
    metrics: bool,
    max_batch: int,
    max_wait_ms: float,
    max_body_mb: float,
    threads: int | None,
    invert: str,
    max_pixels: int,
    graceful_timeout: int,
    access_log: bool,
) -> None:
    """Serve an mnist-edge ONNX model with the Open Inference Protocol (KServe v2).

    HTTP: GET /v2/health/live, /v2/health/ready, /v2/models/mnist,
    /v2/models/mnist/ready, /v2/models/mnist/stats, /metrics; POST
    /v2/models/mnist/infer (JSON or binary tensors, as tritonclient sends them)
    and POST /v1/classify (picture files as multipart/form-data; ?top_k=K).
    gRPC on --grpc-port: the GRPCInferenceService (tritonclient.grpc).
    """
    import uvicorn

    from mnist_edge.runtime.serve.app import create_app
    from mnist_edge.runtime.serve.headers import BoundedHttpToolsProtocol
    from mnist_edge.runtime.serve.service import ModelService, ServeConfig
    from mnist_edge.runtime.session import SessionConfig

    choice = ModelChoice(model, int8)
    path = choice.path
    config = ServeConfig(
        batch=BatchConfig(max_batch=max_batch, max_wait_ms=max_wait_ms),
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        invert=invert,
        max_pixels=max_pixels,
        metrics=metrics,
    )  # checked before the model loads
    classifier = load_classifier(choice, SessionConfig(provider=provider, threads=threads))
    with model_errors(choice):
        service = ModelService(classifier, config)
    grpc_server: GrpcServer | None = None
    if grpc:
        from mnist_edge.runtime.serve.grpc_service import GrpcServer

        grpc_server = GrpcServer(
            service, host, grpc_port, config.max_body_bytes, grace=graceful_timeout
        )
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    from mnist_edge.runtime.session import short_name

    kind = "pixels-in, " if service.pixels_in else ""
    banner = (
        f"mnist-serve: {path} ({kind}{classifier.metadata.precision}, "
        f"{short_name(classifier.provider)}) as model {config.model_name!r} on "
        f"http://{host}:{bound} {{grpc}}(batches of <= {max_batch}, wait <= {max_wait_ms:g} ms"
        f"{', metrics at /metrics' if metrics else ''})"
    )
    server = _server(
        uvicorn.Config(
            create_app(service, companion=grpc_server),
            lifespan="on",
            log_level="info",
            access_log=access_log,
            timeout_graceful_shutdown=graceful_timeout,
            proxy_headers=False,  # clients are not behind a proxy we know of
            http=BoundedHttpToolsProtocol,
        ),
        grpc_server,
        banner,
    )
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully;
    # a no-op handler here (restored by uvicorn before that) makes SIGTERM end in exit 0.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run(sockets=[sock])
    except _GrpcPortError as exc:
        raise click.BadParameter(
            f"{exc}; pick another --grpc-port (or --no-grpc)", param_hint="--grpc-port"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if not server.started:
        raise click.ClickException("the server did not start (see the log above)")


class _GrpcPortError(Exception):
    """The gRPC port could not be bound (raised out of the event loop to main)."""


def _server(config: Any, grpc_server: GrpcServer | None, banner: str) -> Any:
    """uvicorn's server, with the gRPC server bound on its event loop and stopped on its signals."""
    import uvicorn

    class Server(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self.loop = asyncio.get_running_loop()
            grpc_note = ""
            if grpc_server is not None:
                from mnist_edge.runtime.serve.grpc_service import GrpcBindError

                try:
                    port = await grpc_server.bind()
                except GrpcBindError as exc:
                    raise _GrpcPortError(str(exc)) from None
                host = self.config.host if sockets is None else sockets[0].getsockname()[0]
                grpc_note = f"and grpc://{host}:{port} "
            click.echo(banner.format(grpc=grpc_note), err=True)
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if grpc_server is not None and self.loop is not None:
                self.loop.call_soon_threadsafe(grpc_server.begin_stop)

    return Server(config)


def _stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""


if __name__ == "__main__":
    main()
