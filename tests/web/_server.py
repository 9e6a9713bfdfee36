"""A dashboard server for the tests, in its own process: ``python -m tests.web._server URL PORT``.

Options: ``--token T``, ``--read-only``, ``--prefix /ops`` (mount the dashboard under a prefix
in a host Starlette app, as an application would).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from persistq_async.web import create_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("port", type=int)
    parser.add_argument("--token", default=None)
    parser.add_argument("--read-only", action="store_true")
    parser.add_argument("--prefix", default=None)
    args = parser.parse_args()
    dashboard = create_app(
        args.url, token=args.token, read_only=args.read_only, refresh_seconds=0.5
    )
    app: Starlette = dashboard
    if args.prefix:

        async def home(request: object) -> PlainTextResponse:
            return PlainTextResponse("the host application")

        @asynccontextmanager
        async def lifespan(host: Starlette) -> AsyncIterator[None]:
            yield
            await dashboard.state.dashboard.aclose()  # what the docstring tells a host to do

        app = Starlette(
            routes=[Route("/", home), Mount(args.prefix, app=dashboard)], lifespan=lifespan
        )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
