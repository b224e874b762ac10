"""Connecting the Ray engine's command to a cluster (or starting a Ray for the run), and one
readable line out of a failed Ray job."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

import click

from mnist_edge.runtime.errors import first_line
from mnist_edge.runtime.scale.config import import_ray


@contextlib.contextmanager
def ray_session(address: str | None, progress: bool | None) -> Iterator[Any]:
    """Connect to (or start) Ray for this run; a Ray the caller started is used and left running.

    Raises:
        MissingExtraError: Ray is not installed.
        click.BadParameter: the cluster cannot be reached (naming ``--ray-address``).
    """
    ray = import_ray()
    show = progress if progress is not None else sys.stderr.isatty()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = show
    context.print_on_execution_start = show
    if not show:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    started = False
    if not ray.is_initialized():
        check_reachable(address or os.environ.get("RAY_ADDRESS"))
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=show,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
            raise click.BadParameter(
                f"cannot connect to {where}: {first_line(exc)}", param_hint="--ray-address"
            ) from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) where nothing listens, in seconds:
    Ray itself keeps retrying such an address for minutes.

    Raises:
        click.BadParameter: nothing accepts a connection there.
    """
    if not address or address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if "://" in hostport or not host or not port.isdigit():
        return  # not a form we can probe; Ray says what it makes of it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise click.BadParameter(
            f"cannot connect to {address}: nothing answers there ({why}); start the cluster "
            "(`ray start --head`) or check the address",
            param_hint="--ray-address",
        ) from None


def job_failure(exc: BaseException) -> str:
    """The last line of a Ray error that says what went wrong (Ray wraps the cause in tracebacks)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("File ", "Traceback", "^", "~"))]
    return (useful or lines or [type(exc).__name__])[-1][:500]
