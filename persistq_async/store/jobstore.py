"""JobStore: the thin async face of the store that queues, jobs and pools call.

It opens the database (schema, writer, readers, wake-ups), turns each call into an operation for
the writer (:mod:`.transactions` holds their bodies) or a read (:mod:`.reads`), and wakes local
waiters after commits. Database errors are wrapped here, once, as
:class:`~persistq_async.DatabaseError`.

The attempt row of a delivery is written when the delivery ends (ack, nack, fail, expiry,
release, cancel); while it runs, the job row carries its ``started_at`` and lease.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._types import JobState
from ..backends import Backend
from ..errors import DatabaseError, QueueClosed
from ..metrics import EventKind, JobEvent, hub
from . import admin, flow, reads
from . import transactions as tx
from .claiming import ClaimOp
from .dberror import wrap_db_error
from .direct import DirectWriter
from .operations import StoreOperations
from .records import AttemptRecord, ClaimResult, JobRecord, NewJob, Rescued
from .schema_setup import create_schema
from .statements import CLEAN_CHUNK, EXPIRED_ERROR, claim_statement
from .wakeups import CancelListener, ChangeListener, Wakeups
from .writer import Op, ThreadWriter, Writer

__all__ = ["JobStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]

#: Longest a cancelled claim waits for its leases to be released before it lets go.
RELEASE_WAIT = 10.0


class JobStore(StoreOperations):
    """The jobs of one database, seen from one :class:`~persistq_async.Queue`.

    :param backend: the database's backend.
    :param clock: returns the time as epoch seconds; injectable so tests control lease expiry.
    """

    def __init__(self, backend: Backend, *, clock: Clock) -> None:
        self.backend = backend
        self.options = backend.options
        self.clock = clock
        self.where = backend.describe()
        self.wakeups = Wakeups(backend, self.where)
        self._ctx = tx.Context(
            backend=backend, clock=clock, where=self.where, claim_statement=claim_statement(backend)
        )
        self._engine: AsyncEngine | None = None
        self._writer: Writer | None = None
        self._open = False

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> JobStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create or check the schema, start the writer, connect the readers."""
        await self.backend.prepare()
        try:
            with anyio.CancelScope(shield=True):
                self._engine = self.backend.create_engine()
                self._writer = await self._start_writer(self._engine)
                watch_conn = None
                if self.backend.needs_watch_connection():
                    watch_conn = await self._engine.connect()
                self.wakeups.register(watch_conn)
                await self.backend.start_watching(
                    lambda queue: self.wakeups.notify(queue, work=True)
                )
        except BaseException as exc:
            await self._dispose()
            if isinstance(exc, DBAPIError):
                raise wrap_db_error(exc, "opening the queue", self.where) from exc
            if isinstance(exc, OSError):
                raise DatabaseError(f"opening the queue failed on {self.where}: {exc}") from exc
            raise
        self._open = True

    async def _start_writer(self, engine: AsyncEngine) -> Writer:
        def setup(conn: Connection) -> None:
            create_schema(conn, self.backend)

        write_engine = self.backend.create_write_engine()
        if write_engine is None:
            async with engine.connect() as conn:
                await conn.run_sync(setup)
            return DirectWriter(
                engine,
                where=self.where,
                is_busy=self.backend.is_busy,
                native=self.backend.native_writes(),
            )
        writer = ThreadWriter(
            write_engine.connect,
            where=self.where,
            is_busy=self.backend.is_busy,
            after_batch=self.backend.after_batch,
            before_batch=self.backend.before_batch,
            lock=self.backend.writer_lock(),
            inline=self.backend.inline_writes(),
        )
        try:
            await writer.start(setup)
        finally:
            write_engine.dispose()
        return writer

    async def aclose(self) -> None:
        """Finish pending writes, stop the writer, close connections. Idempotent."""
        if not self._open:
            return
        self._open = False
        await self._dispose()

    async def _dispose(self) -> None:
        with anyio.CancelScope(shield=True):
            watch_conn = self.wakeups.unregister()
            await self.backend.stop_watching()
            if self._writer is not None:
                await self._writer.aclose()
                self._writer = None
            if watch_conn is not None:
                try:
                    await watch_conn.close()
                except DBAPIError:
                    logger.debug(
                        "closing the watch connection failed",
                        exc_info=True,
                        extra={"action": "connection_close_failed"},
                    )
            if self._engine is not None:
                await self.backend.dispose_engine(self._engine)
                self._engine = None

    def _check_open(self) -> Writer:
        if not self._open or self._writer is None:
            raise QueueClosed("the queue is closed (or was never opened with 'async with')")
        return self._writer

    @property
    def engine(self) -> AsyncEngine:
        """The async engine of the reads.

        :raises QueueClosed: when the store is not open.
        """
        self._check_open()
        assert self._engine is not None
        return self._engine

    @property
    def is_open(self) -> bool:
        """Whether the store accepts operations."""
        return self._open

    # ------------------------------------------------------------------ writing and waking

    async def write(
        self,
        fn: Callable[[Connection], T],
        *,
        on_commit: Callable[[T], None] | None = None,
        kind: str = "write",
        size: int | None = None,
    ) -> T:
        """Run ``fn`` (a synchronous function of a connection) as one write of the writer.

        For the store's own operations, and for tests that need a statement of their own under
        the writer's rules (``persistq_async.testing.run_write``).
        """
        writer = self._check_open()
        op = Op(fn, on_commit, kind=kind)
        op.size = size  # rows it touches, when known (see Op.size)
        return await writer.run(op)

    def _woken(self, queue: str, *, work: bool) -> Callable[[Any], None]:
        return lambda _result: self.wakeups.notify(queue, work=work)

    def work_event(self, queue: str) -> anyio.Event:
        """An event set when jobs of ``queue`` may have become claimable in this process."""
        return self.wakeups.work_event(queue)

    def change_event(self, queue: str) -> anyio.Event:
        """An event set when any job of ``queue`` changed state in this process."""
        return self.wakeups.change_event(queue)

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(queue)`` when jobs of ``queue`` changed state in this process."""
        self.wakeups.add_change_listener(listener)

    def remove_change_listener(self, listener: ChangeListener) -> None:
        """Undo :meth:`add_change_listener`."""
        self.wakeups.remove_change_listener(listener)

    def add_cancel_listener(self, listener: CancelListener) -> None:
        """Call ``listener(queue, job_id)`` when this process cancels a job."""
        self.wakeups.add_cancel_listener(listener)

    def remove_cancel_listener(self, listener: CancelListener) -> None:
        """Undo :meth:`add_cancel_listener`."""
        self.wakeups.remove_cancel_listener(listener)

    def known_change_token(self) -> int:
        """The change token as last read (see :meth:`.Wakeups.known_change_token`)."""
        return self.wakeups.known_change_token()

    async def change_token(self) -> int:
        """A number that changes when another connection committed; shared by waiters."""
        self._check_open()
        return await self.wakeups.change_token(self.options.poll_interval)

    # ------------------------------------------------------------------ puts

    async def put(self, queue: str, new: Sequence[NewJob]) -> list[int]:
        """Insert jobs in one transaction; returns their ids (or the dedupe holders' ids)."""
        writer = self._check_open()
        on_commit = self._woken(queue, work=True)
        op: Op[list[int]]
        if len(new) <= self.backend.grouped_put_rows() and all(
            job.dedupe_key is None for job in new
        ):
            op = tx.PutOp(self._ctx, queue, new, on_commit)
        else:
            op = Op(lambda conn: tx.put(conn, self._ctx, queue, new), on_commit, kind="put")
        op.size = len(new)
        return await writer.run(op)

    async def put_within(
        self, connection: AsyncConnection, queue: str, new: Sequence[NewJob]
    ) -> list[int]:
        """Insert jobs through the caller's own connection, inside its transaction."""
        self._check_open()
        try:
            return await connection.run_sync(lambda conn: tx.put(conn, self._ctx, queue, new))
        except DBAPIError as exc:
            raise wrap_db_error(
                exc, "putting a job through the caller's connection", self.where
            ) from exc

    # ------------------------------------------------------------------ claims

    async def claim(self, queue: str, limit: int, lease_seconds: float) -> ClaimResult:
        """Lease up to ``limit`` ready jobs of ``queue``, highest priority first, FIFO within one.

        If the caller is cancelled, leases the claim took are released before the cancellation
        reaches it (bounded by :data:`RELEASE_WAIT`).
        """
        writer = self._check_open()
        releases: list[Op[bool]] = []

        def abandon(result: ClaimResult) -> None:
            for record in result.records:
                assert record.lease_token is not None
                logger.debug(
                    "claim abandoned by a cancelled caller; releasing the lease",
                    extra={"action": "job_released", "job_id": record.id, "queue": queue},
                )
                op = self._release_op(record.id, record.lease_token, queue)
                releases.append(op)
                writer.submit_nowait(op)

        op = ClaimOp(self._ctx, queue, limit, lease_seconds, abandon)
        op.size = limit
        try:
            result = await writer.run(op)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_WAIT):
                    await op.done.wait()
                    await writer.flush()
                    for release in releases:
                        await release.done.wait()
            raise
        if result.rescued and hub.observed:
            _emit_rescued(result.rescued)
        return result

    async def set_flow(self, queue: str, changes: dict[str, Any]) -> None:
        """Change ``queue``'s flow-control settings (see :func:`.flow.configure`)."""
        await self.write(
            lambda conn: flow.configure(conn, self.backend, queue, self.clock(), changes),
            on_commit=self._woken(queue, work=True),
        )

    async def flow_settings(self, queue: str) -> flow.FlowSettings:
        """``queue``'s flow-control settings (all unset when it has none)."""
        return await self.read(
            lambda conn: flow.read_settings(conn, queue), "reading the queue's settings"
        )

    async def rescue(self) -> int:
        """Move jobs whose lease expired back to queued (or to dead when attempts are spent)."""
        found: list[Rescued] = []

        def run(conn: Connection) -> int:
            found.clear()  # the writer may run a batch again after a busy database
            return tx.rescue(conn, self._ctx, self.clock(), found)

        def woken(count: int) -> None:
            if count:
                self.wakeups.notify_all_work()

        count = await self.write(run, on_commit=woken)
        if found and hub.observed:
            _emit_rescued(found)
        return count

    # ------------------------------------------------------------------ outcomes

    def _changed(self, queue: str | None) -> None:
        if queue is not None:
            # A job of a capped queue ending frees a slot: wake its claimers too.
            self.wakeups.notify(queue, work=queue in self._ctx.capped)

    async def ack(
        self,
        job_id: int,
        token: str,
        result: bytes | None,
        *,
        delivery: tx.Delivery | None = None,
    ) -> None:
        """Mark a delivery done, storing ``result``.

        Given its :class:`~.transactions.Delivery` (a :class:`Job` knows it), the acks committed
        together are written with one statement each for all of them.

        :raises LeaseLost: when the lease is no longer this delivery's.
        """
        writer = self._check_open()
        op: Op[str | None]
        if delivery is not None:
            op = tx.AckOp(self._ctx, delivery, result, self._changed)
        else:
            op = Op(
                lambda conn: tx.ack(conn, self._ctx, job_id, token, result),
                self._changed,
                kind="ack",
            )
        op.size = 1
        await writer.run(op)

    async def nack(
        self,
        job_id: int,
        token: str,
        run_at: float,
        error: str | None,
        *,
        ready_at: float | None = None,
    ) -> JobState:
        """Retry a delivery at ``run_at``, or make the job dead when its attempts are spent.

        :param ready_at: when the delivery's job had become claimable (for wait times).
        :returns: the job's new state (QUEUED or DEAD).
        """

        def committed(result: tuple[JobState, str | None]) -> None:
            if result[1] is not None:
                self.wakeups.notify(result[1], work=True)

        state, _ = await self.write(
            lambda conn: tx.nack(conn, self._ctx, job_id, token, run_at, error, ready_at),
            on_commit=committed,
            size=1,
        )
        return state

    async def fail(self, job_id: int, token: str, error: str | None) -> None:
        """Make the job dead now, whatever its attempts."""
        await self.write(
            lambda conn: tx.fail(conn, self._ctx, job_id, token, error),
            on_commit=self._changed,
            size=1,
        )

    def _release_op(self, job_id: int, token: str, queue: str) -> Op[bool]:
        def committed(released: bool) -> None:
            if released:
                self.wakeups.notify(queue, work=True)

        op = Op(lambda conn: tx.release(conn, self._ctx, job_id, token, queue), committed)
        op.size = 1
        return op

    async def release(self, job_id: int, token: str, queue: str) -> bool:
        """Hand a lease back without counting the attempt (shutdown, cancellation).

        Idempotent: a lease that is already gone is left alone. Returns whether it was released.
        """
        writer = self._check_open()
        return await writer.run(self._release_op(job_id, token, queue))

    async def extend(self, job_id: int, token: str, seconds: float) -> float:
        """Make the lease end ``seconds`` from now; returns the new expiry.

        :raises LeaseLost: when the lease is no longer this delivery's.
        """
        return await self.write(
            lambda conn: tx.extend(conn, self._ctx, job_id, token, seconds),
            kind="extend",
            size=1,
        )

    # ------------------------------------------------------------------ CRUD

    async def cancel(self, job_id: int, queue: str) -> bool:
        """Cancel a queued or running job; False when it had already finished."""

        def committed(cancelled: bool) -> None:
            if cancelled:
                self.wakeups.notify(queue, work=False)
                self.wakeups.notify_cancelled(queue, job_id)

        return await self.write(
            lambda conn: tx.cancel(conn, self._ctx, job_id, queue), on_commit=committed
        )

    async def requeue(self, job_id: int, queue: str) -> None:
        """Put a done, dead or cancelled job back in the queue with its attempts reset."""
        await self.write(
            lambda conn: tx.requeue(conn, self._ctx, job_id, queue),
            on_commit=self._woken(queue, work=True),
        )

    async def delete(self, job_id: int, queue: str) -> None:
        """Delete a job and its history."""
        await self.write(
            lambda conn: tx.delete_job(conn, job_id, queue),
            on_commit=self._woken(queue, work=False),
        )

    async def purge(self, queue: str, state: JobState) -> int:
        """Delete every job of ``queue`` in ``state``; returns how many."""
        return await self.write(
            lambda conn: tx.purge(conn, queue, state), on_commit=self._woken(queue, work=False)
        )

    async def clean(self, older_than: float) -> int:
        """Delete finished jobs (all queues) that finished before ``older_than`` (epoch seconds)."""
        total = 0
        while True:
            count = await self.write(lambda conn: tx.clean(conn, self._ctx, older_than))
            total += count
            if count < CLEAN_CHUNK:
                break
        if total:
            logger.info("cleaned finished jobs", extra={"action": "jobs_cleaned", "count": total})
        return total

    # ------------------------------------------------------------------ reads

    async def read(self, fn: Callable[[AsyncConnection], Awaitable[T]], action: str) -> T:
        """Run ``fn`` on a pooled read connection; ``action`` names it in errors."""
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
        except OSError as exc:  # a refused connect (a server restarting) is not a DBAPIError
            raise DatabaseError(f"{action} failed on {self.where}: {exc}") from exc
        return result

    async def counts(self, queue: str) -> dict[JobState, int]:
        """The number of jobs of ``queue`` in each state."""
        return await self.read(lambda conn: reads.counts(conn, queue), "reading stats")

    async def active_count(self, queue: str) -> int:
        """Queued (delayed included) plus running jobs of ``queue``."""
        return await self.read(lambda conn: reads.active_count(conn, queue), "counting jobs")

    async def read_job(
        self, job_id: int, queue: str
    ) -> tuple[JobRecord, list[AttemptRecord]] | None:
        """One job and its attempts (the running one last), or None."""
        return await self.read(lambda conn: reads.read_job(conn, job_id, queue), "reading a job")

    async def list_jobs(
        self,
        queue: str,
        state: JobState | None,
        limit: int,
        offset: int,
        *,
        tags: Sequence[str] = (),
    ) -> list[tuple[JobRecord, list[AttemptRecord]]]:
        """Jobs of ``queue`` (in ``state``, with every one of ``tags``), oldest first, with
        their attempts."""
        return await self.read(
            lambda conn: reads.list_jobs(conn, queue, state, limit, offset, tags), "listing jobs"
        )

    async def queue_names(self) -> list[str]:
        """Every queue name that has jobs, sorted."""
        return await self.read(admin.queue_names, "listing queues")


def _emit_rescued(found: Sequence[Rescued]) -> None:
    for r in found:
        hub.emit(
            JobEvent(
                kind=EventKind.JOB_DEAD if r.dead else EventKind.JOB_RESCUED,
                queue=r.queue,
                job_id=r.job_id,
                attempts=r.attempts,
                error=EXPIRED_ERROR,
            )
        )
