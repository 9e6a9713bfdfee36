"""Copy the WAL back into an SQLite database from a thread of its own, beside the writer.

SQLite's automatic checkpoint runs inside the ``COMMIT`` that pushes the WAL past 1000 pages: that
commit then copies every page the WAL holds into the database file and fsyncs it, with the write
lock held. Every write waiting behind it (a put, the claim that would start a job) waits too:
tens to hundreds of milliseconds on a busy disk, a few times a second under load.

A PASSIVE checkpoint from another connection needs no write lock and runs while the writer
commits. Run one shortly after commits, and by the time the writer's own automatic checkpoint
comes due there is little or nothing left for it to copy (SQLite skips the copy and the fsync of
frames already copied). The writer's automatic checkpoint stays on as the backstop: it is the one
that finishes the job at a quiet instant, so the WAL is reset and stays about 1000 pages long, and
it keeps working if this thread ever stops.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["CHECKPOINT_DELAY", "STOP_TIMEOUT", "Checkpointer"]

logger = logging.getLogger(__name__)

#: Seconds from a commit to the checkpoint it asks for; commits meanwhile share that checkpoint.
CHECKPOINT_DELAY = 0.1

#: Seconds :meth:`Checkpointer.stop` waits for the thread (a checkpoint of a long WAL included).
STOP_TIMEOUT = 30.0


class Checkpointer:
    """A thread that runs ``PRAGMA wal_checkpoint(PASSIVE)`` after commits.

    :param path: the database file (ours, in WAL mode, already opened by the writer).
    :param synchronous: the connection's ``synchronous`` level; a checkpoint syncs the WAL and the
        database at both FULL and NORMAL, which is what makes NORMAL's commits durable.
    :param on_result: called on this thread with ``(busy, wal_frames, checkpointed_frames)`` after
        every checkpoint.
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        on_result: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self._path = path
        self._synchronous = synchronous
        self._on_result = on_result
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the connection and start the thread; an error here only means no checkpointer."""
        try:
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=1.0
            )
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error as exc:
            logger.debug("no background checkpointer for %s: %s", self._path, exc)
            return
        self._thread = threading.Thread(
            target=self._main, args=(conn,), name="persistq-checkpointer", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def request(self) -> None:
        """Ask for a checkpoint soon (after a commit); cheap, from any thread."""
        self._wanted.set()

    def stop(self) -> None:
        """Stop the thread and close its connection; blocks until it has (run it off the loop).

        A checkpoint under way is let finish, for up to :data:`STOP_TIMEOUT` seconds; past that
        the (daemon) thread is left to end on its own, so that closing a queue never hangs on it.
        """
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._wanted.set()
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            logger.warning(
                "the checkpointer of %s did not stop within %.0f s; leaving it to finish",
                self._path,
                STOP_TIMEOUT,
            )

    def _main(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                self._wanted.wait()
                # Let the commits of the next moment join this checkpoint; a stop cuts it short.
                if self._stopping.wait(CHECKPOINT_DELAY):
                    return
                self._wanted.clear()
                # stop() may have set both events since the wait ended; the clear just undid
                # its wake-up, so look at the stop itself before waiting again.
                if self._stopping.is_set():
                    return
                self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            # Another connection checkpointing (SQLITE_BUSY), a full disk, a read-only file:
            # the writer's own checkpoints and errors are what report such states.
            logger.debug("background checkpoint of %s failed: %s", self._path, exc)
            return
        if self._on_result is not None and row is not None:
            busy, frames, done = (int(v) for v in row)
            try:
                self._on_result(busy, frames, done)
            except Exception:  # reporting must never stop the checkpoints
                logger.exception("checkpoint report failed")
