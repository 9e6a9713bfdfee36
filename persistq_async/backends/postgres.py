"""PostgreSQL through asyncpg: ``FOR UPDATE SKIP LOCKED`` claims and advisory-locked migrations."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import Select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .base import Backend

__all__ = ["PostgresBackend"]

# An arbitrary constant key that names "persistq schema migration" among advisory locks.
_SCHEMA_LOCK_KEY = 0x70713031


class PostgresBackend(Backend):
    """A PostgreSQL server shared by many worker processes and machines."""

    name = "postgresql"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ticks = itertools.count()

    def create_engine(self) -> AsyncEngine:
        """A small pool; ``pool_pre_ping`` replaces connections lost in a server restart."""
        return create_async_engine(self.url, pool_size=4, max_overflow=4, pool_pre_ping=True)

    async def prepare(self) -> None:
        """Nothing to check before connecting."""

    def lock_schema(self, conn: Connection) -> None:
        """Hold a transaction-scoped advisory lock so concurrent starts migrate once."""
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})

    def lock_claim(self, select: Select[Any]) -> Select[Any]:
        """Rows another claimer holds are skipped, not waited for."""
        return select.with_for_update(skip_locked=True)

    async def change_token(self, conn: AsyncConnection | None) -> int:
        """No cheap change counter: every poll counts as a change, so waiters re-claim."""
        return next(self._ticks)

    def is_busy(self, exc: BaseException) -> bool:
        """Serialization failures and deadlocks, which PostgreSQL asks the client to retry."""
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        sqlstate = getattr(orig, "sqlstate", None) or getattr(
            getattr(orig, "__cause__", None), "sqlstate", None
        )
        return sqlstate in ("40001", "40P01", "55P03")

    def is_foreign_allowed(self) -> bool:
        """A server database is shared with the application's own tables by design."""
        return True
