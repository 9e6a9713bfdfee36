"""JobStore: every SQL statement on the job path, behind one writer per queue.

Writes (put, claim, ack, nack, fail, release, extend, CRUD) are handed to a single writer task that
drains whatever is pending and commits it as one transaction (group commit), then wakes each caller
with its own result or error. Each operation runs inside a savepoint when it shares a transaction,
so one failing operation does not fail the others.

Cancellation: aiosqlite keeps running a statement on its thread after the awaiting task was
cancelled, so no statement may be abandoned half-way. Only the writer task touches the write
connection, and its transactions run shielded; a caller that is cancelled stops *waiting*, its
operation still completes. A claim whose caller went away is handed back by the writer at once.
Database errors are wrapped here, once, as :class:`~persistq_async.DatabaseError`.
"""

from __future__ import annotations

import logging
import math
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus
from sqlalchemy import (
    Row,
    bindparam,
    case,
    delete,
    func,
    inspect,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import schema
from ._types import FINISHED_STATES, JobState
from .backends import Backend
from .errors import (
    DatabaseError,
    JobNotFound,
    JobStateError,
    LeaseLost,
    PersistQError,
    QueueClosed,
    SchemaError,
)
from .schema import ACTIVE, DEDUPE, FINISHED, QUEUED, RUNNING, attempts, jobs, meta

__all__ = ["AttemptRecord", "ClaimResult", "JobRecord", "JobStore", "NewJob"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]

#: Most operations one transaction takes; bounds the time a batch holds the write lock.
MAX_BATCH = 256
#: How often a batch is retried when another process holds the lock past ``busy_timeout``.
MAX_BUSY_RETRIES = 20
#: Rows the retention cleaner deletes per transaction.
CLEAN_CHUNK = 1000
#: Expired leases the rescuer handles per transaction.
RESCUE_CHUNK = 500
#: Longest a cancelled claim waits for its leases to be handed back before it lets go.
HANDBACK_WAIT = 10.0


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
            dedupe_key=m["dedupe_key"],
            last_error=m["last_error"],
            result=None if m["result"] is None else bytes(m["result"]),
            finished_at=m["finished_at"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """A row of the attempts table: one delivery of a job."""

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


class _Op(Generic[T]):
    """One write waiting for the writer; ``done`` is set once it committed or failed."""

    __slots__ = ("abandoned", "done", "error", "finished", "fn", "on_abandon", "on_commit", "result")

    def __init__(
        self,
        fn: Callable[[AsyncConnection], Awaitable[T]],
        on_commit: Callable[[T], None] | None,
        on_abandon: Callable[[T], None] | None,
    ) -> None:
        self.fn = fn
        self.on_commit = on_commit
        self.on_abandon = on_abandon
        self.done = anyio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.abandoned = False

    def abandon(self) -> None:
        """The caller stopped waiting; undo a successful result that nobody will receive."""
        if self.abandoned:
            return
        self.abandoned = True
        if self.finished and self.error is None and self.on_abandon is not None:
            self.on_abandon(self.result)  # type: ignore[arg-type]

    def finish(self) -> None:
        self.finished = True
        if self.error is None and self.on_commit is not None:
            try:
                self.on_commit(self.result)  # type: ignore[arg-type]
            except Exception:  # a wake-up must never break the writer
                logger.exception("post-commit hook failed")
        if self.abandoned and self.error is None and self.on_abandon is not None:
            self.on_abandon(self.result)  # type: ignore[arg-type]
        self.done.set()


def wrap_db_error(exc: BaseException, action: str, where: str) -> DatabaseError:
    """One readable :class:`DatabaseError` for a driver error, naming the database and cause."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    message = str(orig).strip() or type(orig).__name__
    lowered = message.lower()
    hint = ""
    if "file is not a database" in lowered or "malformed" in lowered:
        return SchemaError(f"{action} failed on {where}: {message} (not a usable SQLite database)")
    if "readonly" in lowered or "read-only" in lowered:
        hint = " (the database file or its directory is read-only)"
    elif "disk is full" in lowered or "database or disk is full" in lowered:
        hint = " (the disk or the database's size limit is full)"
    elif "unable to open" in lowered:
        hint = " (check that the path exists and is writable)"
    elif "locked" in lowered:
        hint = " (another process held the write lock past busy_timeout)"
    return DatabaseError(f"{action} failed on {where}: {message}{hint}")


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
        self._write_conn: AsyncConnection | None = None
        self._watch_conn: AsyncConnection | None = None
        self._watch_lock = anyio.Lock()
        self._watch_value = 0
        self._watch_checked = -math.inf
        self._send: Any = None
        self._followups: deque[_Op[Any]] = deque()
        self._tg: anyio.abc.TaskGroup | None = None
        self._open = False
        self._loop_token: object = None
        self._work_events: dict[str, anyio.Event] = {}
        self._change_events: dict[str, anyio.Event] = {}
        self._cancel_listeners: list[Callable[[str, int], None]] = []
        self._insert: Any = (
            sqlite_dialect.insert if backend.name == "sqlite" else pg_dialect.insert
        )

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> JobStore:
        await self.backend.prepare()
        engine = self.backend.create_engine()
        self._engine = engine
        try:
            with anyio.CancelScope(shield=True):
                await self._create_schema(engine)
                self._write_conn = await engine.connect()
                await self.backend.begin_write(self._write_conn)
                await self._write_conn.rollback()
                if self.backend.name == "sqlite":
                    self._watch_conn = await engine.connect()
        except BaseException as exc:
            await self._dispose()
            if isinstance(exc, DBAPIError | OSError):
                raise wrap_db_error(exc, "opening the queue", self.where) from exc
            raise
        send, receive = anyio.create_memory_object_stream[_Op[Any]](math.inf)
        self._send = send
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self._writer, receive)
        self._loop_token = anyio.lowlevel.current_token()
        self._open = True
        _stores.add(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish pending writes, stop the writer, close connections. Idempotent."""
        if self._tg is None:
            return
        self._open = False
        _stores.discard(self)
        tg, self._tg = self._tg, None
        self._send.close()
        try:
            # Not inside a new cancel scope: the task group's own scope must be exited first.
            await tg.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                if self._followups and self._write_conn is not None:
                    await self._run_batch(list(self._followups))
                    self._followups.clear()
                await self._dispose()

    async def _dispose(self) -> None:
        with anyio.CancelScope(shield=True):
            for conn in (self._write_conn, self._watch_conn):
                if conn is not None:
                    try:
                        await conn.close()
                    except SQLAlchemyError:
                        logger.debug("closing a connection failed", exc_info=True)
            self._write_conn = self._watch_conn = None
            if self._engine is not None:
                await self._engine.dispose()
                self._engine = None

    def _check_open(self) -> None:
        if not self._open:
            raise QueueClosed("the queue is closed (or was never opened with 'async with')")

    @property
    def is_open(self) -> bool:
        """Whether the store accepts operations."""
        return self._open

    # ------------------------------------------------------------------ schema

    async def _create_schema(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            await self.backend.begin_write(conn)
            await self.backend.lock_schema(conn)
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            if self.backend.name == "sqlite":
                app_id = (await conn.exec_driver_sql("PRAGMA application_id")).scalar_one()
                if app_id not in (0, schema.APPLICATION_ID):
                    raise SchemaError(
                        f"{self.where} belongs to another application "
                        f"(application_id {app_id:#x}); refusing to use it as a queue"
                    )
            if meta.name in tables:
                await self._check_version(conn)
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
                await conn.run_sync(schema.metadata.create_all)
                await conn.execute(
                    insert(meta),
                    [
                        {"key": "schema_version", "value": str(schema.SCHEMA_VERSION)},
                        {"key": "application", "value": "persistq_async"},
                    ],
                )
                if self.backend.name == "sqlite":
                    await conn.exec_driver_sql(f"PRAGMA application_id = {schema.APPLICATION_ID}")
                logger.info(
                    "schema created",
                    extra={"action": "schema_created", "version": schema.SCHEMA_VERSION},
                )
            await conn.commit()
            await self.backend.finish_schema(conn)

    async def _check_version(self, conn: AsyncConnection) -> None:
        raw = (
            await conn.execute(select(meta.c.value).where(meta.c.key == "schema_version"))
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
            await schema.MIGRATIONS[step - 1](conn)
            logger.info("schema migrated", extra={"action": "schema_migrated", "version": step + 1})
        if version < schema.SCHEMA_VERSION:
            await conn.execute(
                update(meta)
                .where(meta.c.key == "schema_version")
                .values(value=str(schema.SCHEMA_VERSION))
            )

    # ------------------------------------------------------------------ the writer

    async def _writer(
        self, receive: Any, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            await self._write_loop(receive)
        finally:
            # Interrupted (the host task was cancelled): nobody will run what is left.
            while True:
                try:
                    op = receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                op.error = QueueClosed("the queue closed before this write ran; it was not applied")
                op.finish()
            receive.close()

    async def _write_loop(self, receive: Any) -> None:
        while True:
            if self._followups:
                batch = list(self._followups)
                self._followups.clear()
            else:
                try:
                    batch = [await receive.receive()]
                except anyio.EndOfStream:
                    if self._followups:
                        continue
                    return
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            with anyio.CancelScope(shield=True):
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Op[Any]]) -> None:
        conn = self._write_conn
        assert conn is not None
        delay = 0.005
        try:
            for tries in range(MAX_BUSY_RETRIES + 1):
                for op in batch:
                    op.result, op.error = None, None
                try:
                    await self.backend.begin_write(conn)
                    if len(batch) == 1:
                        op = batch[0]
                        await self._run_op(conn, op, savepoint=False)
                        if op.error is None:
                            await conn.commit()
                        else:
                            await conn.rollback()
                    else:
                        for op in batch:
                            await self._run_op(conn, op, savepoint=True)
                        await conn.commit()
                    return
                except DBAPIError as exc:
                    await self._rollback_quietly(conn)
                    if self.backend.is_busy(exc) and tries < MAX_BUSY_RETRIES:
                        logger.debug("database busy; retrying a batch of %d", len(batch))
                        await anyio.sleep(delay)
                        delay = min(delay * 2, 0.5)
                        continue
                    error = wrap_db_error(exc, "writing", self.where)
                    error.__cause__ = exc
                    for op in batch:
                        op.error = error
                    return
        except BaseException as exc:  # never leave callers waiting forever
            await self._rollback_quietly(conn)
            for op in batch:
                if not op.finished and op.error is None:
                    op.error = (
                        exc
                        if isinstance(exc, Exception)
                        else DatabaseError("the writer was interrupted")
                    )
            if not isinstance(exc, Exception):
                raise
        finally:
            for op in batch:
                if not op.finished:
                    op.finish()

    async def _run_op(self, conn: AsyncConnection, op: _Op[Any], *, savepoint: bool) -> None:
        nested = await conn.begin_nested() if savepoint else None
        try:
            op.result = await op.fn(conn)
        except DBAPIError as exc:
            if self.backend.is_busy(exc):
                raise
            if nested is not None:
                await nested.rollback()
            op.error = wrap_db_error(exc, "writing", self.where)
            op.error.__cause__ = exc
        except PersistQError as exc:
            if nested is not None:
                await nested.rollback()
            op.error = exc
        else:
            if nested is not None:
                await nested.commit()

    async def _rollback_quietly(self, conn: AsyncConnection) -> None:
        try:
            await conn.rollback()
        except SQLAlchemyError:
            logger.debug("rollback failed", exc_info=True)

    async def _write(
        self,
        fn: Callable[[AsyncConnection], Awaitable[T]],
        *,
        on_commit: Callable[[T], None] | None = None,
        on_abandon: Callable[[T], None] | None = None,
    ) -> T:
        return await self._await(self._submit(fn, on_commit, on_abandon))

    def _submit(
        self,
        fn: Callable[[AsyncConnection], Awaitable[T]],
        on_commit: Callable[[T], None] | None,
        on_abandon: Callable[[T], None] | None,
    ) -> _Op[T]:
        self._check_open()
        op: _Op[T] = _Op(fn, on_commit, on_abandon)
        self._send.send_nowait(op)
        return op

    async def _await(self, op: _Op[T]) -> T:
        try:
            await op.done.wait()
        except BaseException:
            op.abandon()
            raise
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[return-value]

    def _write_later(self, fn: Callable[[AsyncConnection], Awaitable[Any]]) -> _Op[Any]:
        """Queue a write nobody waits for (handing back an abandoned claim)."""
        op: _Op[Any] = _Op(fn, None, None)
        self._followups.append(op)
        if self._send is not None:
            try:
                self._send.send_nowait(_Op(_noop, None, None))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the writer drains follow-ups before it stops
        return op

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

    def _notify(self, queue: str, *, work: bool) -> None:
        token = anyio.lowlevel.current_token()
        for store in list(_stores):
            if store.where != self.where or store._loop_token != token:
                continue
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
        token = anyio.lowlevel.current_token()
        for store in list(_stores):
            if store.where == self.where and store._loop_token == token:
                for listener in list(store._cancel_listeners):
                    listener(queue, job_id)

    async def change_token(self) -> int:
        """A number that changes when another connection committed; shared by waiters."""
        self._check_open()
        async with self._watch_lock:
            now = anyio.current_time()
            if now - self._watch_checked >= self.options.poll_interval / 2:
                conn = self._watch_conn
                try:
                    with anyio.CancelScope(shield=True):
                        if conn is not None:
                            self._watch_value = await self.backend.change_token(conn)
                        else:
                            self._watch_value = await self.backend.change_token(conn)  # type: ignore[arg-type]
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
            "run_at": job.run_at if job.run_at > now else now,
            "enqueued_at": now,
            "created_at": now,
            "dedupe_key": job.dedupe_key,
        }

    def _put_statements(self, queue: str, new: Sequence[NewJob]) -> Callable[[Any], Awaitable[list[int]]]:
        """The put as a function of a connection or session, shared by both put paths."""

        async def run(conn: Any) -> list[int]:
            now = self.clock()
            rows = [self._row(queue, job, now) for job in new]
            if all(job.dedupe_key is None for job in new):
                if len(rows) == 1:
                    result = await conn.execute(insert(jobs).returning(jobs.c.id), rows[0])
                    return [result.scalar_one()]
                result = await conn.execute(
                    insert(jobs).returning(jobs.c.id, sort_by_parameter_order=True), rows
                )
                return list(result.scalars().all())
            ids: list[int] = []
            for row in rows:
                if row["dedupe_key"] is None:
                    ids.append((await conn.execute(insert(jobs).returning(jobs.c.id), row)).scalar_one())
                    continue
                stmt = (
                    self._insert(jobs)
                    .values(**row)
                    .on_conflict_do_nothing(
                        index_elements=[jobs.c.queue, jobs.c.dedupe_key], index_where=DEDUPE
                    )
                    .returning(jobs.c.id)
                )
                job_id = (await conn.execute(stmt)).scalar_one_or_none()
                if job_id is None:
                    job_id = (
                        await conn.execute(
                            select(jobs.c.id).where(
                                jobs.c.queue == queue,
                                jobs.c.dedupe_key == row["dedupe_key"],
                                ACTIVE,
                            )
                        )
                    ).scalar_one()
                ids.append(job_id)
            return ids

        return run

    async def put(self, queue: str, new: Sequence[NewJob]) -> list[int]:
        """Insert jobs in one transaction; returns their ids (or the dedupe holders' ids)."""
        ids = await self._write(
            self._put_statements(queue, new), on_commit=lambda _ids: self._notify(queue, work=True)
        )
        return ids

    async def put_in(self, connection: Any, queue: str, new: Sequence[NewJob]) -> list[int]:
        """Insert jobs through the caller's own connection or session, inside its transaction."""
        self._check_open()
        try:
            return await self._put_statements(queue, new)(connection)
        except DBAPIError as exc:
            raise wrap_db_error(exc, "putting a job through the caller's connection", self.where) from exc

    # ------------------------------------------------------------------ claims

    async def claim(self, queue: str, limit: int, lease_seconds: float) -> ClaimResult:
        """Lease up to ``limit`` ready jobs of ``queue``, highest priority first, FIFO within one.

        If the caller is cancelled after the claim committed, the leases are handed back.
        """

        async def run(conn: AsyncConnection) -> ClaimResult:
            now = self.clock()
            await self._rescue(conn, now)
            token = uuid.uuid4().hex
            ready = self.backend.lock_claim(
                select(jobs.c.id)
                .where(jobs.c.queue == queue, QUEUED, jobs.c.run_at <= now)
                .order_by(jobs.c.priority.desc(), jobs.c.id)
                .limit(limit)
            )
            stmt = (
                update(jobs)
                .where(jobs.c.id.in_(ready.scalar_subquery()))
                .values(
                    state=JobState.RUNNING.value,
                    attempts=jobs.c.attempts + 1,
                    lease_token=token,
                    lease_expires_at=now + lease_seconds,
                )
                .returning(*jobs.c)
            )
            records = [JobRecord.from_row(r) for r in (await conn.execute(stmt)).all()]
            records.sort(key=lambda r: (-r.priority, r.id))
            if records:
                await conn.execute(
                    insert(attempts),
                    [
                        {
                            "job_id": r.id,
                            "attempt": r.attempts,
                            "lease_token": token,
                            "started_at": now,
                        }
                        for r in records
                    ],
                )
            next_due = None
            if len(records) < limit:
                next_due = await self._next_due(conn, queue)
            return ClaimResult(records=records, next_due_at=next_due)

        handbacks: list[_Op[Any]] = []

        def abandon(result: ClaimResult) -> None:
            for record in result.records:
                assert record.lease_token is not None
                logger.debug(
                    "claim abandoned by a cancelled caller; handing the lease back",
                    extra={"action": "job_released", "job_id": record.id, "queue": queue},
                )
                handbacks.append(
                    self._write_later(self._release_fn(record.id, record.lease_token, queue))
                )

        op = self._submit(run, None, abandon)
        try:
            return await self._await(op)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                # Cancelled: the claim may still commit. Hand its leases back before the
                # cancellation reaches the caller, so that no job stays leased to nobody.
                # Bounded: should the writer be stuck, the hand-back still happens later.
                with anyio.CancelScope(shield=True), anyio.move_on_after(HANDBACK_WAIT):
                    await op.done.wait()
                    for handback in handbacks:
                        await handback.done.wait()
            raise

    async def _next_due(self, conn: AsyncConnection, queue: str) -> float | None:
        due = (
            await conn.execute(select(func.min(jobs.c.run_at)).where(jobs.c.queue == queue, QUEUED))
        ).scalar_one_or_none()
        expiry = (
            await conn.execute(select(func.min(jobs.c.lease_expires_at)).where(RUNNING))
        ).scalar_one_or_none()
        candidates = [t for t in (due, expiry) if t is not None]
        return min(candidates) if candidates else None

    async def _rescue(self, conn: AsyncConnection, now: float) -> int:
        rows = (
            await conn.execute(
                select(jobs.c.id, jobs.c.queue, jobs.c.attempts, jobs.c.max_attempts)
                .where(RUNNING, jobs.c.lease_expires_at <= now)
                .limit(RESCUE_CHUNK)
            )
        ).all()
        if not rows:
            return 0
        ids = [r.id for r in rows]
        error = "lease expired (the consumer crashed, hung or lost the database)"
        spent = jobs.c.attempts >= jobs.c.max_attempts
        await conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(ids), RUNNING)
            .values(
                state=case((spent, JobState.DEAD.value), else_=JobState.QUEUED.value),
                finished_at=case((spent, now), else_=None),
                run_at=now,
                lease_token=None,
                lease_expires_at=None,
                last_error=error,
            )
        )
        await conn.execute(
            update(attempts)
            .where(attempts.c.job_id.in_(ids), attempts.c.outcome.is_(None))
            .values(outcome="expired", finished_at=now, error=error)
        )
        for r in rows:
            dead = r.attempts >= r.max_attempts
            logger.info(
                "lease expired; job is %s", "dead" if dead else "queued again",
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

        async def run(conn: AsyncConnection) -> int:
            return await self._rescue(conn, self.clock())

        return await self._write(run, on_commit=self._notify_all_work)

    def _notify_all_work(self, count: int) -> None:
        if count:
            for queue in list(self._work_events):
                self._notify(queue, work=True)

    # ------------------------------------------------------------------ outcomes

    async def _settle(
        self,
        conn: AsyncConnection,
        job_id: int,
        token: str,
        outcome: str,
        values: dict[str, Any],
        error: str | None,
        now: float,
    ) -> Row[Any] | None:
        """Apply an outcome to a running job fenced by its token; None if already applied."""
        row = (
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.lease_token == token, RUNNING)
                .values(lease_token=None, lease_expires_at=None, **values)
                .returning(jobs.c.state, jobs.c.queue, jobs.c.attempts)
            )
        ).one_or_none()
        if row is not None:
            await conn.execute(
                update(attempts)
                .where(attempts.c.job_id == job_id, attempts.c.lease_token == token)
                .values(outcome=outcome, finished_at=now, error=error)
            )
            return row
        # Not running under this token: either this very outcome was applied already (a retry
        # after a cancelled call), or the lease is gone.
        previous = (
            await conn.execute(
                select(attempts.c.outcome).where(
                    attempts.c.job_id == job_id, attempts.c.lease_token == token
                )
            )
        ).scalar_one_or_none()
        if previous == outcome:
            return None
        state = (
            await conn.execute(select(jobs.c.state, jobs.c.lease_token).where(jobs.c.id == job_id))
        ).one_or_none()
        if state is None:
            reason = "the job was deleted"
        elif state.state == JobState.CANCELLED:
            reason = "the job was cancelled"
        elif previous == "expired":
            reason = "the lease expired and the job was rescued"
        elif previous in ("released", "cancelled"):
            reason = f"the lease was {previous}"
        elif state.state == JobState.RUNNING:
            reason = "the lease expired and another consumer took the job"
        else:
            reason = f"the job is {state.state} now"
        raise LeaseLost(f"job {job_id}: lease lost ({reason}); the outcome was not applied")

    async def ack(self, job_id: int, token: str, result: bytes | None) -> None:
        """Mark a delivery done, storing ``result``.

        :raises LeaseLost: when the lease is no longer this delivery's.
        """

        async def run(conn: AsyncConnection) -> str | None:
            now = self.clock()
            row = await self._settle(
                conn,
                job_id,
                token,
                "acked",
                {"state": JobState.DONE.value, "result": result, "finished_at": now},
                None,
                now,
            )
            return None if row is None else row.queue

        await self._write(run, on_commit=self._changed)

    def _changed(self, queue: str | None) -> None:
        if queue is not None:
            self._notify(queue, work=False)

    async def nack(self, job_id: int, token: str, run_at: float, error: str | None) -> JobState:
        """Retry a delivery at ``run_at``, or make the job dead when its attempts are spent.

        :returns: the job's new state (QUEUED or DEAD).
        """

        async def run(conn: AsyncConnection) -> tuple[JobState, str | None]:
            now = self.clock()
            spent = jobs.c.attempts >= jobs.c.max_attempts
            row = await self._settle(
                conn,
                job_id,
                token,
                "nacked",
                {
                    "state": case((spent, JobState.DEAD.value), else_=JobState.QUEUED.value),
                    "finished_at": case((spent, now), else_=None),
                    "run_at": max(run_at, now),
                    "last_error": error,
                },
                error,
                now,
            )
            if row is None:
                current = (
                    await conn.execute(select(jobs.c.state).where(jobs.c.id == job_id))
                ).scalar_one_or_none()
                return JobState(current or JobState.DEAD), None
            return JobState(row.state), row.queue

        def committed(result: tuple[JobState, str | None]) -> None:
            if result[1] is not None:
                self._notify(result[1], work=True)

        state, _ = await self._write(run, on_commit=committed)
        return state

    async def fail(self, job_id: int, token: str, error: str | None) -> None:
        """Make the job dead now, whatever its attempts."""

        async def run(conn: AsyncConnection) -> str | None:
            now = self.clock()
            row = await self._settle(
                conn,
                job_id,
                token,
                "failed",
                {"state": JobState.DEAD.value, "finished_at": now, "last_error": error},
                error,
                now,
            )
            return None if row is None else row.queue

        await self._write(run, on_commit=self._changed)

    def _release_fn(
        self, job_id: int, token: str, queue: str
    ) -> Callable[[AsyncConnection], Awaitable[bool]]:
        async def run(conn: AsyncConnection) -> bool:
            now = self.clock()
            done = (
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.lease_token == token, RUNNING)
                    .values(
                        state=JobState.QUEUED.value,
                        attempts=jobs.c.attempts - 1,
                        lease_token=None,
                        lease_expires_at=None,
                    )
                )
            ).rowcount
            if done:
                await conn.execute(
                    update(attempts)
                    .where(attempts.c.job_id == job_id, attempts.c.lease_token == token)
                    .values(outcome="released", finished_at=now)
                )
                self._notify(queue, work=True)
            return bool(done)

        return run

    async def release(self, job_id: int, token: str, queue: str) -> bool:
        """Hand a lease back without counting the attempt (shutdown, cancellation).

        Idempotent: a lease that is already gone is left alone. Returns whether it was handed back.
        """
        return await self._write(self._release_fn(job_id, token, queue))

    async def extend(self, job_id: int, token: str, seconds: float) -> float:
        """Make the lease end ``seconds`` from now; returns the new expiry.

        :raises LeaseLost: when the lease is no longer this delivery's.
        """

        async def run(conn: AsyncConnection) -> float:
            expires = self.clock() + seconds
            done = (
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.lease_token == token, RUNNING)
                    .values(lease_expires_at=expires)
                )
            ).rowcount
            if not done:
                raise LeaseLost(f"job {job_id}: lease lost; it cannot be extended")
            return expires

        return await self._write(run)

    # ------------------------------------------------------------------ CRUD

    async def cancel(self, queue: str, job_id: int) -> bool:
        """Cancel a queued or running job; False when it had already finished."""

        async def run(conn: AsyncConnection) -> bool:
            now = self.clock()
            row = (
                await conn.execute(
                    select(jobs.c.state).where(jobs.c.id == job_id, jobs.c.queue == queue)
                )
            ).one_or_none()
            if row is None:
                raise JobNotFound(f"no job {job_id} in queue {queue!r}")
            if JobState(row.state) in FINISHED_STATES:
                return False
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=JobState.CANCELLED.value,
                    finished_at=now,
                    lease_token=None,
                    lease_expires_at=None,
                    dedupe_key=jobs.c.dedupe_key,
                )
            )
            await conn.execute(
                update(attempts)
                .where(attempts.c.job_id == job_id, attempts.c.outcome.is_(None))
                .values(outcome="cancelled", finished_at=now, error="cancelled")
            )
            return True

        def committed(cancelled: bool) -> None:
            if cancelled:
                self._notify(queue, work=False)
                self._notify_cancelled(queue, job_id)

        return await self._write(run, on_commit=committed)

    async def requeue(self, queue: str, job_id: int) -> None:
        """Put a done, dead or cancelled job back in the queue with its attempts reset."""

        async def run(conn: AsyncConnection) -> None:
            now = self.clock()
            row = (
                await conn.execute(
                    select(jobs.c.state).where(jobs.c.id == job_id, jobs.c.queue == queue)
                )
            ).one_or_none()
            if row is None:
                raise JobNotFound(f"no job {job_id} in queue {queue!r}")
            if JobState(row.state) not in FINISHED_STATES:
                raise JobStateError(
                    f"job {job_id} is {row.state}; only done, dead or cancelled jobs can be requeued"
                )
            try:
                await conn.execute(
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

        await self._write(run, on_commit=lambda _: self._notify(queue, work=True))

    async def delete(self, queue: str, job_id: int) -> None:
        """Delete a job and its history."""

        async def run(conn: AsyncConnection) -> None:
            await conn.execute(delete(attempts).where(attempts.c.job_id == job_id, _in_queue(queue)))
            done = (
                await conn.execute(delete(jobs).where(jobs.c.id == job_id, jobs.c.queue == queue))
            ).rowcount
            if not done:
                raise JobNotFound(f"no job {job_id} in queue {queue!r}")

        await self._write(run, on_commit=lambda _: self._notify(queue, work=False))

    async def purge(self, queue: str, state: JobState) -> int:
        """Delete every job of ``queue`` in ``state``; returns how many."""

        async def run(conn: AsyncConnection) -> int:
            chosen = select(jobs.c.id).where(jobs.c.queue == queue, jobs.c.state == state.value)
            await conn.execute(delete(attempts).where(attempts.c.job_id.in_(chosen)))
            return int(
                (
                    await conn.execute(
                        delete(jobs).where(jobs.c.queue == queue, jobs.c.state == state.value)
                    )
                ).rowcount
            )

        return await self._write(run, on_commit=lambda _: self._notify(queue, work=False))

    async def clean(self, older_than: float) -> int:
        """Delete finished jobs (all queues) that finished before ``older_than`` (epoch seconds)."""

        async def run(conn: AsyncConnection) -> int:
            chosen = (
                select(jobs.c.id)
                .where(FINISHED, jobs.c.finished_at < older_than)
                .limit(CLEAN_CHUNK)
                .scalar_subquery()
            )
            ids = list((await conn.execute(select(jobs.c.id).where(jobs.c.id.in_(chosen)))).scalars())
            if not ids:
                return 0
            await conn.execute(delete(attempts).where(attempts.c.job_id.in_(ids)))
            await conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
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
        assert self._engine is not None
        try:
            # Shielded: abandoning a statement mid-flight would leave its connection busy.
            with anyio.CancelScope(shield=True):
                async with self._engine.connect() as conn:
                    return await fn(conn)
        except DBAPIError as exc:
            raise wrap_db_error(exc, action, self.where) from exc

    async def counts(self, queue: str) -> dict[JobState, int]:
        """The number of jobs of ``queue`` in each state."""

        async def run(conn: AsyncConnection) -> dict[JobState, int]:
            rows = await conn.execute(
                select(jobs.c.state, func.count()).where(jobs.c.queue == queue).group_by(jobs.c.state)
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
        """One job and its attempts, or None."""

        async def run(conn: AsyncConnection) -> tuple[JobRecord, list[AttemptRecord]] | None:
            row = (
                await conn.execute(select(jobs).where(jobs.c.id == job_id, jobs.c.queue == queue))
            ).one_or_none()
            if row is None:
                return None
            history = await conn.execute(
                select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.id)
            )
            return JobRecord.from_row(row), [_attempt(a) for a in history]

        return await self._read(run, "reading a job")

    async def list(
        self, queue: str, state: JobState | None, limit: int, offset: int
    ) -> list[tuple[JobRecord, list[AttemptRecord]]]:
        """Jobs of ``queue`` (in ``state``), oldest first, with their attempts."""

        async def run(conn: AsyncConnection) -> list[tuple[JobRecord, list[AttemptRecord]]]:
            stmt = select(jobs).where(jobs.c.queue == queue)
            if state is not None:
                stmt = stmt.where(jobs.c.state == state.value)
            rows = [
                JobRecord.from_row(r)
                for r in await conn.execute(stmt.order_by(jobs.c.id).limit(limit).offset(offset))
            ]
            history: dict[int, list[AttemptRecord]] = {r.id: [] for r in rows}
            if rows:
                found = await conn.execute(
                    select(attempts)
                    .where(attempts.c.job_id.in_(list(history)))
                    .order_by(attempts.c.id)
                )
                for a in found:
                    history[a.job_id].append(_attempt(a))
            return [(r, history[r.id]) for r in rows]

        return await self._read(run, "listing jobs")

    async def queue_names(self) -> list[str]:
        """Every queue name that has jobs."""

        async def run(conn: AsyncConnection) -> list[str]:
            rows = await conn.execute(select(jobs.c.queue).distinct().order_by(jobs.c.queue))
            return list(rows.scalars())

        return await self._read(run, "listing queues")


def _attempt(row: Row[Any]) -> AttemptRecord:
    return AttemptRecord(
        attempt=row.attempt,
        started_at=row.started_at,
        finished_at=row.finished_at,
        outcome=row.outcome,
        error=row.error,
    )


def _in_queue(queue: str) -> Any:
    return attempts.c.job_id.in_(select(jobs.c.id).where(jobs.c.queue == queue))


async def _noop(_conn: AsyncConnection) -> None:
    return None


def _unused(*_: Iterable[Any]) -> None:  # pragma: no cover - keeps imports honest for linters
    _ = (bindparam, text)
