"""One write: :class:`Op` (a function of a connection, and what to do once it committed or was
abandoned) and :class:`BulkOp` (ops of one class that may run together as one statement).

The writers (:mod:`.writer`, :mod:`.direct`) run them; :mod:`.transactions` and
:mod:`.claiming` define the ones of the job path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import anyio

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["BulkOp", "Op"]

#: The writer's logger: a failing post-commit hook is the writer's to report, as before.
logger = logging.getLogger("persistq_async.store.writer")

T = TypeVar("T")


class Op(Generic[T]):
    """One write: ``fn(connection)`` and what to do once it committed or was abandoned."""

    __slots__ = (
        "_done",
        "abandoned",
        "error",
        "finished",
        "fn",
        "kind",
        "on_abandon",
        "on_commit",
        "result",
        "single_statement",
        "size",
        "waiter",
    )

    def __init__(
        self,
        fn: Callable[[Connection], T],
        on_commit: Callable[[T], None] | None = None,
        on_abandon: Callable[[T], None] | None = None,
        *,
        kind: str = "write",
    ) -> None:
        self.fn = fn
        #: Whether ``fn`` runs exactly one statement, so that alone it needs no transaction
        #: around it (see :meth:`DirectWriter._execute`).
        self.single_statement = False
        #: What the operation is (put, claim, ack...), for crash points and diagnostics.
        self.kind = kind
        #: How many rows it touches at most, when the store knows (one job's outcome: 1; a
        #: put: its jobs; a claim: its limit); None keeps it on the writer's thread (a clean
        #: or a bulk change may take long, and the event loop would wait for it).
        self.size: int | None = None
        self.on_commit = on_commit
        self.on_abandon = on_abandon
        self._done: anyio.Event | None = None
        #: A future of the event loop set by :meth:`finish`, for a writer that waits on one
        #: (cheaper than an event when nothing else waits for the op).
        self.waiter: asyncio.Future[None] | None = None
        self.result: T | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.abandoned = False

    @property
    def done(self) -> anyio.Event:
        """Set once the op committed or failed; made when first asked for (most ops are
        awaited through :attr:`waiter`, and an event per op costs a few microseconds)."""
        if self._done is None:
            self._done = anyio.Event()
            if self.finished:
                self._done.set()
        return self._done

    def value(self) -> T:
        """The result, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]

    def abandon(self) -> None:
        """The caller stopped waiting: undo a success that nobody will receive."""
        if self.abandoned:
            return
        self.abandoned = True
        if self.finished and self.error is None and self.on_abandon is not None:
            self.on_abandon(self.result)  # type: ignore[arg-type]

    def finish(self) -> None:
        """Wake the caller, then run the post-commit hooks; on the event loop's thread.

        The caller first: a task woken by the hooks' notifications (``join()``, say) then finds
        the caller's own bookkeeping after the write already done.
        """
        self.finished = True
        if self._done is not None:
            self._done.set()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.error is None:
            try:
                if self.on_commit is not None:
                    self.on_commit(self.result)  # type: ignore[arg-type]
                if self.abandoned and self.on_abandon is not None:
                    self.on_abandon(self.result)  # type: ignore[arg-type]
            except Exception:  # a wake-up must never break the writer
                logger.exception("post-commit hook failed", extra={"action": "hook_failed"})


class BulkOp(Op[T]):
    """An op that may run together with the other ops of its class in a batch, as one statement.

    A subclass carries the typed data its :meth:`run_together` needs.
    """

    __slots__ = ()

    @classmethod
    def run_together(cls, conn: Connection, ops: list[Self]) -> bool:
        """Run ``ops`` (two or more of this class) at once, setting each one's ``result``.

        :returns: False, having written nothing, when they must run one by one instead.
        """
        raise NotImplementedError

    @classmethod
    async def run_native(cls, driver: Any, ops: list[Self]) -> list[Self] | None:
        """Run ``ops`` (one or more of this class) on ``driver``, the driver's own connection
        (see :meth:`.Backend.native_writes`), each op within one statement in autocommit,
        setting the ``result`` of each op applied.

        :returns: the ops still to run the usual way (they wrote nothing), or None when this
            class has no native form (nothing written).
        """
        return None
