"""The dashboard's ASGI app: HTML pages, their script and stylesheet, and the JSON API.

The pages are shells that the script fills from the JSON API under ``/api/`` and refreshes by
short polling; everything they show, the API answers, and everything they do, it does.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import __version__
from .._jobmeta import check_tags
from .._types import JobState, Serializer
from ..errors import (
    ArgumentError,
    ArgumentTypeError,
    DatabaseError,
    JobNotFound,
    JobStateError,
    PersistQError,
    QueueClosed,
)
from .security import TOKEN_HEADER, Refused, SecurityHeaders, Settings, check_mutation
from .service import JOB_ACTIONS, MAX_BULK_IDS, MAX_PAGE, Dashboard, PageQuery

__all__ = ["DEFAULT_REFRESH_SECONDS", "create_app"]

logger = logging.getLogger(__name__)

#: How often the pages poll the API.
DEFAULT_REFRESH_SECONDS = 2.0
#: Largest JSON body a mutating request may send.
MAX_BODY_BYTES = 64 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """Raised when a request's parameters are malformed: answered 400 with the message."""


# ---------------------------------------------------------------------- parameters


def _query(request: Request, allowed: set[str]) -> dict[str, str]:
    params = request.query_params
    unknown = sorted(set(params.keys()) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(allowed)) or 'none'})"
        )
    found: dict[str, str] = {}
    for key in params:
        values = params.getlist(key)
        if len(values) > 1:
            raise BadRequest(f"{key}: given {len(values)} times; give it once")
        if values[0] != "":
            found[key] = values[0]
    return found


