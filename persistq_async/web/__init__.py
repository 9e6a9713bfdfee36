"""The web dashboard: ``persistq_async.web.create_app(url, token=...)`` is an ASGI app.

Needs the ``web`` extra (``pip install 'persistq_async[web]'``: Starlette, uvicorn, Jinja2).
``persistq dashboard --url URL`` serves it; mount it in an existing Starlette or FastAPI
application under a prefix with ``Mount("/queues", app=create_app(url, token=...))``.
The core package never imports this one.
"""

from __future__ import annotations

from .app import DEFAULT_REFRESH_SECONDS, create_app
from .security import TOKEN_HEADER
from .serve import serve

__all__ = ["DEFAULT_REFRESH_SECONDS", "TOKEN_HEADER", "create_app", "serve"]
