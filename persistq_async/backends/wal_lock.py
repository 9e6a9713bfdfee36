"""The lock that keeps SQLite's WAL-reset bug away from every connection persistq opens.

SQLite 3.7.0 to 3.51.2 can corrupt a WAL database when a checkpoint runs on one connection while
another connection resets the WAL. Every operation of ours that can reset the WAL or checkpoint
it runs under one lock per database file, shared by every thread and every process: a
``threading.Lock`` for the writers of this process, and ``flock`` on a lock file beside the
database (``jobs.db-persistq-lock``) for those of other processes. The argument that no two such
operations then overlap is in docs/architecture.md, "the WAL lock".

``flock`` locks belong to an open file description: two opens of the lock file exclude each
other, even in one process, and the kernel drops the lock when its holder dies (``kill -9``
included), so a crashed writer never leaves it held. A child made by ``fork`` inherits the
parent's descriptor, and with it the parent's lock: the registry is emptied in the child, which
opens the file again. Where ``fcntl`` does not exist (Windows) only the in-process part remains.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_SUFFIX", "WalLock", "wal_lock_for"]

#: What is appended to the database's path to name its lock file.
LOCK_SUFFIX = "-persistq-lock"


class WalLock:
    """One SQLite file's lock: held by a writer from ``BEGIN IMMEDIATE`` to the end of its
    commit's checkpoint, and around opening and closing the library's connections.

    Not re-entrant. :meth:`acquire` and :meth:`release` may run on different threads (the event
    loop's close takes it in a worker thread and gives it back on the loop).
    """

    def __init__(self, database: Path) -> None:
        #: The lock file, beside the database. It is left in place: deleting it while other
        #: processes hold it open would let a new one be locked beside theirs.
        self.path = Path(f"{database}{LOCK_SUFFIX}")
        self._threads = threading.Lock()
        self._fd: int | None = None

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return self._fd

    def acquire(self) -> None:
        """Wait until no other thread or process of ours holds it, then hold it.

        :raises OSError: the lock file cannot be created or locked.
        """
        self._threads.acquire()
        try:
            if fcntl is not None:
                fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def try_acquire(self) -> bool:
        """Hold it if nobody else does, without waiting (the event loop's thread may not wait).

        :returns: whether it is now held.
        :raises OSError: the lock file cannot be created or locked.
        """
        if not self._threads.acquire(blocking=False):
            return False
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(self._descriptor(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another process holds it
                    self._threads.release()
                    return False
        except BaseException:
            self._threads.release()
            raise
        return True

    def release(self) -> None:
        """Let the next holder in."""
        try:
            if fcntl is not None and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def locked(self) -> bool:
        """Whether a thread of this process holds it (or is taking it)."""
        return self._threads.locked()

    def __enter__(self) -> WalLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


#: One lock per database file (by real path) in this process; never removed (one descriptor
#: per file the process ever opened a queue on).
_locks: dict[str, WalLock] = {}
_guard = threading.Lock()


def wal_lock_for(database: Path) -> WalLock:
    """The lock of the SQLite file ``database`` (the same object for every queue on it)."""
    key = os.path.realpath(database)
    with _guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = WalLock(Path(key))
        return lock


def _forget_in_child() -> None:
    # The child shares the parent's open file descriptions (and so its flocks), and a lock
    # another thread held at the fork stays held forever: start afresh.
    global _guard
    _guard = threading.Lock()
    _locks.clear()


os.register_at_fork(after_in_child=_forget_in_child)
