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
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ..config import Options

__all__ = ["Backend"]


class Backend(abc.ABC):
    """The parts of the job path that differ by database.

    :param url: the SQLAlchemy URL, already checked for the right async driver.
    :param options: the resolved queue options.
    """

    #: "sqlite" or "postgresql"
    name: str

    def __init__(self, url: URL, options: Options) -> None:
        self.url = url
        self.options = options

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
        """Check what can be checked before connecting (directory exists, file is ours...)."""

    def lock_schema(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Serialize schema creation among processes; called inside the write transaction."""

    def finish_schema(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Called outside any transaction once the schema is known to be ours and current."""

    @abc.abstractmethod
    def lock_claim(self, select: Select[Any]) -> Select[Any]:
        """Make the claim's inner select skip rows other transactions hold, where that applies."""

    @abc.abstractmethod
    async def change_token(self, conn: AsyncConnection | None) -> int:
        """A number that changes when another connection commits (cheap to read)."""

    def writer_lock(self) -> AbstractContextManager[Any] | None:
        """A lock the writer thread holds around each batch, if the backend needs one."""
        return None

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

    def grouped_put_rows(self) -> int:
        """How many rows the puts of several callers in one writer batch may insert with one
        statement (:meth:`insert_jobs`); 0 when such puts run one by one."""
        return 0

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
