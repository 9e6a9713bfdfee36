"""How long an SQLite database's WAL is, read from its WAL-index (the ``-shm`` file).

The writer connection's automatic checkpoint is off at durability "normal" (its commits may run
on the event loop's thread, which must not sync the database file); the writer's thread then
checkpoints once the WAL passed the mark, which it reads here: ``mxFrame``, the number SQLite's
own automatic checkpoint compares with ``wal_autocheckpoint``. The header's layout is SQLite's
documented file format (sqlite.org/walformat.html): version 3007000 at offset 0, ``mxFrame`` at
offset 16, in native byte order.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["WalIndex"]

#: The WAL-index header's version field.
_VERSION = 3007000


class WalIndex:
    """The WAL-index of the database at ``database``, opened read-only when first read."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self._fd: int | None = None

    def frames(self) -> int | None:
        """How many frames the WAL holds, or None when the WAL-index cannot be read.

        One ``pread``, no lock: a torn read only moves a checkpoint by a commit.
        """
        try:
            if self._fd is None:
                self._fd = self._open()
            header = os.pread(self._fd, 20, 0)
        except OSError:
            return None
        if len(header) < 20 or int.from_bytes(header[0:4], sys.byteorder) != _VERSION:
            return None
        return int.from_bytes(header[16:20], sys.byteorder)

    def _open(self) -> int:
        # SQLite's unix VFS names the -shm after the database's path with symbolic links
        # resolved; as given, should that one not be there.
        error: OSError | None = None
        for path in dict.fromkeys((os.path.realpath(self._database), str(self._database))):
            try:
                return os.open(f"{path}-shm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                error = exc
        assert error is not None
        raise error

    def close(self) -> None:
        """Close the file (it is opened again when next read)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
