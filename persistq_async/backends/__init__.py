"""Backends: what differs by database. :func:`backend_for` picks one from a URL or a path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError as SAArgumentError

from ..errors import ArgumentError, ArgumentTypeError
from .base import Backend
from .postgres import PostgresBackend
from .sqlite import SQLiteBackend

if TYPE_CHECKING:
    from ..config import Options

__all__ = ["Backend", "PostgresBackend", "SQLiteBackend", "backend_for", "normalize_url"]


def normalize_url(url: str | os.PathLike[str]) -> URL:
    """Turn a path or a URL into a SQLAlchemy URL with an async driver.

    :raises ArgumentError: for a malformed URL, or a synchronous driver (naming the async one).
    """
    if isinstance(url, os.PathLike) or (isinstance(url, str) and "://" not in url):
        raw = os.fspath(url)
        if not raw:
            raise ArgumentError("url: empty path; give a file path or a SQLAlchemy URL")
        if raw == ":memory:":
            return URL.create("sqlite+aiosqlite", database=":memory:")
        return URL.create("sqlite+aiosqlite", database=str(Path(raw).expanduser().absolute()))
    if not isinstance(url, str):
        raise ArgumentTypeError(f"url: expected a str or a path, got {type(url).__name__}")
    try:
        parsed = make_url(url)
    except SAArgumentError as exc:
        raise ArgumentError(f"url: cannot parse {url!r}: {exc}") from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        if driver != "aiosqlite":
            raise ArgumentError(
                f"url: driver {parsed.drivername!r} is synchronous; use 'sqlite+aiosqlite://'"
            )
        if parsed.database and parsed.database != ":memory:":
            parsed = parsed.set(database=str(Path(parsed.database).expanduser().absolute()))
        return parsed
    if backend in ("postgresql", "postgres"):
        if driver != "asyncpg":
            raise ArgumentError(
                f"url: driver {parsed.drivername!r} is not supported; "
                "use 'postgresql+asyncpg://' (pip install 'persistq_async[postgres]')"
            )
        return parsed.set(drivername="postgresql+asyncpg")
    raise ArgumentError(
        f"url: unsupported database {backend!r}; use a file path, 'sqlite+aiosqlite://' "
        "or 'postgresql+asyncpg://'"
    )


def backend_for(url: URL, options: Options, *, create: bool = True) -> Backend:
    """The backend for a URL that :func:`normalize_url` produced.

    :param create: whether opening may create the database (see :class:`Backend`).
    """
    if url.get_backend_name() == "sqlite":
        return SQLiteBackend(url, options, create=create)
    return PostgresBackend(url, options, create=create)
