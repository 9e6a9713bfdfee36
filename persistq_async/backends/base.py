"""The driver interface: every way the job path differs by database is a declared method here.

A module outside ``backends/`` never asks which database it runs on; it calls one of these.
Adding a database means one new module implementing :class:`Backend`, a branch in
:func:`~persistq_async.backends.backend_for`, and a line in the tests' backend fixture, which runs
the whole conformance suite (``tests/backends/``) on it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Select

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ..config import Options

__all__ = ["Backend", "InlineWrites", "TryLock", "error_chain"]


def error_chain(exc: BaseException) -> list[BaseException]:
    """``exc``, the driver error a SQLAlchemy error wraps (``orig``), and their causes
    (``raise ... from``), each once, outermost first: how a backend finds what a wrapped error
    was. Contexts (an error raised while handling another) are not followed: they may be
    unrelated."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        item = pending.pop(0)
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        orig = getattr(item, "orig", None)
        pending.extend([orig if isinstance(orig, BaseException) else None])
        pending.append(item.__cause__)
    return seen


class TryLock(Protocol):
    """A lock that can be taken without waiting."""

    def try_acquire(self) -> bool:
        """Hold it if nobody else does; return whether it is now held."""

    def release(self) -> None:
        """Let the next holder in."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InlineWrites:
    """What a dedicated writer needs to run a small batch on the event loop's thread itself,
    when its thread is idle: what the hand-over to the thread and back costs is then saved.

    The loop must never wait, so the inline attempt gives up, and the thread takes the batch,
    whenever waiting would be needed.
    """

    #: :meth:`Backend.writer_lock`, taken without waiting around the inline batch.
    lock: TryLock
    #: ``wait(conn, False)`` before an inline batch: fail at once, writing nothing, when
    #: another connection holds the database's write lock; ``wait(conn, True)`` before a batch
    #: on the thread: wait for it as usual.
    wait: Callable[[Connection, bool], None]
    #: Whether the thread should checkpoint before the next inline batch (a checkpoint may
    #: sync the database file, which the loop must not wait for).
    checkpoint_due: Callable[[], bool]
    #: Called when the writer's connection is closed.
    close: Callable[[], None]


class Backend(abc.ABC):
    """The parts of the job path that differ by database.

    :param url: the SQLAlchemy URL, already checked for the right async driver.
    :param options: the resolved queue options.
    :param create: whether opening may create the database (the SQLite file, the schema); with
        False, a missing database raises :class:`~persistq_async.errors.DatabaseNotFound`.
    """

    #: "sqlite" or "postgresql"
    name: str

    def __init__(self, url: URL, options: Options, *, create: bool = True) -> None:
        self.url = url
        self.options = options
        self.create = create

    def describe(self) -> str:
        """The database for messages: the URL without its password."""
        return self.url.render_as_string(hide_password=True)

    @abc.abstractmethod
    def create_engine(self) -> AsyncEngine:
        """The async engine for reads (and, where there is no write thread, for writes)."""

    def create_write_engine(self) -> Engine | None:
        """A synchronous engine for a dedicated writer thread, or None to write through
        :meth:`create_engine`'s pool."""
        return None

    @abc.abstractmethod
    async def prepare(self) -> None:
        """Check what can be checked before connecting (directory exists, file is ours...);
        with ``create`` False, raise :class:`~persistq_async.errors.DatabaseNotFound` when
        the database plainly is not there."""

    def lock_schema(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Serialize schema creation among processes; called inside the write transaction."""

    def finish_schema(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Called outside any transaction once the schema is known to be ours and current."""

    @abc.abstractmethod
    def lock_claim(self, select: Select[Any]) -> Select[Any]:
        """Make the claim's inner select skip rows other transactions hold, where that applies."""

    def lock_settings_row(self, select: Select[Any]) -> Select[Any] | None:
        """The select of a queue's settings row, locked until the claim transaction ends, or None
        where write transactions already run one at a time (SQLite's write lock): a claim that
        counts running jobs or takes rate-limit tokens must not interleave with another's."""
        return None

    @abc.abstractmethod
    async def change_token(self, conn: AsyncConnection | None) -> int:
        """A number that changes when another connection commits (cheap to read)."""

    def change_token_sees_every_commit(self) -> bool:
        """Whether :meth:`change_token` moves on every commit of another connection (jobs
        finishing included), or only on some (new work); waiters for finished jobs then read
        on a ``poll_interval`` instead."""
        return False

    def writer_lock(self) -> AbstractContextManager[Any] | None:
        """A lock the writer thread holds around each batch, if the backend needs one."""
        return None

    def inline_writes(self) -> InlineWrites | None:
        """How a dedicated writer may run a small batch on the event loop's thread, or None
        when every batch goes to its thread."""
        return None

    async def dispose_engine(self, engine: AsyncEngine) -> None:
        """Close the connections of :meth:`create_engine`'s engine (at the queue's close)."""
        await engine.dispose()

    def notify_work(self, conn: Connection, queue: str) -> None:  # noqa: B027 - optional hook
        """Inside a write transaction that made jobs of ``queue`` claimable: tell other
        processes at commit, where the database can."""

    async def start_watching(self, on_work: Callable[[str], None]) -> None:  # noqa: B027
        """Begin listening for other processes' :meth:`notify_work`; ``on_work(queue)``."""

    async def stop_watching(self) -> None:  # noqa: B027 - optional hook
        """Stop what :meth:`start_watching` began."""

    def try_lock_maintenance(self, conn: Connection) -> bool:
        """Inside a write transaction: whether this process may run the cleaner now (one
        process at a time where many share the database)."""
        return True

    def needs_watch_connection(self) -> bool:
        """Whether :meth:`change_token` needs a connection of its own."""
        return False

    @abc.abstractmethod
    def is_busy(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a lock conflict that is safe to retry."""

    @abc.abstractmethod
    def same_database(self, other: URL) -> bool:
        """Whether ``other`` (a normalized URL) names the database this backend opens."""

    def check_owner(self, conn: Connection, tables: set[str]) -> None:  # noqa: B027
        """Inside the schema transaction: refuse a database that belongs to something else.

        :param tables: the database's table names.
        :raises SchemaError: when the database is not one a queue may be added to.
        """

    def stamp_owner(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Inside the transaction that created the schema: mark the database as ours."""

    @abc.abstractmethod
    def insert_jobs(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert rows of the jobs table (every row with the same keys); their ids, in order.

        Like :meth:`notify_work`, it tells other processes at commit that the rows' queues have
        work, where the database can.
        """

    @abc.abstractmethod
    def insert_deduplicated(self, conn: Connection, row: Mapping[str, Any]) -> int | None:
        """Insert a job row unless an active job of its queue holds its ``dedupe_key``.

        :returns: the new id, or None when the key was held (nothing written).
        """

    @abc.abstractmethod
    def insert_settings_row(self, conn: Connection, queue: str, now: float) -> None:
        """Insert ``queue``'s flow-control settings row with nothing set, unless it exists
        (another process may insert it at the same moment)."""

    def grouped_put_rows(self) -> int:
        """How many rows the puts of several callers in one writer batch may insert with one
        statement (:meth:`insert_jobs`); 0 when such puts run one by one."""
        return 0

    def native_writes(self) -> bool:
        """Whether the hot writes (:meth:`native_insert_jobs`, :meth:`native_claim`,
        :meth:`native_ack`) run as driver-level statements on a connection the pool handed
        out, each one statement in autocommit, without SQLAlchemy's execution around them."""
        return False

    async def native_insert_jobs(self, driver: Any, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """With :meth:`native_writes`: insert rows of the jobs table (every row with the same
        keys, no ``dedupe_key``) as one statement in autocommit on ``driver`` (the driver's own
        connection), notifying their queues at commit; their ids, in the order of the rows."""
        raise NotImplementedError

    async def native_ack(
        self, driver: Any, acks: Sequence[tuple[int, str, bytes | None]], now: float
    ) -> dict[int, str]:
        """With :meth:`native_writes`: mark the deliveries ``(job id, lease token, result)`` done
        and write their attempt rows, as one statement in autocommit on ``driver``. Only the
        deliveries still running under their token are applied; their job ids, each with its
        queue. The others wrote nothing (the caller finds out why the usual way)."""
        raise NotImplementedError

    async def native_claim(
        self, driver: Any, *, queue: str, limit: int, now: float, token: str, expires: float
    ) -> tuple[list[Any], float | None, float | None] | None:
        """With :meth:`native_writes`: lease up to ``limit`` ready jobs of ``queue`` as one
        statement in autocommit: their rows, the earliest ``run_at`` of the queue's queued jobs
        and the earliest lease expiry (both read only when fewer were leased). None, having
        written nothing, where the claim needs more than that (flow control, expired leases to
        rescue first): the caller claims the usual way."""
        raise NotImplementedError

    def wal_bytes(self) -> int | None:
        """The size of the write-ahead log this process can see, in bytes; None where the
        database keeps it out of reach (a server). For health checks."""
        return None

    def wal_warn_bytes(self) -> int:
        """The WAL size above which health checks say "degraded" by default."""
        return 64 * 1024 * 1024

    def before_batch(self, conn: Connection, kinds: Sequence[str]) -> None:  # noqa: B027
        """On a dedicated writer thread, before a batch of operations of these kinds."""

    def after_batch(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """On a dedicated writer thread, after a batch committed (housekeeping; must not raise)."""

    @abc.abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` (a driver error, or anything in its chain of causes) is a failure
        that the same write may get past if tried again a little later: the server restarting
        or refusing connections, the connection lost, a lock or serialization conflict. A
        permanent error (a constraint, a bad statement, a full disk, a lost lease) is not.

        A transient error says nothing about whether the write committed; see
        :meth:`never_committed`.
        """

    @abc.abstractmethod
    def never_committed(self, exc: BaseException) -> bool:
        """Whether a write that failed with ``exc`` certainly did not commit: the connection
        was never made, or the database rolled the transaction back (a conflict). A connection
        lost during a transaction is not such an error: its ``COMMIT`` may have been applied
        without the answer reaching us. Only writes for which this holds may be repeated
        blindly (a put without a dedupe key)."""
