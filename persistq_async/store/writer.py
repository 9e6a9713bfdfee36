"""How writes reach the database: one transaction per batch, each caller woken with its own result.

SQLite (:class:`ThreadWriter`): a dedicated thread owns the only write connection of the queue.
Writes submitted while a batch is in flight wait in a list and go together in the next batch:
one ``BEGIN IMMEDIATE``, every operation's statements, one ``COMMIT`` (group commit, one fsync),
all in one hop to the thread. Results come back to the event loop by a callback, not through an
awaiting task, so a cancelled caller can never interrupt a transaction half-way, and a queue may
be closed from another task than the one that opened it. Where the backend allows it (SQLite at
durability "normal", :meth:`.Backend.inline_writes`), a small batch found the thread idle runs on
the event loop's thread instead, in a callback, with the same connection: when nothing would
make it wait (see :meth:`ThreadWriter._run_inline`).

PostgreSQL (:class:`~.direct.DirectWriter`, in its own module): the server takes concurrent
writers itself, so operations run in short transactions on pooled connections, in the callers'
tasks, shielded from cancellation.

An operation is a synchronous function of a SQLAlchemy ``Connection``. It may raise a
:class:`~persistq_async.PersistQError` only before its first write; a database error in one
operation rolls the batch back, and the batch is run again without it, so one failing operation
never fails the others.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import queue as stdlib_queue
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .._crash import crash_point
from ..backends.base import InlineWrites
from ..errors import DatabaseError, PersistQError, QueueClosed
from .dberror import wrap_db_error
from .ops import BulkOp, Op

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = [
    "BulkOp",
    "Op",
    "ThreadWriter",
    "Writer",
    "run_batch",
    "wrap_db_error",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Most operations one transaction takes; bounds the time a batch holds the write lock.
MAX_BATCH = 512
#: Loop iterations a write waits for others to join its batch.
DISPATCH_TICKS = 4
#: How often a batch is retried when another process holds the lock past ``busy_timeout``.
MAX_BUSY_RETRIES = 20
#: Most operations a batch run on the event loop's thread may hold (see
#: ThreadWriter._run_inline). Measured with ``benchmarks/inline_writes.py`` (a 64-slot pool's
#: batches, its claim and the acks of the slots it refills, come to about 64 to 128): from 128 on,
#: a pool's cycle and 100 producers spent less CPU per job inline than on the thread (the
#: thread's overlap of SQLite's work with the loop's did not pay for its wake-ups on a 2-core
#: machine), and a batch this size blocks the loop for a few milliseconds at most.
INLINE_MAX_OPS = 128
#: Most rows (jobs put, claimed...; see :attr:`Op.size`) such a batch may touch: the loop is
#: blocked while it runs, so a bulk insert stays on the thread.
INLINE_MAX_ROWS = 128


def run_batch(
    conn: Connection,
    batch: list[Op[Any]],
    *,
    where: str,
    is_busy: Callable[[BaseException], bool],
    sleep: Callable[[float], None] | None,
    give_up_when_busy: bool = False,
) -> bool:
    """Run ``batch`` in one transaction, setting each op's result or error. Never raises.

    :param give_up_when_busy: when the database is busy, roll back and return False (nothing
        written, no op's result or error set) instead of retrying or failing the ops.
    :returns: False when it gave up so.

    Claims run last: a claim then also finds the jobs that puts of the same batch insert, and
    a job waits one commit for its consumer rather than two. Nobody awaiting a batch has seen
    any of its results yet, so any order of its operations is one the callers could have seen.
    """
    remaining = sorted(batch, key=_claims_last)
    tries = 0
    delay = 0.005
    while remaining:
        for op in remaining:
            op.result, op.error = None, None
        failed: Op[Any] | None = None
        try:
            conn.begin()
            done_in_bulk = _run_bulk(conn, remaining)
            for op in remaining:
                if op in done_in_bulk:
                    continue
                try:
                    op.result = op.fn(conn)
                except PersistQError as exc:
                    op.error = exc  # raised before the op wrote anything
                except DBAPIError as exc:
                    if is_busy(exc):
                        raise
                    op.error = wrap_db_error(exc, "writing", where)
                    failed = op
                    break
            if failed is None:
                if any(op.kind == "put" for op in remaining):
                    crash_point("mid-put")
                conn.commit()
                return True
            conn.rollback()
            remaining.remove(failed)  # run the others again without it
        except DBAPIError as exc:
            _rollback_quietly(conn)
            if give_up_when_busy and is_busy(exc):
                for op in batch:
                    op.result, op.error = None, None
                return False
            if is_busy(exc) and tries < MAX_BUSY_RETRIES and sleep is not None:
                tries += 1
                logger.debug(
                    "database busy; retrying a batch of %d",
                    len(remaining),
                    extra={"action": "write_busy"},
                )
                sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            error = wrap_db_error(exc, "writing", where)
            for op in remaining:
                op.error = error
            return True
        except OSError as exc:
            # A connection that could not be made again (SQLAlchemy re-connects a connection
            # it invalidated, and the driver's refusal is not a DBAPI error).
            _rollback_quietly(conn)
            error = DatabaseError(f"writing failed on {where}: {exc}")
            error.__cause__ = exc  # what the backend looks at to tell a transient failure
            for op in remaining:
                if op.error is None:
                    op.error = error
            return True
        except Exception as exc:
            _rollback_quietly(conn)
            logger.exception("a write batch failed unexpectedly", extra={"action": "write_failed"})
            for op in remaining:
                if op.error is None:
                    op.error = DatabaseError(f"writing failed on {where}: {exc!r}")
                    op.error.__cause__ = exc
            return True
    return True


def run_alone(conn: Connection, op: Op[Any], *, where: str) -> None:
    """Run a single-statement ``op`` on a connection in autocommit, setting its result or
    error. Never raises."""
    try:
        op.result = op.fn(conn)
    except PersistQError as exc:
        op.error = exc
    except DBAPIError as exc:
        op.error = wrap_db_error(exc, "writing", where)
    except Exception as exc:
        logger.exception("a write failed unexpectedly", extra={"action": "write_failed"})
        op.error = DatabaseError(f"writing failed on {where}: {exc!r}")


def _claims_last(op: Op[Any]) -> bool:
    return op.kind == "claim"


def _run_bulk(conn: Connection, ops: list[Op[Any]]) -> set[Op[Any]]:
    """Run groups of two or more bulk ops of one class together; return the ops so run."""
    groups: dict[type[BulkOp[Any]], list[BulkOp[Any]]] = {}
    for op in ops:
        if isinstance(op, BulkOp):
            groups.setdefault(type(op), []).append(op)
    done: set[Op[Any]] = set()
    for kind, group in groups.items():
        if len(group) > 1 and kind.run_together(conn, group):
            done.update(group)
    return done


def _rollback_quietly(conn: Connection) -> None:
    try:
        conn.rollback()
    except SQLAlchemyError:
        logger.debug("rollback failed", exc_info=True, extra={"action": "rollback_failed"})


class Writer(abc.ABC):
    """Runs write operations; see the module docstring."""

    @abc.abstractmethod
    async def run(self, op: Op[T]) -> T:
        """Run ``op`` and return its result; a cancelled caller abandons it (it still completes)."""

    @abc.abstractmethod
    def submit_nowait(self, op: Op[Any]) -> None:
        """Run ``op`` without waiting for it (handing back an abandoned claim)."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Run what :meth:`submit_nowait` left pending, where that needs the caller's task."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Finish every pending write, then release the connection."""


class ThreadWriter(Writer):
    """One thread, one SQLite connection, batches handed over and results called back."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        *,
        where: str,
        is_busy: Callable[[BaseException], bool],
        after_batch: Callable[[Connection], None] | None = None,
        before_batch: Callable[[Connection, list[str]], None] | None = None,
        lock: AbstractContextManager[Any] | None = None,
        inline: InlineWrites | None = None,
    ) -> None:
        self._connect = connect
        #: How small batches may run on the event loop's thread (None: never).
        self._inline = inline
        #: The connection, once the thread made it; used by the loop's thread only while
        #: ``_busy`` is False (the thread touches it only while it is True).
        self._conn: Connection | None = None
        #: Set when an inline commit left the WAL in need of a checkpoint: the next batch
        #: goes to the thread, which checkpoints after it (:meth:`.SQLiteBackend.after_batch`).
        self._checkpoint_due = False
        #: Held around everything the thread does with its connection (see
        #: :meth:`.SQLiteBackend.writer_lock`).
        self._lock: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
        self._after_batch = after_batch
        self._before_batch = before_batch
        self._where = where
        self._is_busy = is_busy
        self._pending: deque[Op[Any]] = deque()
        self._requests: stdlib_queue.SimpleQueue[list[Op[Any]] | None] = stdlib_queue.SimpleQueue()
        self._busy = False
        self._scheduled = False
        #: Ops in the last batch dispatched (see :meth:`_schedule`).
        self._last_size = 0
        self._closing = False
        #: Set when nothing is pending or running any more; made only by :meth:`aclose`.
        self._idle: anyio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self, setup: Callable[[Connection], None]) -> None:
        """Start the thread, connect, and run ``setup`` (schema creation) there; raise its error."""
        self._loop = asyncio.get_running_loop()
        ready = anyio.Event()
        outcome: list[BaseException | None] = []

        def report(error: BaseException | None) -> None:
            outcome.append(error)
            ready.set()

        self._thread = threading.Thread(
            target=self._main, args=(setup, report), name="persistq-writer", daemon=True
        )
        self._thread.start()
        with anyio.CancelScope(shield=True):
            await ready.wait()
        if outcome and outcome[0] is not None:
            await anyio.to_thread.run_sync(self._thread.join)
            raise outcome[0]

    def _main(
        self, setup: Callable[[Connection], None], report: Callable[[BaseException | None], None]
    ) -> None:
        loop = self._loop
        assert loop is not None
        try:
            with self._lock:  # opening runs the connection's pragmas (journal_mode=WAL)
                conn = self._connect()
        except BaseException as exc:
            loop.call_soon_threadsafe(report, exc)
            return
        try:
            try:
                with self._lock:
                    setup(conn)
            except BaseException as exc:
                loop.call_soon_threadsafe(report, exc)
                return
            self._conn = conn
            loop.call_soon_threadsafe(report, None)
            while True:
                batch = self._requests.get()
                if batch is None:
                    return
                with self._lock:
                    self._run(conn, batch)
                try:
                    loop.call_soon_threadsafe(self._completed, batch)
                except RuntimeError:  # the event loop is gone; nobody is waiting any more
                    return
        finally:
            self._conn = None
            try:
                with self._lock:
                    conn.close()
            except SQLAlchemyError:
                logger.debug(
                    "closing the write connection failed",
                    exc_info=True,
                    extra={"action": "connection_close_failed"},
                )
            if self._inline is not None:
                self._inline.close()

    def _run(self, conn: Connection, batch: list[Op[Any]]) -> None:
        if self._inline is not None:
            self._inline.wait(conn, True)
        if self._before_batch is not None:
            self._before_batch(conn, [op.kind for op in batch])
        run_batch(conn, batch, where=self._where, is_busy=self._is_busy, sleep=time.sleep)
        if self._after_batch is not None:
            try:
                self._after_batch(conn)
            except Exception:  # housekeeping must never stop the writer
                logger.debug(
                    "writer housekeeping failed",
                    exc_info=True,
                    extra={"action": "housekeeping_failed"},
                )

    def _schedule(self) -> None:
        # Dispatch a few loop iterations later, not at once: tasks woken by the last commit
        # (executors acking, a pool refilling the slots they freed) then join the same batch,
        # and one fsync serves them all. An idle loop runs the iterations in microseconds.
        # A lone caller (the last batch held one op and this one is alone too) has nobody to
        # wait for: it is dispatched at once. The first op of a burst then goes alone, the
        # rest gather behind it, and the next batch, larger than one, brings the wait back.
        if not self._busy and not self._scheduled:
            if self._last_size == 1 and len(self._pending) == 1:
                if self._inline is None:
                    self._dispatch()
                    return
                # One loop iteration later when it may run inline: the callers of this
                # iteration still share its transaction, and a caller that writes in a loop
                # yields to the other tasks at each write, as it does when the thread runs it.
                assert self._loop is not None
                self._scheduled = True
                self._loop.call_soon(self._dispatch)
                return
            self._scheduled = True
            self._defer(DISPATCH_TICKS)

    def _defer(self, ticks: int) -> None:
        assert self._loop is not None
        if ticks > 0:
            self._loop.call_soon(self._defer, ticks - 1)
        else:
            self._dispatch()

    def _dispatch(self) -> None:
        self._scheduled = False
        if self._busy or not self._pending:
            if not self._busy:
                self._set_idle()
            return
        count = min(MAX_BATCH, len(self._pending))
        batch = [self._pending.popleft() for _ in range(count)]
        self._last_size = count
        if self._inline is not None and self._run_inline(self._inline, batch):
            self._completed(batch)
            return
        self._to_thread(batch)

    def _to_thread(self, batch: list[Op[Any]]) -> None:
        self._busy = True
        self._checkpoint_due = False  # the thread checkpoints after the batch if need be
        self._requests.put(batch)

    def _run_inline(self, inline: InlineWrites, batch: list[Op[Any]]) -> bool:
        """Run ``batch`` here, on the event loop's thread, if nothing would make it wait.

        The hand-over to the thread and back costs more than a small batch at durability
        "normal" (no fsync): wake-ups of the thread and of the loop, tens to hundreds of
        microseconds of system time where the batch takes tens. A big batch stays on the thread
        (the loop would be blocked for as long as it runs, and it overlaps the thread's SQLite
        work with the loop's Python work). :data:`INLINE_MAX_OPS` was measured: see
        ``benchmarks/inline_writes.py``.

        Nothing here waits: the file's lock is only tried, and so is SQLite's write lock
        (``busy_timeout`` 0). When either is held (another queue or process of ours, a foreign
        connection), the transaction rolls back having written nothing and the thread takes
        the batch, waiting as usual. A checkpoint, which syncs the database file, is left to
        the thread (the connection's automatic checkpoint is off: see
        :meth:`.SQLiteBackend.inline_writes`).

        :returns: whether it ran (each op then has its result or error).
        """
        conn = self._conn
        if conn is None or self._checkpoint_due or len(batch) > INLINE_MAX_OPS:
            return False
        rows = 0
        for op in batch:
            if op.size is None:
                return False
            rows += op.size
        if rows > INLINE_MAX_ROWS:
            return False
        try:
            if not inline.lock.try_acquire():
                return False
        except OSError:
            return False  # the thread meets the error again, and reports it
        try:
            try:
                inline.wait(conn, False)
                if self._before_batch is not None:
                    self._before_batch(conn, [op.kind for op in batch])
            except Exception:  # nothing written yet: let the thread try, and report
                logger.debug(
                    "preparing a write on the event loop failed",
                    exc_info=True,
                    extra={"action": "write_failed"},
                )
                return False
            if not run_batch(
                conn,
                batch,
                where=self._where,
                is_busy=self._is_busy,
                sleep=None,
                give_up_when_busy=True,
            ):
                return False  # busy: rolled back, nothing written
            self._checkpoint_due = inline.checkpoint_due()
        finally:
            inline.lock.release()
        return True

    def _completed(self, batch: list[Op[Any]]) -> None:
        self._busy = False
        for op in batch:
            op.finish()
        if self._checkpoint_due and not self._busy:
            # An inline commit took the WAL past the mark: checkpoint now, on the thread.
            self._to_thread([])
        elif self._pending:
            self._schedule()
        else:
            self._set_idle()

    def _set_idle(self) -> None:
        if self._idle is not None:
            self._idle.set()
            self._idle = None

    def _submit(self, op: Op[Any]) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise QueueClosed("the queue is closed; nothing was written")
        self._pending.append(op)
        self._schedule()

    async def run(self, op: Op[T]) -> T:
        """Submit ``op`` to the next batch and wait for its commit."""
        loop = self._loop
        if self._closing or loop is None:
            raise QueueClosed("the queue is closed; nothing was written")
        op.waiter = waiter = loop.create_future()
        self._submit(op)
        try:
            await waiter
        except BaseException:
            op.abandon()
            raise
        return op.value()

    def submit_nowait(self, op: Op[Any]) -> None:
        """Add ``op`` to the next batch (allowed while closing: close waits for it)."""
        try:
            self._submit(op)
        except QueueClosed:
            logger.warning(
                "queue closed; a lease could not be released and will expire",
                extra={"action": "release_lost"},
            )

    async def flush(self) -> None:
        """Nothing to do: submitted operations run by themselves."""

    async def aclose(self) -> None:
        """Wait for every pending batch, then stop the thread."""
        self._closing = True
        thread = self._thread
        if thread is None:
            return
        with anyio.CancelScope(shield=True):
            while self._busy or self._pending or self._scheduled:
                if self._idle is None:
                    self._idle = anyio.Event()
                await self._idle.wait()
            self._requests.put(None)
            await anyio.to_thread.run_sync(thread.join)
        self._thread = None
