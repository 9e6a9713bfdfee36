"""SQLite through aiosqlite: WAL, STRICT tables, BEGIN IMMEDIATE, ``PRAGMA data_version``.

Pragmas, and why:

- ``journal_mode=WAL``: readers never block the writer, and a commit is one append.
- ``synchronous=FULL`` (durability "full", the default): the WAL is synced at every commit, so a
  returned ``put`` survives power loss. "normal" syncs only at checkpoints: a returned put survives
  a crash of the process but may be lost with the last transactions on power loss.
- ``busy_timeout``: a writer waits for another process's write lock instead of failing.
- ``journal_size_limit``: the WAL file is truncated back to this size after a checkpoint, so it
  stays bounded under continuous load.
- ``wal_autocheckpoint`` (writer connection, :data:`AUTOCHECKPOINT_PAGES`): the writer copies the
  WAL back into the database in small steps, inside the commit that passes the mark. At durability
  "normal" the writer runs small batches on the event loop's thread (:meth:`SQLiteBackend.
  inline_writes`), where a checkpoint's fsync must not happen: there SQLite's automatic checkpoint
  is off (0), and the writer thread checkpoints (``PASSIVE``) after a commit that left the WAL
  past the same mark, read from the WAL-index (:mod:`.wal_index`).
- ``foreign_keys=ON``: attempt rows go with their job.

Only the writer connection writes and checkpoints. SQLite 3.7.0 to 3.51.2 (fixed in 3.51.3,
3.50.7 and 3.44.6) have a race, the WAL-reset bug, in which a checkpoint that starts while
*another* connection resets the WAL can leave pages uncopied and corrupt the database. Every
writer of every process holds one lock per file (:mod:`.wal_lock`: a thread lock and ``flock`` on
a lock file beside the database) from ``BEGIN IMMEDIATE`` to the end of its commit's checkpoint,
and around opening and closing connections, so no checkpoint of ours overlaps a reset of ours
(docs/architecture.md, "the WAL lock", gives the argument). An application's own connection writing
the same file stays outside it. (A thread with a connection of its own that checkpointed beside the
writer, tried for latency, corrupted the database in a 30-minute kill -9 chaos run; see
docs/soak.md.)
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
from sqlalchemy import Select, create_engine, event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ..errors import DatabaseError, DatabaseNotFound, SchemaError
from ..schema import APPLICATION_ID, DEDUPE, jobs, queue_settings
from .base import Backend, InlineWrites, error_chain
from .prepared import insert_text
from .wal_index import WalIndex
from .wal_lock import WalLock, wal_lock_for

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection, Engine

__all__ = [
    "AUTOCHECKPOINT_PAGES",
    "GROUPED_PUT_ROWS",
    "WAL_CHECK_INTERVAL",
    "WAL_RESET_BUG",
    "WAL_WARN_BYTES",
    "SQLiteBackend",
]

logger = logging.getLogger(__name__)

_SQLITE_HEADER = b"SQLite format 3\x00"
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


#: The WAL size past which a checkpoint that cannot finish is reported.
WAL_WARN_BYTES = 64 * 1024 * 1024
#: Seconds between two checks of the WAL by the writer.
WAL_CHECK_INTERVAL = 5.0
#: WAL pages after which the writer checkpoints: SQLite's default. A checkpoint costs two syncs
#: and copies each page changed since the last one once, however often it changed, and a queue
#: rewrites the same few pages: at 250 pages a lone consumer at "normal" spent a fifth of its time
#: waiting for checkpoints (benchmarks/inline_writes.py), at 1,000 a quarter of that.
AUTOCHECKPOINT_PAGES = 1000


#: Rows one multi-row ``INSERT`` may hold: SQLite allows 32,766 bound values in a statement
#: (3.32+), and a job row has twelve.
GROUPED_PUT_ROWS = 2_000


@functools.lru_cache(maxsize=64)
def _multi_insert_sql(columns: tuple[str, ...], rows: int) -> str:
    """``INSERT INTO jobs (...) VALUES (?, ...), ...`` for ``rows`` rows (SQLite's paramstyle)."""
    one = "(" + ", ".join("?" * len(columns)) + ")"
    return f"INSERT INTO {jobs.name} ({', '.join(columns)}) VALUES " + ", ".join([one] * rows)


def _has_wal_reset_bug(version: tuple[int, int, int]) -> bool:
    """Whether this SQLite version has the WAL-reset bug (see the module docstring)."""
    if version >= (3, 51, 3):
        return False
    return not ((3, 50, 7) <= version < (3, 51, 0) or (3, 44, 6) <= version < (3, 45, 0))


#: Whether the SQLite this process uses has the WAL-reset bug.
WAL_RESET_BUG = _has_wal_reset_bug(sqlite3.sqlite_version_info)


def _foreign_tables(path: Path, mode: str) -> list[str]:
    """The tables of a database that is not a persistq database ([] for ours or an empty one)."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot read {path}: {exc}") from exc
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.DatabaseError as exc:
        raise SchemaError(f"{path} cannot be read as an SQLite database: {exc}") from exc
    finally:
        conn.close()
    tables = {str(r[0]) for r in rows}
    if "persistq_meta" in tables:
        return []
    return sorted(t for t in tables if not t.startswith(("persistq_", "sqlite_")))


class SQLiteBackend(Backend):
    """An SQLite file: one writer connection per queue, a few readers."""

    name = "sqlite"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wal_checked = 0.0
        self._wal_warned = 0
        self._synced = True  # the writer connection starts at the configured synchronous
        #: Whether the writer's driver connection :attr:`_waits_on` waits ``busy_timeout`` for
        #: the write lock (see :meth:`_wait`); a new one does (the connect hook).
        self._waits = True
        self._waits_on: object = None
        #: Where :meth:`checkpoint_due` reads the WAL's length.
        self._wal_index = WalIndex(self.path)

    def _inline(self) -> bool:
        # Never at "full": every commit there syncs the WAL, which the loop must not wait for.
        return self.options.durability == "normal"

    def inline_writes(self) -> InlineWrites | None:
        """At durability "normal", the writer may run a small batch on the event loop's thread
        (the hand-over to its thread and back costs more than the batch itself).

        A commit there never syncs: "normal" syncs only at checkpoints, and the writer
        connection's automatic checkpoint is off (the connection hook), the thread
        checkpointing instead when :meth:`checkpoint_due` (in :meth:`after_batch`). The file's
        lock is taken without waiting, and SQLite's write lock too (``busy_timeout`` 0): the
        batch goes to the thread when either is held.
        """
        if not self._inline():
            return None
        return InlineWrites(
            lock=self.writer_lock(),
            wait=self._wait,
            checkpoint_due=self.checkpoint_due,
            close=self._wal_index.close,
        )

    def _wait(self, conn: Connection, wait: bool) -> None:
        """Make the writer connection wait ``busy_timeout`` for the write lock, or not at all.

        Remembered per driver connection: one SQLAlchemy made again (after invalidating the
        last) starts with the connect hook's ``busy_timeout``.
        """
        driver = conn.connection.dbapi_connection
        if driver is not self._waits_on:
            self._waits_on, self._waits = driver, True
        if wait == self._waits:
            return
        busy_ms = int(self.options.busy_timeout * 1000) if wait else 0
        assert driver is not None
        cursor = driver.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        finally:
            cursor.close()
        self._waits = wait

    def checkpoint_due(self) -> bool:
        """Whether the WAL has passed :data:`AUTOCHECKPOINT_PAGES` (or cannot be read)."""
        frames = self._wal_index.frames()
        return frames is None or frames >= AUTOCHECKPOINT_PAGES

    def before_batch(self, conn: Connection, kinds: Sequence[str]) -> None:
        """On the writer thread before a batch: at durability "full", skip the fsync of a batch
        that only claims or extends leases.

        Such a batch records nothing a caller was promised: if power fails before the next
        synced commit, the claim is undone and the job is delivered again (at-least-once). WAL
        frames are synced in order, so the next put or ack (synced) makes them durable too.
        It saves one fsync per claim: the latency from put to handler start, and half the
        fsyncs of a pool's claim-ack cycle.
        """
        if self.options.durability != "full":
            return
        durable = any(kind not in ("claim", "extend") for kind in kinds)
        if durable == self._synced:
            return
        cursor = conn.connection.cursor()  # outside the batch's transaction
        try:
            cursor.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        finally:
            cursor.close()
        self._synced = durable

    def writer_lock(self) -> WalLock:
        """The lock every writer of this file, in every process, holds around its work.

        Every queue has a writer connection of its own; two queues, or two processes, on one
        file are two writers. SQLite's write lock already makes their transactions take turns,
        but a commit's checkpoint runs after that lock is released: holding this lock from
        ``BEGIN`` until the checkpoint is done keeps one writer's checkpoint from starting
        while another resets the WAL (the WAL-reset bug, in the module docstring). It costs
        little throughput: the transactions could not overlap anyway.
        """
        return wal_lock_for(self.path)

    async def dispose_engine(self, engine: AsyncEngine) -> None:
        """Close the readers under the file's lock: the last connection to a WAL database to
        close checkpoints it."""
        lock = self.writer_lock()
        await anyio.to_thread.run_sync(lock.acquire)
        try:
            await engine.dispose()
        finally:
            lock.release()

    def after_batch(self, conn: Connection) -> None:
        """On the writer thread after a batch: checkpoint where the writer's commits do not
        (:meth:`inline_writes`); notice a WAL that checkpoints cannot shrink.

        The checkpoint runs here, under the file's lock like the batch, as the commit's own
        would have: ``PASSIVE``, once the WAL passed :data:`AUTOCHECKPOINT_PAGES`.

        The commits' own checkpoints copy the WAL back and the writer then reuses it from the
        start (``journal_size_limit`` truncates it), so it stays small, unless a reader holds a
        snapshot open (a long read transaction): no checkpoint can pass it, and the WAL grows
        with every commit. Every :data:`WAL_CHECK_INTERVAL` seconds the file's size is looked
        at; past :data:`WAL_WARN_BYTES`, a checkpoint tells whether it is pinned. Say so,
        loudly, once per doubling.
        """
        if self._inline() and self.checkpoint_due():
            cursor = conn.connection.cursor()  # outside any transaction, which it needs
            try:
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                cursor.close()
        now = time.monotonic()
        if now - self._wal_checked < WAL_CHECK_INTERVAL:
            return
        self._wal_checked = now
        try:
            size = os.path.getsize(f"{self.path}-wal")
        except OSError:
            return
        if size < WAL_WARN_BYTES or size < 2 * self._wal_warned:
            return
        # On the DBAPI cursor: outside any transaction, which a checkpoint needs.
        cursor = conn.connection.cursor()
        try:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            row: Any = cursor.fetchone()
            _busy, frames, done = row
        finally:
            cursor.close()
        if frames > 0 and done < frames:
            self._wal_warned = size
            logger.warning(
                "the WAL of %s is %.0f MiB and checkpoints cannot keep up (%d of %d frames): "
                "another connection is holding a read transaction open",
                self.path,
                size / 2**20,
                done,
                frames,
                extra={"action": "wal_growing", "wal_bytes": size},
            )

    @property
    def path(self) -> Path:
        """The database file."""
        return Path(self.url.database or "")

    def _install_hooks(self, engine: Engine, *, begin: str, on_cursor: bool = False) -> None:
        busy_ms = int(self.options.busy_timeout * 1000)
        # The writer (on_cursor) checkpoints by itself when it may run inline (inline_writes).
        autocheckpoint = 0 if on_cursor and self._inline() else AUTOCHECKPOINT_PAGES
        synchronous = "FULL" if self.options.durability == "full" else "NORMAL"

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # The driver's own transaction handling issues a deferred BEGIN lazily, which then
            # fails to upgrade to a write lock under contention; take control of BEGIN instead.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                # WAL is written into the file's header: only in a file that is already ours,
                # so that a foreign database is refused untouched (see finish_schema).
                cursor.execute("PRAGMA application_id")
                if cursor.fetchone()[0] == APPLICATION_ID:
                    cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute(f"PRAGMA synchronous = {synchronous}")
                cursor.execute("PRAGMA foreign_keys = ON")
                cursor.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
                cursor.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
            finally:
                cursor.close()

        if not on_cursor:

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                conn.exec_driver_sql(begin)

            return

        # The writer begins a transaction per batch: on the DBAPI cursor, as the dialect's own
        # BEGIN, it costs a few microseconds where a statement through SQLAlchemy's execution
        # (the "begin" event above) costs tens; and an error of it is wrapped like any other.
        # (The readers keep the event: their driver is aiosqlite's adapter, and they are few.)
        def do_begin(dbapi_conn: Any) -> None:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(begin)
            finally:
                cursor.close()

        engine.dialect.do_begin = do_begin  # type: ignore[method-assign,assignment]

    def create_engine(self) -> AsyncEngine:
        """Readers, through aiosqlite; they never take the write lock.

        A fixed pool, no overflow: a connection is then closed only when the engine is disposed
        (:meth:`dispose_engine`, under the file's lock), never on its return to the pool.
        """
        engine = create_async_engine(
            self.url,
            pool_size=6,
            max_overflow=0,
            connect_args={"timeout": self.options.busy_timeout, "check_same_thread": False},
        )
        self._install_hooks(engine.sync_engine, begin="BEGIN")
        return engine

    def create_write_engine(self) -> Engine:
        """The writer thread's engine: BEGIN IMMEDIATE, so the write lock is taken up front
        (a deferred transaction that later tries to write can fail with SQLITE_BUSY at once).

        Its connection is the first to open the file. Without ``create``, it opens it with
        ``mode=rw``, so SQLite itself refuses a file that is not there (a check of the path
        beforehand could be overtaken by a delete)."""
        timeout = self.options.busy_timeout
        if self.create:
            engine = create_engine(
                self.url.set(drivername="sqlite+pysqlite"),
                poolclass=NullPool,
                connect_args={"timeout": timeout, "check_same_thread": False},
            )
        else:
            uri = f"file:{quote(str(self.path))}?mode=rw"

            def connect() -> sqlite3.Connection:
                try:
                    return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
                except sqlite3.OperationalError as exc:
                    if not self.path.exists():
                        raise DatabaseNotFound(f"no database at {self.path}") from exc
                    raise

            engine = create_engine("sqlite+pysqlite://", poolclass=NullPool, creator=connect)
        self._install_hooks(engine, begin="BEGIN IMMEDIATE", on_cursor=True)
        return engine

    async def prepare(self) -> None:
        """Refuse what SQLite would misreport: no directory, a non-SQLite file, no permission."""
        path = self.path
        if self.url.database in (None, "", ":memory:") or self.url.query.get("mode") == "memory":
            raise SchemaError(
                "an in-memory SQLite database cannot hold a persistent queue; give a file path"
            )
        parent = path.parent
        if not parent.is_dir():
            if not self.create:
                raise DatabaseNotFound(f"no database at {path}")
            raise DatabaseError(f"cannot open {path}: directory {parent} does not exist")
        if path.exists():
            if path.is_dir():
                raise DatabaseError(f"cannot open {path}: it is a directory")
            try:
                with path.open("rb") as fh:
                    header = fh.read(len(_SQLITE_HEADER))
            except OSError as exc:
                raise DatabaseError(f"cannot read {path}: {exc.strerror}") from exc
            if header and header != _SQLITE_HEADER:
                raise SchemaError(
                    f"{path} is not an SQLite database; refusing to use it as a queue"
                )
            if not os.access(path, os.W_OK):
                raise DatabaseError(f"cannot open {path}: the file is read-only")
            if path.stat().st_size > 0:
                await anyio.to_thread.run_sync(self._probe_existing, path)
        elif not self.create:
            raise DatabaseNotFound(f"no database at {path}")
        elif not os.access(parent, os.W_OK):
            raise DatabaseError(f"cannot create {path}: directory {parent} is read-only")

    def _probe_existing(self, path: Path) -> None:
        """Refuse a file that is not ours, or a -wal that does not belong with it, before any
        read-write connection opens: such a connection would replay the -wal into the file and,
        on close, checkpoint it, changing a file we meant to leave alone."""
        with path.open("rb") as fh:
            header = fh.read(100)
        app_id = int.from_bytes(header[68:72], "big") if len(header) >= 72 else 0
        if app_id not in (0, APPLICATION_ID):
            raise SchemaError(
                f"{path} belongs to another application (application_id {app_id:#x}); "
                "refusing to use it as a queue"
            )
        wal = Path(f"{path}-wal")
        # With a -wal in use (another process, or a crash), the main file alone may be mid-
        # checkpoint: read both, read-only (a read-only connection never checkpoints). Without
        # one, immutable=1 reads the main file without creating -wal or -shm files.
        hot = wal.exists() and wal.stat().st_size > 0
        # Without the file's lock: a read-only connection can neither reset the WAL nor
        # checkpoint it (docs/architecture.md, "the WAL lock"), and a foreign file must be left
        # without a lock file.
        foreign = _foreign_tables(path, "mode=ro" if hot else "immutable=1")
        if foreign:
            raise SchemaError(
                f"{path} is an SQLite database of something else (tables: "
                f"{', '.join(foreign[:5])}); refusing to add a queue to it"
            )

    def finish_schema(self, conn: Connection) -> None:
        """Switch a file that is now ours to WAL (persistent; a no-op when it already is)."""
        # On the DBAPI connection: SQLAlchemy would BEGIN first, and WAL cannot be entered
        # inside a transaction.
        cursor = conn.connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    def change_token_sees_every_commit(self) -> bool:
        """``PRAGMA data_version`` moves on every other connection's commit."""
        return True

    def lock_claim(self, select: Select[Any]) -> Select[Any]:
        """SQLite has one writer at a time; there is nothing to skip."""
        return select

    def same_database(self, other: URL) -> bool:
        """The same file, by real path."""
        return other.get_backend_name() == "sqlite" and os.path.realpath(
            other.database or ""
        ) == os.path.realpath(self.url.database or "")

    def check_owner(self, conn: Connection, tables: set[str]) -> None:
        """Refuse a file stamped by another application, or one holding others' tables."""
        app_id = conn.exec_driver_sql("PRAGMA application_id").scalar_one()
        if app_id not in (0, APPLICATION_ID):
            raise SchemaError(
                f"{self.describe()} belongs to another application "
                f"(application_id {app_id:#x}); refusing to use it as a queue"
            )
        if "persistq_meta" in tables:
            return
        foreign = sorted(t for t in tables if not t.startswith(("persistq_", "sqlite_")))
        if foreign:
            raise SchemaError(
                f"{self.describe()} is an SQLite database of something else (tables: "
                f"{', '.join(foreign[:5])}); refusing to add a queue to it"
            )

    def stamp_owner(self, conn: Connection) -> None:
        """``PRAGMA application_id``, so that the file is recognised as a queue's."""
        conn.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")

    def insert_jobs(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Multi-row ``INSERT`` statements of up to :data:`GROUPED_PUT_ROWS` rows, on the DBAPI
        cursor (SQLAlchemy's execution cost more than SQLite's insert). Under the write lock
        AUTOINCREMENT hands out consecutive ids in row order, so each statement's last rowid
        gives every id of its rows."""
        columns = tuple(rows[0])
        ids: list[int] = []
        for first in range(0, len(rows), GROUPED_PUT_ROWS):
            chunk = rows[first : first + GROUPED_PUT_ROWS]
            params = tuple(chain.from_iterable(map(itemgetter(*columns), chunk)))
            last = insert_text(conn, _multi_insert_sql(columns, len(chunk)), params)
            if last is None:  # pragma: no cover - sqlite3 always reports the last rowid
                raise DatabaseError(f"writing failed on {self.describe()}: no id for an insert")
            ids.extend(range(last - len(chunk) + 1, last + 1))
        return ids

    def insert_deduplicated(self, conn: Connection, row: Mapping[str, Any]) -> int | None:
        """``INSERT ... ON CONFLICT DO NOTHING`` on the partial dedupe index."""
        stmt = (
            sqlite_insert(jobs)
            .values(**row)
            .on_conflict_do_nothing(
                index_elements=[jobs.c.queue, jobs.c.dedupe_key], index_where=DEDUPE
            )
            .returning(jobs.c.id)
        )
        job_id = conn.execute(stmt).scalar_one_or_none()
        return None if job_id is None else int(job_id)

    def wal_bytes(self) -> int | None:
        """The size of the database's ``-wal`` file (0 when there is none)."""
        try:
            return os.path.getsize(f"{self.path}-wal")
        except FileNotFoundError:
            return 0

    def wal_warn_bytes(self) -> int:
        """:data:`WAL_WARN_BYTES`, the size past which the writer reports ``wal_growing``."""
        return WAL_WARN_BYTES

    def insert_settings_row(self, conn: Connection, queue: str, now: float) -> None:
        """``INSERT ... ON CONFLICT DO NOTHING`` on the queue name."""
        conn.execute(
            sqlite_insert(queue_settings)
            .values(queue=queue, paused=0, updated_at=now)
            .on_conflict_do_nothing(index_elements=[queue_settings.c.queue])
        )

    def grouped_put_rows(self) -> int:
        """The single puts of a batch go in as one multi-row ``INSERT``."""
        return GROUPED_PUT_ROWS

    def needs_watch_connection(self) -> bool:
        """``PRAGMA data_version`` is relative to one connection."""
        return True

    async def change_token(self, conn: AsyncConnection | None) -> int:
        """``PRAGMA data_version`` changes when any other connection commits."""
        assert conn is not None
        result = await conn.exec_driver_sql("PRAGMA data_version")
        value = result.scalar_one()
        await conn.commit()
        return int(value)

    def is_transient(self, exc: BaseException) -> bool:
        """SQLITE_BUSY and SQLITE_LOCKED: another process held the lock past
        ``busy_timeout`` (the writer has already waited, and tried again, by then)."""
        return any(
            self.is_busy(item)
            for item in error_chain(exc)
            if isinstance(item, (DBAPIError, sqlite3.Error))
        )

    def never_committed(self, exc: BaseException) -> bool:
        """A busy or locked write never committed: ``BEGIN IMMEDIATE`` takes the write lock
        before any statement, and a WAL commit made under it cannot be refused as busy."""
        return self.is_transient(exc)

    def is_busy(self, exc: BaseException) -> bool:
        """SQLITE_BUSY and SQLITE_LOCKED, which a later retry can get past."""
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        if not isinstance(orig, sqlite3.OperationalError):
            message = str(orig).lower()
            return "database is locked" in message or "database table is locked" in message
        code = getattr(orig, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        return "locked" in str(orig).lower()
