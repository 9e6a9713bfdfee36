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
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
from sqlalchemy import Select, bindparam, event, func, insert, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .._types import JobState
from ..schema import DEDUPE, attempts, jobs, queue_settings
from .base import Backend, error_chain
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
#: SQLSTATEs a later try can get past. 40001 serialization failure, 40P01 deadlock, 55P03 lock
#: not available: the server rolled the transaction back. 57P01 admin shutdown, 57P02 crash
#: shutdown, 57P03 cannot connect now (starting or shutting down), 53300 too many connections:
#: the server is going away, coming back, or full. Class 08: the connection failed.
_TRANSIENT_STATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300"})
#: Those among them that prove the transaction did not commit: rolled back by the server
#: (conflicts), or raised while connecting (57P03 and 53300 come before any statement; 08001
#: and 08004 are a connection that could not be made or was refused).
_NEVER_COMMITTED_STATES = frozenset({"40001", "40P01", "55P03", "57P03", "53300", "08001", "08004"})

#: The driver's errors about the connection itself (through SQLAlchemy's adapter, or asyncpg's
#: own from the native statements: InternalClientError is its "another operation").
_INTERFACE_ERRORS = frozenset({"InterfaceError", "InternalClientError"})
_BROKEN_CONNECTION = re.compile(r"closed|another operation|cannot switch to state", re.IGNORECASE)

# One statement for a single put: the row, its id, and the notification at commit (repeated
# notifications of one transaction are folded into one by the server).
_INSERT_ONE = Prepared(
    insert(jobs)
    .values({c: bindparam(c.key, type_=c.type) for c in jobs.c if c.key in _PUT_COLUMNS})
    .returning(jobs.c.id, func.pg_notify(CHANNEL, jobs.c.queue))
)


# The hot writes as driver-level statements (see PostgresBackend.native_writes), their SQL
# written once from the schema's own names. Each is one statement in autocommit: atomic alone.
_J, _A = jobs.name, attempts.name
_NATIVE_COLUMNS = tuple(c.key for c in jobs.c if c.key in _PUT_COLUMNS)
_PG_TYPE = {"queue": "text", "state": "text", "payload": "bytea", "priority": "int4"}
_PG_TYPE |= {"attempts": "int4", "max_attempts": "int4", "run_at": "float8"}
_PG_TYPE |= {"enqueued_at": "float8", "created_at": "float8", "dedupe_key": "text"}
_PG_TYPE |= {"tags": "text", "headers": "text"}
_COLUMN_LIST = ", ".join(_NATIVE_COLUMNS)
#: One row: its id, and the notification at commit.
NATIVE_INSERT_ONE = (
    f"INSERT INTO {_J} ({_COLUMN_LIST}) "
    f"VALUES ({', '.join(f'${i + 1}::{_PG_TYPE[c]}' for i, c in enumerate(_NATIVE_COLUMNS))}) "
    f"RETURNING id, pg_notify('{CHANNEL}', queue)"
)
#: Many rows from one array per column, inserted in the arrays' order (so their ids, drawn from
#: the sequence row by row, ascend in that order), and one notification per queue.
NATIVE_INSERT_MANY = (
    f"WITH ins AS (INSERT INTO {_J} ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM unnest("
    + ", ".join(f"${i + 1}::{_PG_TYPE[c]}[]" for i, c in enumerate(_NATIVE_COLUMNS))
    + f") WITH ORDINALITY AS r({_COLUMN_LIST}, ord) ORDER BY ord RETURNING id, queue) "
    f"SELECT array_agg(id ORDER BY id), (SELECT count(pg_notify('{CHANNEL}', q)) "
    "FROM (SELECT DISTINCT queue AS q FROM ins) AS d) FROM ins"
)
#: Acks fenced by their lease tokens, with their attempt rows; the rows applied.
NATIVE_ACK = (
    f"WITH acked AS (UPDATE {_J} AS j SET state = '{JobState.DONE.value}', result = u.result, "
    "finished_at = $4, lease_token = NULL, lease_expires_at = NULL "
    "FROM unnest($1::int8[], $2::text[], $3::bytea[]) AS u(id, token, result) "
    f"WHERE j.id = u.id AND j.lease_token = u.token AND j.state = '{JobState.RUNNING.value}' "
    "RETURNING j.id, j.queue, j.attempts, j.started_at, j.run_at, u.token), "
    f"att AS (INSERT INTO {_A} (job_id, attempt, lease_token, started_at, finished_at, outcome, "
    "error, ready_at) SELECT id, attempts, token, coalesce(started_at, $4), $4, 'acked', NULL, "
    "run_at FROM acked) SELECT id, queue FROM acked"
)

