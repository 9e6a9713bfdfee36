"""The PostgreSQL writer: writes on pooled connections in the callers' tasks, batched by a leader.

The server takes concurrent writers itself, so there is no writer thread: the first caller to
find no batch running becomes the leader, lets the event loop run once (writes woken by the
same event join it), and runs what is pending. Bulk ops (puts, claims, acks) whose backend has
a native form (:meth:`.Backend.native_writes`) run first, one driver-level statement per kind in
autocommit, on a connection the writer keeps from the pool: no ``BEGIN``/``COMMIT`` round trips,
no checkout, no SQLAlchemy execution or greenlet hop around them. The rest (and what a native
statement declines: a claim under flow control, an ack whose lease is gone) run as before,
through SQLAlchemy on a pooled connection: in one transaction, a lone single-statement op in
autocommit.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from sqlalchemy.exc import DBAPIError

from ..errors import DatabaseError, QueueClosed
from .dberror import wrap_db_error
from .writer import MAX_BATCH, BulkOp, Op, Writer, run_alone, run_batch

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["DirectWriter"]

T = TypeVar("T")


class DirectWriter(Writer):
    """Writes on a pooled connection in the callers' tasks, batched by a leader.

    The first caller to find no batch running becomes the leader: it runs every pending
    operation, then the ones that arrived meanwhile, until its own is done. The others wait for
    their operation, or for the leader to go (say it was cancelled by asyncio's own
    ``Task.cancel``, which pierces anyio's shield), and then lead themselves.

    :param native: run bulk ops' native form (:meth:`.BulkOp.run_native`) first.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        where: str,
        is_busy: Callable[[BaseException], bool],
        native: bool = False,
    ) -> None:
        self._engine = engine
        self._where = where
        self._is_busy = is_busy
        self._native = native
        self._pending: deque[Op[Any]] = deque()
        self._leading = False
        # Set (and replaced) when ops finished or the leader left: what waiters wait for. One
        # event for all of them costs a wake-up each, where a task group per waiter watching
        # its op and the leader cost two tasks and a cancel scope each.
        self._turn = anyio.Event()
        self._sleepers = 0  # callers waiting for the turn
        # The ops whose callers wait for them (not those of submit_nowait).
        self._waiting: set[Op[Any]] = set()
        # The connection the native statements run on, kept checked out from the pool while
        # the queue is open (the pool keeps that many idle connections open anyway): a
        # checkout and check-in per batch cost more than a lone put's statement.
        self._native_conn: AsyncConnection | None = None
        self._driver: Any = None
        # Set when a batch was interrupted: the connection may be mid-statement.
        self._suspect = False
        self._closing = False

    def _wake(self) -> None:
        if self._sleepers:  # a lone caller (most puts) has nobody to wake
            self._turn.set()
            self._turn = anyio.Event()

    def _finish(self, ops: list[Op[Any]]) -> None:
        # The waiters first, then each op's hooks: a task woken by the hooks' notifications
        # (join(), say) then finds the callers' own bookkeeping after the write already done.
        self._wake()
        for op in ops:
            if not op.finished:
                op.finish()

    async def _native_driver(self) -> Any:
        """The driver connection for native statements: the one kept, replaced when the server
        closed it or an interrupted batch may have left it mid-statement."""
        conn = self._native_conn
        if conn is None:
            conn = self._native_conn = await self._engine.connect()
            self._driver = None
        if self._suspect or (self._driver is not None and self._driver.is_closed()):
            self._suspect = False
            self._driver = None
            await conn.invalidate()
        if self._driver is None:
            self._driver = (await conn.get_raw_connection()).driver_connection
        return self._driver

    async def _run_native(self, batch: list[Op[Any]]) -> list[Op[Any]]:
        """Run the batch's bulk ops in their native form, one statement per class, and finish
        them (each applied, or failed with its statement); return the ops left to run the
        usual way."""
        groups: dict[type[BulkOp[Any]], list[BulkOp[Any]]] = {}
        rest: list[Op[Any]] = []
        for op in batch:
            if isinstance(op, BulkOp):
                groups.setdefault(type(op), []).append(op)
            else:
                rest.append(op)
        if not groups:
            return batch
        settled: list[Op[Any]] = []
        # Claims last: they then find the jobs that puts of the same batch inserted.
        for kind, group in sorted(groups.items(), key=lambda item: item[1][0].kind == "claim"):
            driver = await self._native_driver()
            try:
                left = await kind.run_native(driver, group)
            except Exception as exc:  # the driver's own errors, not SQLAlchemy's
                error = wrap_db_error(exc, "writing", self._where)
                for op in group:
                    op.result, op.error = None, error
                settled.extend(group)
                # Whatever failed (the server going away mid-statement, say), the connection
                # may be unusable (asyncpg: "another operation is in progress"): the pool
                # replaces it before the next statement.
                self._suspect = True
                continue
            if left is None:
                rest.extend(group)
            else:
                rest.extend(left)
                settled.extend(op for op in group if op not in left)
        # Committed: their callers go on at once, not after the rest of the batch.
        self._finish(settled)
        return rest

    async def _execute(self, batch: list[Op[Any]], mine: Op[Any]) -> None:
        """Run ``batch``. When the leader's own op ran natively and callers wait for the rest,
        the rest goes back to the front of the queue (removed from ``batch``) for one of them
        to lead: the leader's caller then gets on with its work at once."""
        rest = batch
        try:
            if self._native:
                rest = await self._run_native(batch)
                if rest and mine.finished and any(op in self._waiting for op in rest):
                    self._pending.extendleft(reversed(rest))
                    batch[:] = [op for op in batch if op.finished]
                    rest = []
            if rest:
                await self._run_usual(rest)
        except DBAPIError as exc:
            error: BaseException = wrap_db_error(exc, "connecting", self._where)
        except OSError as exc:
            error = DatabaseError(f"connecting failed on {self._where}: {exc}")
            error.__cause__ = exc  # what the backend looks at to tell a transient failure
        else:
            self._finish(batch)
            return
        for op in rest:
            if not op.finished:  # the ops run natively have their own outcome
                op.result, op.error = None, error
        self._finish(batch)

    async def _run_usual(self, rest: list[Op[Any]]) -> None:
        """Run ops through SQLAlchemy on a connection of the pool: in one transaction, or a
        lone single-statement op in autocommit."""
        async with self._engine.connect() as conn:
            if len(rest) == 1 and rest[0].single_statement:
                # One statement is atomic by itself: in autocommit it is one round trip,
                # where BEGIN and COMMIT around it would be three.
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.run_sync(
                    lambda sync_conn: run_alone(sync_conn, rest[0], where=self._where)
                )
            else:
                await conn.run_sync(
                    lambda sync_conn: run_batch(
                        sync_conn, rest, where=self._where, is_busy=self._is_busy, sleep=None
                    )
                )

    async def _lead(self, mine: Op[Any]) -> None:
        # Lead only until this caller's own op is done: then the caller gets on with its work
        # and a waiter takes over the rest.
        self._leading = True
        batch: list[Op[Any]] = []
        try:
            # One pass of the event loop first: writes of tasks woken by the same event (the
            # acks of a claim's handlers, say) then join this batch, one statement for all.
            await anyio.lowlevel.cancel_shielded_checkpoint()
            while self._pending and not mine.finished:
                count = min(MAX_BATCH, len(self._pending))
                batch = [self._pending.popleft() for _ in range(count)]
                await self._execute(batch, mine)
        finally:
            for op in batch:
                if not op.finished:  # the leader was interrupted mid-batch
                    # A statement in autocommit, or a COMMIT, may have reached the server.
                    op.error = DatabaseError(
                        "the write was interrupted; it may or may not have been applied"
                    )
                    self._suspect = True
            self._leading = False
            self._finish(batch)

    async def _drive(self, op: Op[Any]) -> None:
        while not op.finished:
            if self._leading:
                self._sleepers += 1
                try:
                    await self._turn.wait()
                finally:
                    self._sleepers -= 1
            else:
                await self._lead(op)

    async def run(self, op: Op[T]) -> T:
        """Add ``op`` to the next batch and see it committed, shielded from cancellation."""
        if self._closing:
            raise QueueClosed("the queue is closed; nothing was written")
        self._pending.append(op)
        self._waiting.add(op)
        try:
            with anyio.CancelScope(shield=True):
                await self._drive(op)
        except BaseException:
            op.abandon()
            raise
        finally:
            self._waiting.discard(op)
        return op.value()

    def submit_nowait(self, op: Op[Any]) -> None:
        """Keep ``op`` for the next batch (run by the next caller, or by :meth:`flush`)."""
        self._pending.append(op)

    async def flush(self) -> None:
        """Run what is pending."""
        with anyio.CancelScope(shield=True):
            while self._pending:
                await self._drive(self._pending[-1])

    async def aclose(self) -> None:
        """Run what is pending and hand the kept connection back; the engine is disposed by
        the store."""
        self._closing = True
        await self.flush()
        conn, self._native_conn, self._driver = self._native_conn, None, None
        if conn is not None:
            # A connection lost already has nothing to hand back.
            with anyio.CancelScope(shield=True), contextlib.suppress(DBAPIError, OSError):
                await conn.close()
