"""Who may change things: the token, the cross-site checks, and the headers on every response.

A mutating request must

- be a ``POST`` with a JSON body (``Content-Type: application/json``): an HTML form on another
  site can only send urlencoded, multipart or plain-text bodies;
- carry the token in the ``X-PersistQ-Token`` header: a form cannot set headers, and a script on
  another site that tries gets a CORS preflight this app never answers;
- come from this dashboard's own origin when the browser says where it comes from (``Origin``,
  else ``Sec-Fetch-Site``).

The token is compared with :func:`hmac.compare_digest`, in constant time.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "TOKEN_HEADER",
    "Refused",
    "SecurityHeaders",
    "Settings",
    "check_mutation",
]

#: The request header that carries the dashboard token.
TOKEN_HEADER = "X-PersistQ-Token"

# No inline script or style anywhere: whatever a payload holds, the browser runs only our files.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The dashboard's access rules.

    ``token`` None means nobody may change anything (read-only, and the pages say why).
    """

    token: str | None
    read_only: bool
    #: Origins besides the dashboard's own that may send mutating requests (a reverse proxy's).
    trusted_origins: frozenset[str] = frozenset()

    @property
    def writable(self) -> bool:
        """Whether mutating requests can succeed at all."""
        return self.token is not None and not self.read_only

    @property
    def read_only_reason(self) -> str | None:
        """Why the dashboard is read-only, for the banner; None when it is not."""
        if self.read_only:
            return "read-only mode (--read-only)"
        if self.token is None:
            return (
                "read-only: no token configured "
                "(start it with --token or PERSISTQ_DASHBOARD_TOKEN to allow actions)"
            )
        return None


class Refused(Exception):
    """Raised when a mutating request is not allowed; carries the HTTP status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _own_origin(request: Request) -> str:
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}".lower()


def check_mutation(request: Request, settings: Settings) -> None:
    """Refuse a mutating request that is not allowed, saying why.

    :raises Refused: 403 read-only, cross-site or a wrong token; 401 no token; 415 not JSON.
    """
    reason = settings.read_only_reason
    if reason is not None:
        raise Refused(403, f"refused: the dashboard is in {reason}")
    origin = request.headers.get("origin")
    if origin is not None:
        allowed = {_own_origin(request), *(o.lower().rstrip("/") for o in settings.trusted_origins)}
        if origin.lower() not in allowed:
            raise Refused(403, f"refused: cross-site request from origin {origin!r}")
    elif request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise Refused(403, "refused: cross-site request")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise Refused(415, "refused: the body must be JSON (Content-Type: application/json)")
    given = request.headers.get(TOKEN_HEADER)
    if not given:
        raise Refused(401, f"refused: this action needs the dashboard token ({TOKEN_HEADER})")
    assert settings.token is not None
    if not hmac.compare_digest(given.encode(), settings.token.encode()):
        raise Refused(403, "refused: wrong dashboard token")


class SecurityHeaders:
    """ASGI middleware: adds a strict Content-Security-Policy and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in _HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
