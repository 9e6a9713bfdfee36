"""``persistq dashboard``: check the database, then serve the dashboard with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from typing import Any

import anyio
import uvicorn

from ..errors import ArgumentError
from .app import DEFAULT_REFRESH_SECONDS, create_app
from .service import Dashboard

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "TOKEN_ENV", "serve"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: The environment variable that may hold the token (so that it stays out of ``ps``).
TOKEN_ENV = "PERSISTQ_DASHBOARD_TOKEN"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _check(url: str | None) -> None:
    dashboard = Dashboard(url)
    try:
        await dashboard.open()
    finally:
        await dashboard.aclose()


def serve(
    url: str | None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    read_only: bool = False,
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serve the dashboard until interrupted (SIGINT or SIGTERM).

    The token defaults to ``PERSISTQ_DASHBOARD_TOKEN``; without one the dashboard is read-only
    and says so. On a loopback address only requests naming a loopback host are answered (a
    page on another site cannot reach it through DNS rebinding).

    :param url: the database; None for the configured one.
    :raises ArgumentError: a bad port or an empty token.
    :raises DatabaseNotFound: no database at ``url`` (nothing is created).
    :raises DatabaseError: the database cannot be opened.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ArgumentError(f"port: expected 0 to 65535, got {port!r}")
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is not None and not token.strip():
        raise ArgumentError("token: must not be empty (leave it out for a read-only dashboard)")
    anyio.run(_check, url)  # a one-line error now beats an error page on every request
    loopback = _is_loopback(host)
    allowed = ["127.0.0.1", "localhost", "::1", "[::1]"] if loopback else None
    app = create_app(
        url,
        token=token,
        read_only=read_only,
        allowed_hosts=allowed,
        refresh_seconds=refresh_seconds,
        **options,
    )
    settings = app.state.settings
    shown = f"[{host}]" if ":" in host else host
    print(f"persistq dashboard on http://{shown}:{port}/ for {app.state.dashboard.where}")
    if settings.read_only_reason:
        print(settings.read_only_reason)
    elif not loopback:
        print(
            f"warning: listening on {host}, beyond this machine; anyone who can reach it can "
            "read the jobs (the token guards only the actions)",
            file=sys.stderr,
        )
    sys.stdout.flush()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        server_header=False,
        lifespan="on",
    )
    uvicorn.Server(config).run()
