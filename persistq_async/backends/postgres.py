"""PostgreSQL through asyncpg: ``FOR UPDATE SKIP LOCKED`` claims, advisory-locked migrations,
and ``LISTEN/NOTIFY`` wake-ups across machines.

A write that makes jobs claimable calls ``pg_notify`` inside its transaction, so the notification
is delivered at commit and only if it commits. Each queue object listens on one connection of its
own; a notification wakes its waiters at once. Notifications can be lost (the listening connection
drops, the server restarts), so waiters also claim on a slow poll: a lost notification delays a
job by at most ``SLOW_POLL`` seconds, it never strands it. The listener reconnects by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
from sqlalchemy import Select, bindparam, func, insert, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..schema import DEDUPE, jobs
from .base import Backend
from .prepared import Prepared

__all__ = ["PostgresBackend"]

logger = logging.getLogger(__name__)

# Arbitrary constant keys that name "persistq schema migration" and "persistq cleaning" among
# advisory locks.
_SCHEMA_LOCK_KEY = 0x70713031
_CLEAN_LOCK_KEY = 0x70713032
#: The channel every put notifies; the payload is the queue's name.
CHANNEL = "persistq_jobs"
#: Without notifications (listener down, or one lost), waiters still claim this often.
SLOW_POLL = 2.0
#: Seconds between attempts to reconnect a lost listener.
RECONNECT_DELAY = 1.0
#: Rows the puts of several callers in one batch may insert with one statement.
GROUPED_PUT_ROWS = 1_000
_PUT_COLUMNS = frozenset(
    {
        "queue",
        "state",
        "payload",
        "priority",
        "attempts",
        "max_attempts",
        "run_at",
        "enqueued_at",
        "created_at",
        "dedupe_key",
        "tags",
        "headers",
    }
)

# One statement for a single put: the row, its id, and the notification at commit (repeated
# notifications of one transaction are folded into one by the server).
_INSERT_ONE = Prepared(
    insert(jobs)
    .values({c: bindparam(c.key, type_=c.type) for c in jobs.c if c.key in _PUT_COLUMNS})
    .returning(jobs.c.id, func.pg_notify(CHANNEL, jobs.c.queue))
)


class PostgresBackend(Backend):
    """A PostgreSQL server shared by many worker processes and machines."""

    name = "postgresql"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changes = 0
        self._last_poll = -float("inf")
        self._listener: Any = None
        self._on_work: Callable[[str], None] | None = None
        self._next_connect = -float("inf")
        self._closing = False

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

    def try_lock_maintenance(self, conn: Connection) -> bool:
        """A transaction-scoped advisory lock: while one worker cleans, the others skip."""
        locked = conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _CLEAN_LOCK_KEY}
        ).scalar_one()
        return bool(locked)

    def notify_work(self, conn: Connection, queue: str) -> None:
        """``pg_notify`` at commit: consumers on every machine wake up."""
        conn.execute(
            text("SELECT pg_notify(:channel, :queue)"), {"channel": CHANNEL, "queue": queue}
        )

    async def start_watching(self, on_work: Callable[[str], None]) -> None:
        """Listen on :data:`CHANNEL`; failures are logged and retried, never raised."""
        self._on_work = on_work
        await self._connect_listener()

    async def _connect_listener(self) -> None:
        if self._listener is not None or self._closing:
            return
        now = anyio.current_time()
        if now < self._next_connect:
            return
        self._next_connect = now + RECONNECT_DELAY
        import asyncpg  # the postgres extra; imported here so SQLite users never need it

        dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            with anyio.fail_after(max(5.0, self.options.busy_timeout)):
                listener = await asyncpg.connect(dsn)
            await listener.add_listener(CHANNEL, self._notified)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            logger.warning(
                "cannot listen for notifications on %s (%s); polling every %.0fs",
                self.describe(),
                exc,
                SLOW_POLL,
                extra={"action": "listener_failed"},
            )
            return
        listener.add_termination_listener(self._terminated)
        self._listener = listener
        self._changes += 1  # anything may have happened while nobody listened

    def _notified(self, _conn: Any, _pid: int, _channel: str, queue: str) -> None:
        self._changes += 1
        if self._on_work is not None:
            self._on_work(queue)

    def _terminated(self, _conn: Any) -> None:
        if self._closing:
            return  # our own close, not a lost connection
        logger.warning(
            "the notification listener on %s was disconnected; reconnecting",
            self.describe(),
            extra={"action": "listener_failed"},
        )
        self._listener = None

    async def stop_watching(self) -> None:
        """Close the listening connection."""
        self._closing = True
        listener, self._listener = self._listener, None
        if listener is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await listener.close(timeout=5)
                except (OSError, TimeoutError, RuntimeError):
                    listener.terminate()

    async def change_token(self, conn: AsyncConnection | None) -> int:
        """Counts notifications; moves on its own every :data:`SLOW_POLL` seconds (and on every
        call while the listener is down), so a lost notification only delays a claim."""
        if self._listener is None and self._on_work is not None:
            await self._connect_listener()
        now = anyio.current_time()
        if self._listener is None or now - self._last_poll >= SLOW_POLL:
            self._last_poll = now
            self._changes += 1
        return self._changes

    def is_busy(self, exc: BaseException) -> bool:
        """Serialization failures and deadlocks, which PostgreSQL asks the client to retry."""
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        sqlstate = getattr(orig, "sqlstate", None) or getattr(
            getattr(orig, "__cause__", None), "sqlstate", None
        )
        return sqlstate in ("40001", "40P01", "55P03")

    def same_database(self, other: URL) -> bool:
        """The same host, port and database name."""
        if other.get_backend_name() != "postgresql":
            return False
        mine = self.url
        return (other.host, other.port or 5432, other.database) == (
            mine.host,
            mine.port or 5432,
            mine.database,
        )

    def insert_jobs(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """``INSERT ... RETURNING id``, ids in the order of the rows, with the notification of
        their queues in the same statement for one row."""
        if len(rows) == 1:
            return [int(_INSERT_ONE.rows(conn, rows[0])[0][0])]
        result = conn.execute(
            insert(jobs).returning(jobs.c.id, sort_by_parameter_order=True),
            [dict(row) for row in rows],
        )
        for queue in sorted({str(row["queue"]) for row in rows}):
            self.notify_work(conn, queue)
        return [int(job_id) for job_id in result.scalars()]

    def grouped_put_rows(self) -> int:
        """The single puts of a batch go in as one multi-row ``INSERT ... RETURNING``."""
        return GROUPED_PUT_ROWS

    def insert_deduplicated(self, conn: Connection, row: Mapping[str, Any]) -> int | None:
        """``INSERT ... ON CONFLICT DO NOTHING`` on the partial dedupe index; a server database
        is shared with the application's own tables by design, so no owner check."""
        stmt = (
            pg_insert(jobs)
            .values(**row)
            .on_conflict_do_nothing(
                index_elements=[jobs.c.queue, jobs.c.dedupe_key], index_where=DEDUPE
            )
            .returning(jobs.c.id)
        )
        job_id = conn.execute(stmt).scalar_one_or_none()
        return None if job_id is None else int(job_id)
