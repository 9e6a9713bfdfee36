"""A very small HTTP/1.1 server for probes and scrapes (``/livez``, ``/readyz``, ``/metrics``).

It answers GET (and HEAD) on a few fixed paths, one request per connection, on anyio's TCP
listener: enough for container probes and a Prometheus scraper, and no web framework in the
core. Each route is an async function returning the status, the content type and the body.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio
from anyio.abc import SocketListener, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.stapled import MultiListener

from .errors import ArgumentError
from .monitoring import log_event

__all__ = ["Listener", "Response", "Route", "bind", "parse_address", "serve"]

logger = logging.getLogger(__name__)

#: Longest request head (request line and headers) read, in bytes.
MAX_HEAD_BYTES = 16 * 1024
#: Seconds a client gets to send its request head.
READ_TIMEOUT = 10.0
#: How long, and how many bytes, an answered connection's leftover input is read before close.
DRAIN_TIMEOUT = 1.0
DRAIN_BYTES = 1024 * 1024
#: Seconds a route gets to answer before the server says 503.
ROUTE_TIMEOUT = 10.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """What a route answers."""

    status: int
    content_type: str
    body: bytes


Route = Callable[[], Awaitable[Response]]
Listener = MultiListener[SocketStream] | SocketListener


def parse_address(option: str, value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port; port 0 picks a free one.

    :raises ArgumentError: naming ``option`` when the value is not of that form.
    """
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ArgumentError(f"{option}: expected HOST:PORT (e.g. 127.0.0.1:9464), got {value!r}")
    return host, int(port_text)


def _text(status: int, message: str) -> Response:
    return Response(status=status, content_type="text/plain; charset=utf-8", body=message.encode())


async def _answer(stream: SocketStream, routes: Mapping[str, Route]) -> None:
    receive = BufferedByteReceiveStream(stream)
    head_only = False
    try:
        with anyio.fail_after(READ_TIMEOUT):
            head = await receive.receive_until(b"\r\n\r\n", MAX_HEAD_BYTES)
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(head) > MAX_HEAD_BYTES:  # arrived in one piece, past the limit
            response = _text(400, "request head too large\n")
        elif len(parts) != 3 or not parts[2].startswith("HTTP/"):
            response = _text(400, "malformed request line\n")
        else:
            method, target, _ = parts
            path = target.split("?", 1)[0]
            head_only = method == "HEAD"
            route = routes.get(path)
            if route is None:
                known = ", ".join(sorted(routes))
                response = _text(404, f"no such path {path!r}; this server has {known}\n")
            elif method not in ("GET", "HEAD"):
                response = _text(405, f"{method} is not allowed; use GET\n")
            else:
                try:
                    with anyio.fail_after(ROUTE_TIMEOUT):
                        response = await route()
                except TimeoutError:
                    response = _text(503, f"{path} took longer than {ROUTE_TIMEOUT}s\n")
                except Exception as exc:
                    log_event(
                        logger,
                        logging.ERROR,
                        "monitor_failed",
                        f"{path} failed: {type(exc).__name__}: {exc}",
                        path=path,
                    )
                    response = _text(500, f"{path} failed: {type(exc).__name__}\n")
    except (anyio.IncompleteRead, anyio.DelimiterNotFound, TimeoutError):
        response = _text(400, "incomplete or oversized request head\n")
    reason = _REASONS.get(response.status, "Unknown")
    header = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    await stream.send(header if head_only else header + response.body)
    # Closing with unread request bytes would make the kernel reset the connection, and the
    # client could lose the answer (a 400 for an oversized head): end our side, then drain a
    # little of what the client still sends.
    await stream.send_eof()
    with anyio.move_on_after(DRAIN_TIMEOUT):
        drained = 0
        while drained < DRAIN_BYTES:
            try:
                drained += len(await stream.receive())
            except anyio.EndOfStream:
                break


async def _handle(stream: SocketStream, routes: Mapping[str, Route]) -> None:
    async with stream:
        # A client that went away needs no answer.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await _answer(stream, routes)


async def bind(option: str, host: str, port: int) -> Listener:
    """A listening socket on ``host:port`` (``port=0`` picks a free one).

    :raises ArgumentError: naming ``option`` when the address cannot be bound (in use, ...).
    """
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise ArgumentError(
            f"{option}: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc


async def serve(
    listener: Listener,
    routes: Mapping[str, Route],
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on ``listener`` (from :func:`bind`) until cancelled, then close it;
    reports the bound port when started."""
    async with listener:
        host = listener.extra(anyio.abc.SocketAttribute.local_address)[0]
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        log_event(
            logger,
            logging.INFO,
            "monitor_serving",
            f"serving {', '.join(sorted(routes))} on http://{host}:{bound}",
            host=host,
            port=bound,
        )
        task_status.started(bound)
        await listener.serve(lambda stream: _handle(stream, routes))
