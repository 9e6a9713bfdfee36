"""JobStore: every SQL statement on the job path.

Writes are synchronous functions of a SQLAlchemy ``Connection`` handed to a writer
(:mod:`persistq_async._writer`): on SQLite one thread commits whatever is pending as one
transaction (group commit); on PostgreSQL each runs in its own transaction. A caller that is
cancelled stops waiting, its write still completes as a whole; a claim whose caller went away is
handed back. Reads go through the async engine. Database errors are wrapped here, once, as
:class:`~persistq_async.DatabaseError`.

The attempt row of a delivery is written when the delivery ends (ack, nack, fail, expiry,
hand-back, cancel); while it runs, the job row carries its ``started_at`` and lease.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from sqlalchemy import (
    Integer,
    Row,
    bindparam,
    case,
    delete,
    func,
    insert,
    inspect,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import schema
from ._types import FINISHED_STATES, JobState
from ._writer import DirectWriter, Op, ThreadWriter, Writer, wrap_db_error
from .backends import Backend
from .errors import (
    DatabaseError,
    JobNotFound,
    JobStateError,
    LeaseLost,
    QueueClosed,
    SchemaError,
)
from .schema import ACTIVE, DEDUPE, FINISHED, QUEUED, RUNNING, attempts, jobs, meta

__all__ = ["AttemptRecord", "ClaimResult", "JobRecord", "JobStore", "NewJob", "wrap_db_error"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]

#: Rows the retention cleaner deletes per transaction.
CLEAN_CHUNK = 1000
#: Expired leases the rescuer handles per transaction.
RESCUE_CHUNK = 500
#: Longest a cancelled claim waits for its leases to be handed back before it lets go.
HANDBACK_WAIT = 10.0
#: The error recorded on a delivery whose lease ran out.
EXPIRED_ERROR = "lease expired (the consumer crashed, hung or lost the database)"

# ---------------------------------------------------------------------- prebuilt statements
# Built once: SQLAlchemy then reuses their cache keys and compiled SQL on every call.

_SETTLED_COLUMNS = (jobs.c.queue, jobs.c.state, jobs.c.attempts, jobs.c.started_at)
_FENCE = (
    jobs.c.id == bindparam("p_job_id", type_=jobs.c.id.type),
    jobs.c.lease_token == bindparam("p_token", type_=jobs.c.lease_token.type),
    RUNNING,
)
# started_at stays: RETURNING reports new values, and the attempt row needs the start.
_CLEARED = {"lease_token": None, "lease_expires_at": None}
_SPENT = jobs.c.attempts >= jobs.c.max_attempts

_ACK_MANY = (
    update(jobs)
    .where(*_FENCE)
    .values(
        state=JobState.DONE.value,
        result=bindparam("p_result", type_=jobs.c.result.type),
        finished_at=bindparam("p_now", type_=jobs.c.run_at.type),
        **_CLEARED,
    )
)
# Without RETURNING for executemany (bulk acks); with it for one ack that must explain a miss.
_ACK = _ACK_MANY.returning(*_SETTLED_COLUMNS)
# The running jobs among some ids, with their lease tokens (the check before bulk acks).
_LEASES = select(jobs.c.id, jobs.c.lease_token).where(
    jobs.c.id.in_(bindparam("p_ids", expanding=True)), RUNNING
)
_NACK = (
    update(jobs)
    .where(*_FENCE)
    .values(
        state=case((_SPENT, JobState.DEAD.value), else_=JobState.QUEUED.value),
        finished_at=case((_SPENT, bindparam("p_now", type_=jobs.c.run_at.type)), else_=None),
        run_at=bindparam("p_run_at", type_=jobs.c.run_at.type),
        last_error=bindparam("p_error", type_=jobs.c.last_error.type),
        **_CLEARED,
    )
    .returning(*_SETTLED_COLUMNS)
)
_FAIL = (
    update(jobs)
    .where(*_FENCE)
    .values(
        state=JobState.DEAD.value,
        finished_at=bindparam("p_now", type_=jobs.c.run_at.type),
        last_error=bindparam("p_error", type_=jobs.c.last_error.type),
        **_CLEARED,
    )
    .returning(*_SETTLED_COLUMNS)
)
_RELEASE = (
    update(jobs)
    .where(*_FENCE)
    .values(state=JobState.QUEUED.value, attempts=jobs.c.attempts - 1, **_CLEARED)
    .returning(*_SETTLED_COLUMNS)
)
_EXTEND = (
    update(jobs)
    .where(*_FENCE)
    .values(lease_expires_at=bindparam("p_expires", type_=jobs.c.run_at.type))
    .returning(jobs.c.id)
)
_INSERT_ATTEMPT = insert(attempts)
_ATTEMPT_OUTCOME = select(attempts.c.outcome).where(
    attempts.c.job_id == bindparam("p_job_id", type_=jobs.c.id.type),
    attempts.c.lease_token == bindparam("p_token", type_=jobs.c.lease_token.type),
)
_INSERT_JOB = insert(jobs)
_INSERT_JOB_RETURNING = insert(jobs).returning(jobs.c.id)
_EXPIRED = (
    select(
        jobs.c.id,
        jobs.c.queue,
        jobs.c.attempts,
        jobs.c.max_attempts,
        jobs.c.lease_token,
        jobs.c.started_at,
    )
    .where(RUNNING, jobs.c.lease_expires_at <= bindparam("p_now", type_=jobs.c.run_at.type))
    .limit(RESCUE_CHUNK)
)
_NEXT_DUE = select(
    select(func.min(jobs.c.run_at))
    .where(jobs.c.queue == bindparam("p_queue", type_=jobs.c.queue.type), QUEUED)
    .scalar_subquery(),
    select(func.min(jobs.c.lease_expires_at)).where(RUNNING).scalar_subquery(),
)


#: Rows one bulk put may insert: SQLite allows 32,766 bound values in a statement (3.32+).
BULK_PUT_ROWS = 2_000
_PUT_COLUMNS = (
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
)


@functools.lru_cache(maxsize=64)
def _multi_insert_sql(rows: int) -> str:
    """``INSERT INTO jobs (...) VALUES (?, ...), ...`` for ``rows`` rows (SQLite's paramstyle)."""
    one = "(" + ", ".join("?" * len(_PUT_COLUMNS)) + ")"
    return f"INSERT INTO {jobs.name} ({', '.join(_PUT_COLUMNS)}) VALUES " + ", ".join([one] * rows)


def _claim_statement(backend: Backend) -> Any:
    ready = backend.lock_claim(
        select(jobs.c.id)
        .where(
            jobs.c.queue == bindparam("p_queue", type_=jobs.c.queue.type),
            QUEUED,
            # The unary plus keeps SQLite from choosing the run_at index and sorting every due
            # row: walking the ready index in priority order stops after LIMIT rows.
            literal_column("+persistq_jobs.run_at", type_=jobs.c.run_at.type)
            <= bindparam("p_now", type_=jobs.c.run_at.type),
        )
        .order_by(jobs.c.priority.desc(), jobs.c.id)
        .limit(bindparam("p_limit", type_=Integer()))
    )
    return (
        update(jobs)
        .where(jobs.c.id.in_(ready.scalar_subquery()))
        .values(
            state=JobState.RUNNING.value,
            attempts=jobs.c.attempts + 1,
            lease_token=bindparam("p_token", type_=jobs.c.lease_token.type),
            lease_expires_at=bindparam("p_expires", type_=jobs.c.run_at.type),
            started_at=bindparam("p_now", type_=jobs.c.run_at.type),
        )
        .returning(*jobs.c)
    )


# ---------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """One job to insert: the payload already encoded."""

    payload: bytes
    priority: int
    run_at: float
    max_attempts: int
    dedupe_key: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """A row of the jobs table."""

    id: int
    queue: str
    state: JobState
    payload: bytes
    priority: int
    attempts: int
    max_attempts: int
    run_at: float
    enqueued_at: float
    created_at: float
    lease_token: str | None
    lease_expires_at: float | None
    started_at: float | None
    dedupe_key: str | None
    last_error: str | None
    result: bytes | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> JobRecord:
        """Build from a row selected or returned with every column of ``jobs``."""
        m = row._mapping
        return cls(
            id=m["id"],
            queue=m["queue"],
            state=JobState(m["state"]),
            payload=bytes(m["payload"]),
            priority=m["priority"],
            attempts=m["attempts"],
            max_attempts=m["max_attempts"],
            run_at=m["run_at"],
            enqueued_at=m["enqueued_at"],
            created_at=m["created_at"],
            lease_token=m["lease_token"],
            lease_expires_at=m["lease_expires_at"],
            started_at=m["started_at"],
            dedupe_key=m["dedupe_key"],
            last_error=m["last_error"],
            result=None if m["result"] is None else bytes(m["result"]),
            finished_at=m["finished_at"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """One delivery of a job; ``outcome`` is None for the delivery running now."""

    attempt: int
    started_at: float
    finished_at: float | None
    outcome: str | None
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimResult:
    """What a claim leased, and when the next job could become claimable (epoch seconds)."""

    records: list[JobRecord]
    next_due_at: float | None


_stores: weakref.WeakSet[JobStore] = weakref.WeakSet()


class JobStore:
    """The jobs table of one database, seen from one :class:`~persistq_async.Queue`.

    :param backend: the database's backend.
    :param clock: returns the time as epoch seconds; injectable so tests control lease expiry.
    """

    def __init__(self, backend: Backend, *, clock: Clock) -> None:
        self.backend = backend
        self.options = backend.options
        self.clock = clock
        self.where = backend.describe()
        self._engine: AsyncEngine | None = None
        self._writer: Writer | None = None
        self._watch_conn: AsyncConnection | None = None
        self._watch_lock = anyio.Lock()
        self._watch_value = 0
        self._watch_checked = -math.inf
        self._open = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._work_events: dict[str, anyio.Event] = {}
        self._change_events: dict[str, anyio.Event] = {}
        self._cancel_listeners: list[Callable[[str, int], None]] = []
        self._claim = _claim_statement(backend)
        self._insert: Any = sqlite_dialect.insert if backend.name == "sqlite" else pg_dialect.insert

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> JobStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create or check the schema, start the writer, connect the readers."""
        await self.backend.prepare()
        self._loop = asyncio.get_running_loop()
        try:
            with anyio.CancelScope(shield=True):
                self._engine = self.backend.create_engine()
                write_engine = self.backend.create_write_engine()
                if write_engine is not None:
                    writer = ThreadWriter(
                        write_engine.connect,
                        where=self.where,
                        is_busy=self.backend.is_busy,
                        maintain=getattr(self.backend, "maintain_wal", None),
                        before_batch=getattr(self.backend, "choose_sync", None),
                        lock=self.backend.writer_lock(),
                    )
                    try:
                        await writer.start(self._create_schema)
                    finally:
                        write_engine.dispose()
                    self._writer = writer
                else:
                    async with self._engine.connect() as conn:
                        await conn.run_sync(self._create_schema)
                    self._writer = DirectWriter(
                        self._engine, where=self.where, is_busy=self.backend.is_busy
                    )
                if self.backend.needs_watch_connection():
                    self._watch_conn = await self._engine.connect()
                await self.backend.start_watching(lambda queue: self._notify(queue, work=True))
        except BaseException as exc:
            await self._dispose()
            if isinstance(exc, DBAPIError):
                raise wrap_db_error(exc, "opening the queue", self.where) from exc
            if isinstance(exc, OSError):
                raise DatabaseError(f"opening the queue failed on {self.where}: {exc}") from exc
            raise
        self._open = True
        _stores.add(self)

    async def aclose(self) -> None:
        """Finish pending writes, stop the writer, close connections. Idempotent."""
        if not self._open:
            return
        self._open = False
        _stores.discard(self)
        await self._dispose()

    async def _dispose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.backend.stop_watching()
            if self._writer is not None:
                await self._writer.aclose()
                self._writer = None
            if self._watch_conn is not None:
                try:
                    await self._watch_conn.close()
                except SQLAlchemyError:
                    logger.debug("closing the watch connection failed", exc_info=True)
                self._watch_conn = None
            if self._engine is not None:
                await self._engine.dispose()
                self._engine = None

    def _check_open(self) -> Writer:
        if not self._open or self._writer is None:
            raise QueueClosed("the queue is closed (or was never opened with 'async with')")
        return self._writer

    @property
    def is_open(self) -> bool:
        """Whether the store accepts operations."""
        return self._open

    # ------------------------------------------------------------------ schema

    def _create_schema(self, conn: Connection) -> None:
        try:
            self._create_schema_in(conn)
        except DBAPIError as exc:
            raise wrap_db_error(exc, "opening the queue", self.where) from exc

    def _create_schema_in(self, conn: Connection) -> None:
        with conn.begin():
            self.backend.lock_schema(conn)
            tables = set(inspect(conn).get_table_names())
            if self.backend.name == "sqlite":
                app_id = conn.exec_driver_sql("PRAGMA application_id").scalar_one()
                if app_id not in (0, schema.APPLICATION_ID):
                    raise SchemaError(
                        f"{self.where} belongs to another application "
                        f"(application_id {app_id:#x}); refusing to use it as a queue"
                    )
            if meta.name in tables:
                self._check_version(conn)
            else:
                ours = {t for t in tables if t.startswith("persistq_")}
                foreign = sorted(tables - ours)
                if ours:
                    raise SchemaError(
                        f"{self.where} has persistq tables ({', '.join(sorted(ours))}) but no "
                        "schema version; it is damaged or from an unknown version"
                    )
                if foreign and not self.backend.is_foreign_allowed():
                    raise SchemaError(
                        f"{self.where} is an SQLite database of something else (tables: "
                        f"{', '.join(foreign[:5])}); refusing to add a queue to it"
                    )
                schema.metadata.create_all(conn)
                conn.execute(
                    insert(meta),
                    [
                        {"key": "schema_version", "value": str(schema.SCHEMA_VERSION)},
                        {"key": "application", "value": "persistq_async"},
                    ],
                )
                if self.backend.name == "sqlite":
                    conn.exec_driver_sql(f"PRAGMA application_id = {schema.APPLICATION_ID}")
                logger.info(
                    "schema created",
                    extra={"action": "schema_created", "version": schema.SCHEMA_VERSION},
                )
        self.backend.finish_schema(conn)

    def _check_version(self, conn: Connection) -> None:
        raw = conn.execute(
            select(meta.c.value).where(meta.c.key == "schema_version")
        ).scalar_one_or_none()
        try:
            version = int(raw) if raw is not None else 0
        except ValueError:
            version = 0
        if version < 1:
            raise SchemaError(f"{self.where}: unreadable schema version {raw!r}")
        if version > schema.SCHEMA_VERSION:
            raise SchemaError(
                f"{self.where} has schema version {version}, newer than this library's "
                f"{schema.SCHEMA_VERSION}; upgrade persistq_async"
            )
        for step in range(version, schema.SCHEMA_VERSION):
            schema.MIGRATIONS[step - 1](conn)
            logger.info("schema migrated", extra={"action": "schema_migrated", "version": step + 1})
        if version < schema.SCHEMA_VERSION:
            conn.execute(
                update(meta)
                .where(meta.c.key == "schema_version")
                .values(value=str(schema.SCHEMA_VERSION))
            )

    # ------------------------------------------------------------------ writing

    async def _write(
        self,
        fn: Callable[[Connection], T],
        *,
        on_commit: Callable[[T], None] | None = None,
        on_abandon: Callable[[T], None] | None = None,
        kind: str = "write",
    ) -> T:
        writer = self._check_open()
        return await writer.run(Op(fn, on_commit, on_abandon, kind=kind))

    # ------------------------------------------------------------------ wake-ups

    def work_event(self, queue: str) -> anyio.Event:
        """An event set when jobs of ``queue`` may have become claimable in this process."""
        event = self._work_events.get(queue)
        if event is None:
            event = self._work_events[queue] = anyio.Event()
        return event

    def change_event(self, queue: str) -> anyio.Event:
        """An event set when any job of ``queue`` changed state in this process."""
        event = self._change_events.get(queue)
        if event is None:
            event = self._change_events[queue] = anyio.Event()
        return event

    def _same_database(self) -> list[JobStore]:
        return [s for s in list(_stores) if s.where == self.where and s._loop is self._loop]

    def _notify(self, queue: str, *, work: bool) -> None:
        # Every queue object of this process on the same database and event loop.
        for store in self._same_database():
            if work:
                event = store._work_events.pop(queue, None)
                if event is not None:
                    event.set()
            event = store._change_events.pop(queue, None)
            if event is not None:
                event.set()

    def add_cancel_listener(self, listener: Callable[[str, int], None]) -> None:
        """Call ``listener(queue, job_id)`` when this process cancels a job."""
        self._cancel_listeners.append(listener)

    def remove_cancel_listener(self, listener: Callable[[str, int], None]) -> None:
        """Undo :meth:`add_cancel_listener`."""
        if listener in self._cancel_listeners:
            self._cancel_listeners.remove(listener)

    def _notify_cancelled(self, queue: str, job_id: int) -> None:
        for store in self._same_database():
            for listener in list(store._cancel_listeners):
                listener(queue, job_id)

    def known_change_token(self) -> int:
        """The change token as last read, without reading it again.

        What a claim loop takes *before* its claim: a token older than the claim can only make
        the wait after it return at once (one more claim, finding nothing), never miss a
        commit. Reading a fresh one there would put a round trip to the database before every
        claim, in the path from a put to its handler.
        """
        return self._watch_value

    async def change_token(self) -> int:
        """A number that changes when another connection committed; shared by waiters."""
        self._check_open()
        async with self._watch_lock:
            now = anyio.current_time()
            if now - self._watch_checked >= self.options.poll_interval / 4:
                try:
                    with anyio.CancelScope(shield=True):
                        self._watch_value = await self.backend.change_token(self._watch_conn)
                except DBAPIError as exc:
                    raise wrap_db_error(exc, "watching for changes", self.where) from exc
                self._watch_checked = now
            return self._watch_value

    # ------------------------------------------------------------------ puts

    def _row(self, queue: str, job: NewJob, now: float) -> dict[str, Any]:
        return {
            "queue": queue,
            "state": JobState.QUEUED.value,
            "payload": job.payload,
            "priority": job.priority,
            "attempts": 0,
            "max_attempts": job.max_attempts,
            "run_at": max(job.run_at, now),
            "enqueued_at": now,
            "created_at": now,
            "dedupe_key": job.dedupe_key,
        }

    def _put_fn(self, queue: str, new: Sequence[NewJob]) -> Callable[[Connection], list[int]]:
        """The put as a function of a connection, shared by both put paths."""

        def run(conn: Connection) -> list[int]:
            now = self.clock()
            rows = [self._row(queue, job, now) for job in new]
            self.backend.notify_work(conn, queue)
            if any(row["dedupe_key"] is not None for row in rows):
                return [self._put_deduped(conn, queue, row) for row in rows]
            if len(rows) == 1:
                return [conn.execute(_INSERT_JOB_RETURNING, rows[0]).scalar_one()]
            if self.backend.name == "sqlite":
                # executemany, then the ids by range: under the write lock AUTOINCREMENT hands
                # out consecutive ids, and RETURNING would make SQLAlchemy insert row by row.
                conn.execute(_INSERT_JOB, rows)
                last = int(conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one())
                return list(range(last - len(rows) + 1, last + 1))
            result = conn.execute(
                insert(jobs).returning(jobs.c.id, sort_by_parameter_order=True), rows
            )
            return list(result.scalars().all())

        return run

    def _put_deduped(self, conn: Connection, queue: str, row: dict[str, Any]) -> int:
        if row["dedupe_key"] is None:
            return int(conn.execute(_INSERT_JOB_RETURNING, row).scalar_one())
        stmt = (
            self._insert(jobs)
            .values(**row)
            .on_conflict_do_nothing(
                index_elements=[jobs.c.queue, jobs.c.dedupe_key], index_where=DEDUPE
            )
            .returning(jobs.c.id)
        )
        job_id = conn.execute(stmt).scalar_one_or_none()
        if job_id is None:
            job_id = conn.execute(
                select(jobs.c.id).where(
                    jobs.c.queue == queue, jobs.c.dedupe_key == row["dedupe_key"], ACTIVE
                )
            ).scalar_one()
        return int(job_id)

    async def put(self, queue: str, new: Sequence[NewJob]) -> list[int]:
        """Insert jobs in one transaction; returns their ids (or the dedupe holders' ids)."""
        writer = self._check_open()
        op: Op[list[int]] = Op(
            self._put_fn(queue, new),
            lambda _ids: self._notify(queue, work=True),
            kind="put",
        )
        if (
            self.backend.name == "sqlite"
            and len(new) <= BULK_PUT_ROWS
            and all(job.dedupe_key is None for job in new)
        ):
            op.bulk = self._bulk_put
            op.data = (queue, new)
        return await writer.run(op)

    def _bulk_put(self, conn: Connection, ops: list[Op[Any]]) -> bool:
        """The puts of one batch (SQLite, no dedupe keys) as one multi-row ``INSERT``.

        One statement is atomic: if it fails, nothing of it was written, and False sends the
        puts one by one so that each gets its own outcome. Under the write lock AUTOINCREMENT
        hands out consecutive ids in the order of the rows, so the last id gives all of them.
        """
        now = self.clock()
        rows = [self._row(op.data[0], job, now) for op in ops for job in op.data[1]]
        if len(rows) > BULK_PUT_ROWS:
            return False
        params = [row[column] for row in rows for column in _PUT_COLUMNS]
        try:
            last = conn.exec_driver_sql(_multi_insert_sql(len(rows)), tuple(params)).lastrowid
        except DBAPIError as exc:
            if self.backend.is_busy(exc):
                raise
            logger.debug("a bulk put failed; the puts run one by one", exc_info=True)
            return False
        if last is None:  # pragma: no cover - sqlite3 always reports the last rowid
            raise DatabaseError(f"writing failed on {self.where}: no id for a bulk insert")
        next_id = int(last) - len(rows) + 1
        for op in ops:
            count = len(op.data[1])
            op.result = list(range(next_id, next_id + count))
            next_id += count
        for queue in sorted({op.data[0] for op in ops}):
            self.backend.notify_work(conn, queue)
        return True

    async def put_in(
        self, connection: AsyncConnection, queue: str, new: Sequence[NewJob]
    ) -> list[int]:
        """Insert jobs through the caller's own connection, inside its transaction."""
        self._check_open()
        try:
            return await connection.run_sync(self._put_fn(queue, new))
        except DBAPIError as exc:
            raise wrap_db_error(
                exc, "putting a job through the caller's connection", self.where
            ) from exc

    # ------------------------------------------------------------------ claims

    def _claim_fn(
        self, queue: str, limit: int, lease_seconds: float
    ) -> Callable[[Connection], ClaimResult]:
        def run(conn: Connection) -> ClaimResult:
            now = self.clock()
            self._rescue(conn, now)
            params = {
                "p_queue": queue,
                "p_now": now,
                "p_limit": limit,
                "p_token": uuid.uuid4().hex,
                "p_expires": now + lease_seconds,
            }
            records = [JobRecord.from_row(r) for r in conn.execute(self._claim, params)]
            records.sort(key=lambda r: (-r.priority, r.id))
            next_due = None
            if len(records) < limit:
                due, expiry = conn.execute(_NEXT_DUE, {"p_queue": queue}).one()
                candidates = [t for t in (due, expiry) if t is not None]
                next_due = min(candidates) if candidates else None
            return ClaimResult(records=records, next_due_at=next_due)

        return run

    async def claim(self, queue: str, limit: int, lease_seconds: float) -> ClaimResult:
        """Lease up to ``limit`` ready jobs of ``queue``, highest priority first, FIFO within one.

        If the caller is cancelled, leases the claim took are handed back before the
        cancellation reaches it (bounded by ``HANDBACK_WAIT``).
        """
        writer = self._check_open()
        handbacks: list[Op[Any]] = []

        def abandon(result: ClaimResult) -> None:
            for record in result.records:
                assert record.lease_token is not None
                logger.debug(
                    "claim abandoned by a cancelled caller; handing the lease back",
                    extra={"action": "job_released", "job_id": record.id, "queue": queue},
                )
                op: Op[Any] = Op(self._release_fn(record.id, record.lease_token, queue))
                handbacks.append(op)
                writer.submit_nowait(op)

        op = Op(self._claim_fn(queue, limit, lease_seconds), None, abandon, kind="claim")
        try:
            return await writer.run(op)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                with anyio.CancelScope(shield=True), anyio.move_on_after(HANDBACK_WAIT):
                    await op.done.wait()
                    await writer.flush()
                    for handback in handbacks:
                        await handback.done.wait()
            raise

    def _rescue(self, conn: Connection, now: float) -> int:
        rows = conn.execute(_EXPIRED, {"p_now": now}).all()
        if not rows:
            return 0
        # Re-check the expiry: on PostgreSQL another process may have rescued and re-leased a
        # job since the select, and its fresh lease must not be revoked.
        rescued = set(
            conn.execute(
                update(jobs)
                .where(jobs.c.id.in_([r.id for r in rows]), RUNNING, jobs.c.lease_expires_at <= now)
                .values(
                    state=case((_SPENT, JobState.DEAD.value), else_=JobState.QUEUED.value),
                    finished_at=case((_SPENT, now), else_=None),
                    run_at=now,
                    last_error=EXPIRED_ERROR,
                    **_CLEARED,
                )
                .returning(jobs.c.id)
            ).scalars()
        )
        rows = [r for r in rows if r.id in rescued]
        if not rows:
            return 0
        for queue in sorted({r.queue for r in rows}):
            self.backend.notify_work(conn, queue)
        conn.execute(
            _INSERT_ATTEMPT,
            [
                {
                    "job_id": r.id,
                    "attempt": r.attempts,
                    "lease_token": r.lease_token,
                    "started_at": r.started_at if r.started_at is not None else now,
                    "finished_at": now,
                    "outcome": "expired",
                    "error": EXPIRED_ERROR,
                }
                for r in rows
            ],
        )
        for r in rows:
            dead = r.attempts >= r.max_attempts
            logger.info(
                "lease of job %d expired; job is %s",
                r.id,
                "dead" if dead else "queued again",
                extra={
                    "action": "job_dead" if dead else "job_rescued",
                    "job_id": r.id,
                    "queue": r.queue,
                    "attempts": r.attempts,
                },
            )
        return len(rows)

    async def rescue(self) -> int:
        """Move jobs whose lease expired back to queued (or to dead when attempts are spent)."""
        return await self._write(
            lambda conn: self._rescue(conn, self.clock()), on_commit=self._notify_all_work
        )

    def _notify_all_work(self, count: int) -> None:
        if count:
            for queue in list(self._work_events):
                self._notify(queue, work=True)

    # ------------------------------------------------------------------ outcomes

    def _settle(
        self,
        conn: Connection,
        statement: Any,
        params: dict[str, Any],
        outcome: str,
        error: str | None,
    ) -> Row[Any] | None:
        """Apply an outcome to a running job fenced by its token; None if already applied."""
        job_id, token, now = params["p_job_id"], params["p_token"], params["p_now"]
        row = conn.execute(statement, params).one_or_none()
        if row is not None:
            conn.execute(
                _INSERT_ATTEMPT,
                {
                    "job_id": job_id,
                    "attempt": row.attempts,
                    "lease_token": token,
                    "started_at": row.started_at if row.started_at is not None else now,
                    "finished_at": now,
                    "outcome": outcome,
                    "error": error,
                },
            )
            return row
        # Not running under this token: either this very outcome was applied already (a retry
        # after a cancelled call), or the lease is gone. Nothing was written either way.
        previous = conn.execute(_ATTEMPT_OUTCOME, {"p_job_id": job_id, "p_token": token}).scalars()
        outcomes = set(previous)
        if outcome in outcomes:
            return None
        current = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one_or_none()
        if current is None:
            reason = "the job was deleted"
        elif current == JobState.CANCELLED or "cancelled" in outcomes:
            reason = "the job was cancelled"
        elif "expired" in outcomes:
            reason = "the lease expired and the job was rescued"
        elif "released" in outcomes:
            reason = "the lease was handed back"
        elif current == JobState.RUNNING:
            reason = "the lease expired and another consumer took the job"
        else:
            reason = f"the job is {current} now"
        raise LeaseLost(f"job {job_id}: lease lost ({reason}); the outcome was not applied")

    async def ack(
        self,
        job_id: int,
        token: str,
        result: bytes | None,
        *,
        queue: str | None = None,
        attempt: int | None = None,
        started_at: float | None = None,
    ) -> None:
        """Mark a delivery done, storing ``result``.

        Given the delivery's ``queue``, ``attempt`` and ``started_at`` (a :class:`Job` knows
        them), acks committed together are written with one statement each for all of them.

        :raises LeaseLost: when the lease is no longer this delivery's.
        """

        def run(conn: Connection) -> str | None:
            params = {
                "p_job_id": job_id,
                "p_token": token,
                "p_now": self.clock(),
                "p_result": result,
            }
            row = self._settle(conn, _ACK, params, "acked", None)
            return None if row is None else str(row.queue)

        writer = self._check_open()
        op: Op[str | None] = Op(run, self._changed, kind="ack")
        if queue is not None and attempt is not None and started_at is not None:
            op.bulk = self._bulk_ack
            op.data = (job_id, token, result, queue, attempt, started_at)
        await writer.run(op)

    def _bulk_ack(self, conn: Connection, ops: list[Op[Any]]) -> bool:
        """Acks of one batch as one select and two executemany statements; False (nothing
        written) when any of them is not plainly running under its token, so they go one by
        one and report why."""
        found = [op.data for op in ops]
        ids = [job_id for job_id, _, _, _, _, _ in found]
        if len(set(ids)) != len(ids):
            return False  # the same job twice: the second must report the first's outcome
        # The write lock is held from here to the commit: what this select sees, the updates
        # find. Checking first costs one statement where a savepoint around them cost two.
        leased = dict(conn.execute(_LEASES, {"p_ids": ids}).all())
        if any(leased.get(job_id) != token for job_id, token, _, _, _, _ in found):
            return False
        now = self.clock()
        updated = conn.execute(
            _ACK_MANY,
            [
                {"p_job_id": job_id, "p_token": token, "p_result": result, "p_now": now}
                for job_id, token, result, _, _, _ in found
            ],
        ).rowcount
        if conn.dialect.supports_sane_multi_rowcount and updated != len(ops):
            # Cannot happen under the write lock; fail the batch (rolled back) rather than guess.
            raise DatabaseError(
                f"writing failed on {self.where}: {updated} of {len(ops)} acks applied"
            )
        conn.execute(
            _INSERT_ATTEMPT,
            [
                {
                    "job_id": job_id,
                    "attempt": attempt,
                    "lease_token": token,
                    "started_at": started_at,
                    "finished_at": now,
                    "outcome": "acked",
                    "error": None,
                }
                for job_id, token, _, _, attempt, started_at in found
            ],
        )
        for op, (_, _, _, queue, _, _) in zip(ops, found, strict=True):
            op.result = queue
        return True

    def _changed(self, queue: str | None) -> None:
        if queue is not None:
            self._notify(queue, work=False)

    async def nack(self, job_id: int, token: str, run_at: float, error: str | None) -> JobState:
        """Retry a delivery at ``run_at``, or make the job dead when its attempts are spent.

        :returns: the job's new state (QUEUED or DEAD).
        """

        def run(conn: Connection) -> tuple[JobState, str | None]:
            now = self.clock()
            params = {
                "p_job_id": job_id,
                "p_token": token,
                "p_now": now,
                "p_run_at": max(run_at, now),
                "p_error": error,
            }
            row = self._settle(conn, _NACK, params, "nacked", error)
            if row is not None and row.state == JobState.QUEUED:
                self.backend.notify_work(conn, str(row.queue))
            if row is None:
                current = conn.execute(
                    select(jobs.c.state).where(jobs.c.id == job_id)
                ).scalar_one_or_none()
                return JobState(current or JobState.DEAD), None
            return JobState(row.state), str(row.queue)

        def committed(result: tuple[JobState, str | None]) -> None:
            if result[1] is not None:
                self._notify(result[1], work=True)

        state, _ = await self._write(run, on_commit=committed)
        return state

    async def fail(self, job_id: int, token: str, error: str | None) -> None:
        """Make the job dead now, whatever its attempts."""

        def run(conn: Connection) -> str | None:
            params = {"p_job_id": job_id, "p_token": token, "p_now": self.clock(), "p_error": error}
            row = self._settle(conn, _FAIL, params, "failed", error)
            return None if row is None else str(row.queue)

        await self._write(run, on_commit=self._changed)

    def _release_fn(self, job_id: int, token: str, queue: str) -> Callable[[Connection], bool]:
        def run(conn: Connection) -> bool:
            params = {"p_job_id": job_id, "p_token": token, "p_now": self.clock()}
            row = conn.execute(_RELEASE, params).one_or_none()
            if row is None:
                return False  # already gone: handing back is idempotent
            self.backend.notify_work(conn, queue)
            conn.execute(
                _INSERT_ATTEMPT,
                {
                    "job_id": job_id,
                    "attempt": row.attempts + 1,
                    "lease_token": token,
                    "started_at": row.started_at if row.started_at is not None else params["p_now"],
                    "finished_at": params["p_now"],
                    "outcome": "released",
                    "error": None,
                },
            )
            return True

        return run

    async def release(self, job_id: int, token: str, queue: str) -> bool:
        """Hand a lease back without counting the attempt (shutdown, cancellation).

        Idempotent: a lease that is already gone is left alone. Returns whether it was handed back.
        """

        def committed(released: bool) -> None:
            if released:
                self._notify(queue, work=True)

        return await self._write(self._release_fn(job_id, token, queue), on_commit=committed)

    async def extend(self, job_id: int, token: str, seconds: float) -> float:
        """Make the lease end ``seconds`` from now; returns the new expiry.

        :raises LeaseLost: when the lease is no longer this delivery's.
        """

        def run(conn: Connection) -> float:
            expires = self.clock() + seconds
            params = {"p_job_id": job_id, "p_token": token, "p_expires": expires}
            if conn.execute(_EXTEND, params).one_or_none() is None:
                raise LeaseLost(f"job {job_id}: lease lost; it cannot be extended")
            return expires

        return await self._write(run, kind="extend")

    # ------------------------------------------------------------------ CRUD

    def _state_of(self, conn: Connection, queue: str, job_id: int) -> Any:
        row = conn.execute(
            select(jobs.c.state, jobs.c.lease_token, jobs.c.started_at, jobs.c.attempts).where(
                jobs.c.id == job_id, jobs.c.queue == queue
            )
        ).one_or_none()
        if row is None:
            raise JobNotFound(f"no job {job_id} in queue {queue!r}")
        return row

    async def cancel(self, queue: str, job_id: int) -> bool:
        """Cancel a queued or running job; False when it had already finished."""

        def run(conn: Connection) -> bool:
            now = self.clock()
            row = self._state_of(conn, queue, job_id)
            if JobState(row.state) in FINISHED_STATES:
                return False
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(state=JobState.CANCELLED.value, finished_at=now, **_CLEARED)
            )
            if row.state == JobState.RUNNING:
                conn.execute(
                    _INSERT_ATTEMPT,
                    {
                        "job_id": job_id,
                        "attempt": row.attempts,
                        "lease_token": row.lease_token,
                        "started_at": row.started_at if row.started_at is not None else now,
                        "finished_at": now,
                        "outcome": "cancelled",
                        "error": "cancelled",
                    },
                )
            return True

        def committed(cancelled: bool) -> None:
            if cancelled:
                self._notify(queue, work=False)
                self._notify_cancelled(queue, job_id)

        return await self._write(run, on_commit=committed)

    async def requeue(self, queue: str, job_id: int) -> None:
        """Put a done, dead or cancelled job back in the queue with its attempts reset."""

        def run(conn: Connection) -> None:
            now = self.clock()
            row = self._state_of(conn, queue, job_id)
            if JobState(row.state) not in FINISHED_STATES:
                raise JobStateError(
                    f"job {job_id} is {row.state}; only done, dead or cancelled jobs can be "
                    "requeued"
                )
            try:
                with conn.begin_nested():
                    conn.execute(
                        update(jobs)
                        .where(jobs.c.id == job_id)
                        .values(
                            state=JobState.QUEUED.value,
                            attempts=0,
                            run_at=now,
                            enqueued_at=now,
                            finished_at=None,
                            result=None,
                        )
                    )
            except IntegrityError as exc:
                raise JobStateError(
                    f"job {job_id}: another active job holds its dedupe_key; not requeued"
                ) from exc
            self.backend.notify_work(conn, queue)

        await self._write(run, on_commit=lambda _: self._notify(queue, work=True))

    async def delete(self, queue: str, job_id: int) -> None:
        """Delete a job and its history."""

        def run(conn: Connection) -> None:
            self._state_of(conn, queue, job_id)
            conn.execute(delete(attempts).where(attempts.c.job_id == job_id))
            conn.execute(delete(jobs).where(jobs.c.id == job_id))

        await self._write(run, on_commit=lambda _: self._notify(queue, work=False))

    async def purge(self, queue: str, state: JobState) -> int:
        """Delete every job of ``queue`` in ``state``; returns how many."""

        def run(conn: Connection) -> int:
            chosen = select(jobs.c.id).where(jobs.c.queue == queue, jobs.c.state == state.value)
            conn.execute(delete(attempts).where(attempts.c.job_id.in_(chosen)))
            result = conn.execute(
                delete(jobs).where(jobs.c.queue == queue, jobs.c.state == state.value)
            )
            return int(result.rowcount)

        return await self._write(run, on_commit=lambda _: self._notify(queue, work=False))

    async def clean(self, older_than: float) -> int:
        """Delete finished jobs (all queues) that finished before ``older_than`` (epoch seconds)."""

        def run(conn: Connection) -> int:
            if not self.backend.try_lock_maintenance(conn):
                return 0  # another process is cleaning right now
            ids = list(
                conn.execute(
                    select(jobs.c.id)
                    .where(FINISHED, jobs.c.finished_at < older_than)
                    .limit(CLEAN_CHUNK)
                ).scalars()
            )
            if ids:
                conn.execute(delete(attempts).where(attempts.c.job_id.in_(ids)))
                conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
            return len(ids)

        total = 0
        while True:
            count = await self._write(run)
            total += count
            if count < CLEAN_CHUNK:
                break
        if total:
            logger.info("cleaned finished jobs", extra={"action": "jobs_cleaned", "count": total})
        return total

    # ------------------------------------------------------------------ reads

    async def _read(self, fn: Callable[[AsyncConnection], Awaitable[T]], action: str) -> T:
        self._check_open()
        engine = self._engine
        assert engine is not None
        try:
            # Shielded: abandoning a statement mid-flight would leave its connection busy.
            with anyio.CancelScope(shield=True):
                async with engine.connect() as conn:
                    result = await fn(conn)
        except DBAPIError as exc:
            raise wrap_db_error(exc, action, self.where) from exc
        return result

    async def counts(self, queue: str) -> dict[JobState, int]:
        """The number of jobs of ``queue`` in each state."""

        async def run(conn: AsyncConnection) -> dict[JobState, int]:
            rows = await conn.execute(
                select(jobs.c.state, func.count())
                .where(jobs.c.queue == queue)
                .group_by(jobs.c.state)
            )
            counts = dict.fromkeys(JobState, 0)
            for state, count in rows:
                counts[JobState(state)] = count
            return counts

        return await self._read(run, "reading stats")

    async def active_count(self, queue: str) -> int:
        """Queued (delayed included) plus running jobs of ``queue``."""

        async def run(conn: AsyncConnection) -> int:
            stmt = select(func.count()).select_from(jobs).where(jobs.c.queue == queue, ACTIVE)
            return int((await conn.execute(stmt)).scalar_one())

        return await self._read(run, "counting jobs")

    async def get(self, queue: str, job_id: int) -> tuple[JobRecord, list[AttemptRecord]] | None:
        """One job and its attempts (the running one last), or None."""

        async def run(conn: AsyncConnection) -> tuple[JobRecord, list[AttemptRecord]] | None:
            row = (
                await conn.execute(select(jobs).where(jobs.c.id == job_id, jobs.c.queue == queue))
            ).one_or_none()
            if row is None:
                return None
            record = JobRecord.from_row(row)
            found = await conn.execute(
                select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.id)
            )
            return record, _history(record, list(found))

        return await self._read(run, "reading a job")

    async def list_jobs(
        self, queue: str, state: JobState | None, limit: int, offset: int
    ) -> list[tuple[JobRecord, list[AttemptRecord]]]:
        """Jobs of ``queue`` (in ``state``), oldest first, with their attempts."""

        async def run(conn: AsyncConnection) -> list[tuple[JobRecord, list[AttemptRecord]]]:
            stmt = select(jobs).where(jobs.c.queue == queue)
            if state is not None:
                stmt = stmt.where(jobs.c.state == state.value)
            result = await conn.execute(stmt.order_by(jobs.c.id).limit(limit).offset(offset))
            records = [JobRecord.from_row(r) for r in result]
            found: dict[int, list[Row[Any]]] = {r.id: [] for r in records}
            if records:
                rows = await conn.execute(
                    select(attempts)
                    .where(attempts.c.job_id.in_(list(found)))
                    .order_by(attempts.c.id)
                )
                for a in rows:
                    found[a.job_id].append(a)
            return [(r, _history(r, found[r.id])) for r in records]

        return await self._read(run, "listing jobs")

    async def queue_names(self) -> list[str]:
        """Every queue name that has jobs."""

        async def run(conn: AsyncConnection) -> list[str]:
            rows = await conn.execute(select(jobs.c.queue).distinct().order_by(jobs.c.queue))
            return list(rows.scalars())

        return await self._read(run, "listing queues")


def _history(record: JobRecord, rows: list[Row[Any]]) -> list[AttemptRecord]:
    history = [
        AttemptRecord(
            attempt=row.attempt,
            started_at=row.started_at,
            finished_at=row.finished_at,
            outcome=row.outcome,
            error=row.error,
        )
        for row in rows
    ]
    if record.state == JobState.RUNNING and record.started_at is not None:
        history.append(
            AttemptRecord(
                attempt=record.attempts,
                started_at=record.started_at,
                finished_at=None,
                outcome=None,
                error=None,
            )
        )
    return history