#: A claim of a queue without flow control while no lease has expired (else None: the caller
#: claims the usual way, which rescues and admits first): the leased rows, and when more could
#: become claimable, read in the same snapshot (so the rows just leased are left out of the
#: queue's earliest run_at, and their new leases count in the earliest expiry).
_S = queue_settings.name
NATIVE_CLAIM = (
    "WITH g AS (SELECT (EXISTS (SELECT 1 FROM "
    f"{_S} AS s WHERE s.queue = $1 AND (s.paused <> 0 OR s.rate_count IS NOT NULL OR "
    f"s.max_running IS NOT NULL)) OR EXISTS (SELECT 1 FROM {_J} WHERE state = "
    f"'{JobState.RUNNING.value}' AND lease_expires_at <= $2::float8)) AS refused), "
    f"c AS (UPDATE {_J} SET state = '{JobState.RUNNING.value}', attempts = attempts + 1, "
    "lease_token = $4::text, lease_expires_at = $5::float8, started_at = $2::float8 "
    f"WHERE id IN (SELECT id FROM {_J} WHERE queue = $1::text AND state = "
    f"'{JobState.QUEUED.value}' AND run_at <= $2::float8 ORDER BY priority DESC, id "
    "LIMIT $3::int4 FOR UPDATE SKIP LOCKED) AND NOT (SELECT refused FROM g) "
    f"RETURNING {_J}.*), n AS (SELECT count(*) AS taken FROM c) "
    "SELECT g.refused AS p_refused, CASE WHEN n.taken < $3::int4 THEN (SELECT min(run_at) "
    f"FROM {_J} AS q WHERE q.queue = $1::text AND q.state = '{JobState.QUEUED.value}' AND "
    "q.id NOT IN (SELECT id FROM c)) END AS p_due, CASE WHEN n.taken < $3::int4 THEN "
    f"(SELECT CASE WHEN n.taken > 0 THEN least(min(lease_expires_at), $5::float8) ELSE "
    f"min(lease_expires_at) END FROM {_J} WHERE state = '{JobState.RUNNING.value}') END "
    "AS p_expiry, c.* FROM g CROSS JOIN n LEFT JOIN c ON true"
)