def _int(
    name: str, raw: str | None, *, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    if raw is None:
        return None
    text = raw.strip()
    if not text.lstrip("-").isdigit() or len(text) > 20:
        raise BadRequest(f"{name}: expected an integer, got {raw!r}")
    value = int(text)
    if minimum is not None and value < minimum:
        raise BadRequest(f"{name}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise BadRequest(f"{name}: must be <= {maximum}, got {value}")
    return value


def _state(raw: str | None) -> JobState | None:
    if raw is None:
        return None
    try:
        return JobState(raw.lower())
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise BadRequest(f"state: unknown state {raw!r} (known: {known})") from None


def _job_id(request: Request) -> int:
    value = _int("job id", request.path_params["job_id"], minimum=1, maximum=2**63 - 1)
    assert value is not None
    return value


def _page_query(request: Request, *, queue: str | None) -> PageQuery:
    allowed = {"state", "priority", "tag", "id", "before", "after", "limit"}
    if queue is None:
        allowed.add("queue")
    q = _query(request, allowed)
    tags = check_tags([q["tag"]], "tag") if "tag" in q else ()
    before = _int("before", q.get("before"), minimum=1)
    after = _int("after", q.get("after"), minimum=1)
    if before is not None and after is not None:
        raise BadRequest("before and after: give one or the other, not both")
    limit = _int("limit", q.get("limit"), minimum=1, maximum=MAX_PAGE)
    return PageQuery(
        queue=queue if queue is not None else q.get("queue"),
        state=_state(q.get("state")),
        priority=_int("priority", q.get("priority"), minimum=-(2**31), maximum=2**31 - 1),
        job_id=_int("id", q.get("id"), minimum=1, maximum=2**63 - 1),
        before_id=before,
        after_id=after,
        limit=limit if limit is not None else 50,
        tags=tags,
    )


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"body: larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"body: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("body: expected a JSON object")
    return data


# ---------------------------------------------------------------------- the app


def create_app(
    url: str | os.PathLike[str] | None,
    *,
    token: str | None = None,
    read_only: bool = False,
    allowed_hosts: list[str] | None = None,
    trusted_origins: list[str] | None = None,
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
    serializer: Serializer | None = None,
    **options: Any,
) -> Starlette:
    """The dashboard as an ASGI app, to serve with uvicorn or mount in a Starlette or FastAPI
    application under a prefix (``Mount("/queues", app=create_app(url, token=...))``).

    The database is opened on the first request and closed when the app's lifespan ends; a
    mounting application, whose lifespan Starlette does not pass on to mounted apps, closes it
    with ``await app.state.dashboard.aclose()``.

    :param url: the database: a file path or a SQLAlchemy async URL (None: the configured one).
        A database that is not there is refused (503 with the reason), never created.
    :param token: the secret that every mutating request must carry; None (the default) makes
        the dashboard read-only, and its pages say so.
    :param read_only: refuse every mutating request even with a token.
    :param allowed_hosts: ``Host`` header values to answer (against DNS rebinding); None answers
        any.
    :param trusted_origins: origins besides the app's own from which mutating requests may come
        (a reverse proxy's public origin).
    :param refresh_seconds: how often the pages poll the API.
    :param serializer: decodes payloads and results; JSON by default.
    :param options: queue options for the connection (``busy_timeout``...).
    :raises ArgumentError: an empty token, a bad URL or refresh interval.
    """
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ArgumentError("token: must be a non-empty string (or None for read-only)")
    if isinstance(refresh_seconds, bool) or not isinstance(refresh_seconds, (int, float)):
        raise ArgumentTypeError("refresh_seconds: expected a number")
    if not 0.2 <= refresh_seconds <= 3600:
        raise ArgumentError(f"refresh_seconds: between 0.2 and 3600, got {refresh_seconds}")
    dashboard = Dashboard(url, serializer=serializer, **options)
    settings = Settings(
        token=token, read_only=read_only, trusted_origins=frozenset(trusted_origins or ())
    )
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("persistq_async.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates = Jinja2Templates(env=env)

    def page(name: str, **context: Any) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            extra: dict[str, Any] = dict(context)
            if name == "job":
                job_id = _job_id(request)
                await dashboard.job(job_id)  # 404 for an unknown id, before any page
                extra["job_id"] = job_id
            elif name == "queue":
                queue = request.path_params["name"]
                if queue not in await dashboard.queue_names():
                    raise JobNotFound(f"no queue named {queue!r} has jobs")
                extra["queue"] = queue
            else:
                _query(request, {"queue", "state", "priority", "id", "before", "after"})
            return templates.TemplateResponse(
                request, f"{name}.html", _context(request, name, extra)
            )

        return endpoint

    def _context(request: Request, name: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "page": name,
            "base": request.scope.get("root_path", "").rstrip("/"),
            "read_only_reason": settings.read_only_reason,
            "writable": settings.writable,
            "refresh_ms": int(refresh_seconds * 1000),
            "token_header": TOKEN_HEADER,
            "version": __version__,
            "where": dashboard.where,
            "job_id": None,
            "queue": None,
            **extra,
        }

    # -------------------------------------------------------------- API: reads

    async def api_info(request: Request) -> Response:
        _query(request, set())
        return JSONResponse(
            {
                "version": __version__,
                "database": dashboard.where,
                "writable": settings.writable,
                "read_only_reason": settings.read_only_reason,
                "token_header": TOKEN_HEADER,
                "refresh_seconds": refresh_seconds,
            }
        )

    async def api_overview(request: Request) -> Response:
        _query(request, set())
        return JSONResponse(await dashboard.overview())

    async def api_throughput(request: Request) -> Response:
        _query(request, set())
        return JSONResponse(await dashboard.throughput())

    async def api_queues(request: Request) -> Response:
        _query(request, set())
        return JSONResponse({"queues": await dashboard.queue_names()})

    async def api_queue_jobs(request: Request) -> Response:
        queue = request.path_params["name"]
        query = _page_query(request, queue=queue)
        if queue not in await dashboard.queue_names():
            raise JobNotFound(f"no queue named {queue!r} has jobs")
        return JSONResponse(await dashboard.jobs(query))

    async def api_jobs(request: Request) -> Response:
        return JSONResponse(await dashboard.jobs(_page_query(request, queue=None)))

    async def api_job(request: Request) -> Response:
        _query(request, set())
        return JSONResponse(await dashboard.job(_job_id(request)))

    async def api_schedules(request: Request) -> Response:
        _query(request, set())
        return JSONResponse(await dashboard.schedules())

    async def api_workers(request: Request) -> Response:
        _query(request, set())
        return JSONResponse(await dashboard.workers())

    # -------------------------------------------------------------- API: actions

    async def api_session(request: Request) -> Response:
        check_mutation(request, settings)
        return JSONResponse({"ok": True})

    async def api_job_action(request: Request) -> Response:
        check_mutation(request, settings)
        job_id = _job_id(request)
        action = request.path_params["action"]
        if action not in JOB_ACTIONS:
            raise BadRequest(f"action: expected one of {', '.join(JOB_ACTIONS)}, got {action!r}")
        await _body(request)
        return JSONResponse(await dashboard.act(action, job_id))

    async def api_bulk(request: Request) -> Response:
        check_mutation(request, settings)
        body = await _body(request)
        action = body.get("action")
        if action not in JOB_ACTIONS:
            raise BadRequest(f"action: expected one of {', '.join(JOB_ACTIONS)}, got {action!r}")
        ids = body.get("ids")
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids)
        ):
            raise BadRequest("ids: expected a non-empty list of job ids (positive integers)")
        if len(ids) > MAX_BULK_IDS:
            raise BadRequest(f"ids: at most {MAX_BULK_IDS} at once, got {len(ids)}")
        return JSONResponse(await dashboard.act_many(action, ids))

    def _body_state(body: Mapping[str, Any]) -> JobState:
        raw = body.get("state")
        if not isinstance(raw, str):
            raise BadRequest('state: expected a state name in the body, e.g. {"state": "dead"}')
        state = _state(raw)
        assert state is not None
        return state

    async def api_queue_requeue(request: Request) -> Response:
        check_mutation(request, settings)
        state = _body_state(await _body(request))
        return JSONResponse(await dashboard.requeue_state(request.path_params["name"], state))

    async def api_queue_purge(request: Request) -> Response:
        check_mutation(request, settings)
        state = _body_state(await _body(request))
        return JSONResponse(await dashboard.purge(request.path_params["name"], state))

    # -------------------------------------------------------------- errors

    def _is_api(request: Request) -> bool:
        root = request.scope.get("root_path", "")
        path = request.url.path
        if root and path.startswith(root):
            path = path[len(root) :]
        return path.startswith("/api/") or path == "/api"

    def _error(request: Request, status: int, message: str) -> Response:
        if _is_api(request):
            return JSONResponse({"error": message, "status": status}, status_code=status)
        return templates.TemplateResponse(
            request,
            "error.html",
            _context(request, "error", {"status": status, "message": message}),
            status_code=status,
        )

    async def on_refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        response = _error(request, exc.status, exc.reason)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = f'Token header="{TOKEN_HEADER}"'
        return response

    async def on_bad_request(request: Request, exc: Exception) -> Response:
        return _error(request, 400, str(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = exc.detail if exc.status_code != 404 else f"not found: {request.url.path}"
        return _error(request, exc.status_code, str(message))

    async def on_library(request: Request, exc: Exception) -> Response:
        status = 500
        if isinstance(exc, JobNotFound):
            status = 404
        elif isinstance(exc, (ArgumentError, ArgumentTypeError)):
            status = 400
        elif isinstance(exc, JobStateError):
            status = 409
        elif isinstance(exc, (DatabaseError, QueueClosed)):
            status = 503
            logger.warning("dashboard: %s", exc, extra={"action": "dashboard_unavailable"})
        return _error(request, status, str(exc))

    async def on_crash(request: Request, exc: Exception) -> Response:
        logger.exception(
            "dashboard: unexpected error on %s",
            request.url.path,
            extra={"action": "dashboard_failed", "path": request.url.path},
        )
        return _error(request, 500, "internal error (see the server's log)")

    # -------------------------------------------------------------- routes

    routes: list[BaseRoute] = [
        Route("/", page("overview")),
        Route("/queues/{name:path}", page("queue")),
        Route("/jobs/{job_id}", page("job")),
        Route("/dead", page("dead")),
        Route("/workers", page("workers")),
        Route("/schedules", page("schedules")),
        Route("/api/info", api_info),
        Route("/api/overview", api_overview),
        Route("/api/throughput", api_throughput),
        Route("/api/queues", api_queues),
        Route("/api/queues/{name:path}/jobs", api_queue_jobs),
        Route("/api/queues/{name:path}/requeue", api_queue_requeue, methods=["POST"]),
        Route("/api/queues/{name:path}/purge", api_queue_purge, methods=["POST"]),
        Route("/api/jobs", api_jobs),
        Route("/api/jobs/bulk", api_bulk, methods=["POST"]),
        Route("/api/jobs/{job_id}", api_job),
        Route("/api/jobs/{job_id}/{action}", api_job_action, methods=["POST"]),
        Route("/api/workers", api_workers),
        Route("/api/schedules", api_schedules),
        Route("/api/session", api_session, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("persistq_async.web", "static")]), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await dashboard.aclose()

    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    app = Starlette(
        debug=False,
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            Refused: on_refused,
            BadRequest: on_bad_request,
            HTTPException: on_http,
            PersistQError: on_library,
            Exception: on_crash,
        },
    )
    app.state.dashboard = dashboard
    app.state.settings = settings
    return app
