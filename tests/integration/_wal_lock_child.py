"""A writer process for tests/integration/test_wal_lock.py.

``python tests/integration/_wal_lock_child.py DB SECONDS OUT DURABILITY``: records, with
``time.monotonic()`` (one clock for every process on Linux), the interval during which each hold
of the file's lock was held (taken after it was acquired, given back before it is released),
while it puts, claims and acks jobs on the SQLite file ``DB`` for ``SECONDS``; then writes them
to ``OUT`` as JSON. At durability "normal" the lock is also taken without waiting, by batches run
on the event loop's thread (``try_acquire``): those holds are recorded too.
"""

from __future__ import annotations

import json
import os
import sys
import time

import anyio

import persistq_async as pq
from persistq_async.backends.wal_lock import WalLock

intervals: list[tuple[float, float]] = []
_acquire, _try_acquire, _release = WalLock.acquire, WalLock.try_acquire, WalLock.release
_taken: dict[int, float] = {}


def acquire(self: WalLock) -> None:
    _acquire(self)
    _taken[id(self)] = time.monotonic()


def try_acquire(self: WalLock) -> bool:
    if not _try_acquire(self):
        return False
    _taken[id(self)] = time.monotonic()
    return True


def release(self: WalLock) -> None:
    intervals.append((_taken.pop(id(self)), time.monotonic()))
    _release(self)


WalLock.acquire = acquire  # type: ignore[method-assign]
WalLock.try_acquire = try_acquire  # type: ignore[method-assign]
WalLock.release = release  # type: ignore[method-assign]


async def main(db: str, seconds: float, out: str, durability: str) -> None:
    filler = "x" * 1500  # about a page a job, so that commits pass the autocheckpoint mark
    done = 0
    name = f"w{os.getpid()}"
    async with pq.Queue(db, name=name, poll_interval=0.05, durability=durability) as q:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await q.put_many([{"f": filler} for _ in range(20)])
            await q.put({"f": filler})
            while (job := await q.get_nowait()) is not None:
                await job.ack({"ok": True})
                done += 1
        stats = await q.stats()
    with open(out, "w", encoding="utf-8") as fh:  # noqa: ASYNC230 - after the queue closed
        json.dump(
            {
                "pid": os.getpid(),
                "intervals": intervals,
                "done": done,
                "total": stats.total,
            },
            fh,
        )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4])