def _reject_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """At checkout: a connection the server closed (a restart) is replaced, without the round
    trip of a pre-ping. asyncpg sees the server's goodbye on the idle socket, so this catches
    what a restart leaves in the pool; a connection lost later fails its statement, which the
    writes' transient-error retries get past."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver.is_closed():
        raise DisconnectionError("the connection was closed by the server")


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
        """A small pool; connections the server closed are replaced at checkout (no pre-ping:
        it cost a ``BEGIN; ROLLBACK`` round trip on every write)."""
        engine = create_async_engine(self.url, pool_size=4, max_overflow=4)
        event.listen(engine.sync_engine, "checkout", _reject_closed)
        return engine

    async def prepare(self) -> None:
        """Nothing to check before connecting (without ``create``, the schema check refuses a
        database that has no persistq tables)."""

    def lock_schema(self, conn: Connection) -> None:
        """Hold a transaction-scoped advisory lock so concurrent starts migrate once."""
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})

    def lock_claim(self, select: Select[Any]) -> Select[Any]:
        """Rows another claimer holds are skipped, not waited for."""
        return select.with_for_update(skip_locked=True)

    def lock_settings_row(self, select: Select[Any]) -> Select[Any] | None:
        """``FOR UPDATE``: claims of a capped or rate-limited queue take turns on its settings
        row, so two of them cannot both take the last slot or the last token."""
        return select.with_for_update()

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

    def is_transient(self, exc: BaseException) -> bool:
        """Connection lost or refused, the server shutting down or starting up (57P01,
        57P02, 57P03), too many connections (53300), serialization failures (40001),
        deadlocks (40P01) and lock timeouts (55P03); see :meth:`Backend.is_transient`."""
        for item in error_chain(exc):
            state = getattr(item, "sqlstate", None)
            if isinstance(state, str) and (state in _TRANSIENT_STATES or state.startswith("08")):
                return True
            if getattr(item, "connection_invalidated", False):
                return True  # SQLAlchemy's verdict: the dialect saw a disconnect
            if isinstance(item, (OSError, TimeoutError)):
                return True  # refused, reset, unreachable, or a connect that timed out
            names = {cls.__name__ for cls in type(item).__mro__}
            if names & _INTERFACE_ERRORS and _BROKEN_CONNECTION.search(str(item)):
                # asyncpg, on a connection the server dropped or an interrupted operation left
                # unusable ("connection is closed", "closed in the middle of operation",
                # "cannot switch to state ..., another operation is in progress"). Other
                # interface errors are mistakes in a statement, and permanent.
                return True
        return False

    def never_committed(self, exc: BaseException) -> bool:
        """A conflict the server rolled back, or a connection that was never made (refused,
        or the server not accepting connections yet); see :meth:`Backend.never_committed`."""
        for item in error_chain(exc):
            state = getattr(item, "sqlstate", None)
            if isinstance(state, str) and state in _NEVER_COMMITTED_STATES:
                return True
            if isinstance(item, (ConnectionRefusedError, socket.gaierror)):
                return True
        return False

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

    def insert_settings_row(self, conn: Connection, queue: str, now: float) -> None:
        """``INSERT ... ON CONFLICT DO NOTHING`` on the queue name."""
        conn.execute(
            pg_insert(queue_settings)
            .values(queue=queue, paused=0, updated_at=now)
            .on_conflict_do_nothing(index_elements=[queue_settings.c.queue])
        )

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

    def native_writes(self) -> bool:
        """Puts and acks run as asyncpg prepared statements (asyncpg prepares each text once
        per connection), one statement each batch, in autocommit."""
        return True

    async def native_insert_jobs(self, driver: Any, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """One row: ``INSERT ... RETURNING id, pg_notify(...)``. Several: one ``INSERT ...
        SELECT FROM unnest(...)`` and one notification per queue."""
        if len(rows) == 1:
            row = rows[0]
            found = await driver.fetchrow(NATIVE_INSERT_ONE, *[row[c] for c in _NATIVE_COLUMNS])
            return [int(found[0])]
        columns = [[row[c] for row in rows] for c in _NATIVE_COLUMNS]
        found = await driver.fetchrow(NATIVE_INSERT_MANY, *columns)
        ids = [int(i) for i in found[0]]
        if len(ids) != len(rows):  # cannot happen: the statement inserts every row or fails
            raise RuntimeError(f"{len(ids)} ids for {len(rows)} rows")
        return ids

    async def native_ack(
        self, driver: Any, acks: Sequence[tuple[int, str, bytes | None]], now: float
    ) -> dict[int, str]:
        """``UPDATE ... FROM unnest(...)`` fenced by the tokens, and the attempt rows of the
        deliveries it applied, in one statement."""
        ids = [a[0] for a in acks]
        tokens = [a[1] for a in acks]
        results = [a[2] for a in acks]
        rows = await driver.fetch(NATIVE_ACK, ids, tokens, results, now)
        return {int(r[0]): str(r[1]) for r in rows}

    async def native_claim(
        self, driver: Any, *, queue: str, limit: int, now: float, token: str, expires: float
    ) -> tuple[list[Any], float | None, float | None] | None:
        """One statement: the rows leased (each with every column of the jobs table), the
        queue's earliest ``run_at`` and the earliest lease expiry (when fewer than ``limit``
        were leased); None, having written nothing, when the queue has flow control or a lease
        has expired (the usual claim rescues and admits first)."""
        found = await driver.fetch(NATIVE_CLAIM, queue, now, limit, token, expires)
        head = found[0]
        if head["p_refused"]:
            return None
        rows = [r for r in found if r["id"] is not None]
        return rows, head["p_due"], head["p_expiry"]
