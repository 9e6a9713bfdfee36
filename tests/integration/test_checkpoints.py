"""The writer batches and checkpoints on its one connection."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import persistq_async as pq
from persistq_async.backends import sqlite as sqlite_backend


async def test_a_claim_finds_the_jobs_put_in_its_own_batch(db_path: Path) -> None:
    # The claim is submitted first, the put second, both before the writer's next batch:
    # claims run last in a batch, so the claim sees the job.
    async with pq.Queue(db_path, name="order") as q:
        got: list[pq.Job | None] = []

        async def claim() -> None:
            got.append(await q.get_nowait())

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim)
            tg.start_soon(q.put, {"n": 1})
        assert got[0] is not None
        assert got[0].payload == {"n": 1}
        await got[0].ack()


async def test_the_writers_commits_keep_the_wal_small(db_path: Path) -> None:
    # Five times as many pages as the checkpoint mark go through the WAL (a round of 100 jobs of
    # 1 KB fills about 25 pages); the writer's checkpoints (every AUTOCHECKPOINT_PAGES pages)
    # copy it back as they go, so the WAL is reused from its start and stays small.
    page = 4096 + 24  # a WAL frame: one page and its header
    wal = Path(f"{db_path}-wal")
    async with pq.Queue(db_path, name="wal") as q:
        for _ in range(5 * sqlite_backend.AUTOCHECKPOINT_PAGES // 25):
            await q.put_many([{"pad": "x" * 1000, "n": n} for n in range(100)])
        size = wal.stat().st_size  # while the queue is open
    assert size < 3 * sqlite_backend.AUTOCHECKPOINT_PAGES * page, size
    assert not wal.exists() or wal.stat().st_size == 0  # the last close checkpoints


@pytest.mark.parametrize(
    ("version", "bug"),
    [
        ((3, 7, 0), True),
        ((3, 40, 1), True),
        ((3, 44, 5), True),
        ((3, 44, 6), False),
        ((3, 45, 0), True),
        ((3, 50, 6), True),
        ((3, 50, 7), False),
        ((3, 51, 2), True),
        ((3, 51, 3), False),
        ((3, 53, 0), False),
    ],
)
def test_the_versions_with_the_wal_reset_bug(version: tuple[int, int, int], bug: bool) -> None:
    assert sqlite_backend._has_wal_reset_bug(version) is bug


async def test_the_writers_of_one_file_take_turns(tmp_path: Path) -> None:
    # Two queues on one file (one by a symlink) have two writer connections; each holds the
    # file's lock from BEGIN to the end of its commit's checkpoint, so neither checkpoints
    # while the other resets the WAL.
    path = tmp_path / "jobs.db"
    link = tmp_path / "link.db"
    link.symlink_to(path)
    async with pq.Queue(path, name="a") as qa, pq.Queue(link, name="b") as qb:
        lock = qa.store.backend.writer_lock()
        assert lock is not None
        assert lock is qb.store.backend.writer_lock()
        await anyio.to_thread.run_sync(lock.acquire)
        done = anyio.Event()

        async def put() -> None:
            await qb.put({"n": 1})
            done.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(put)
                with anyio.move_on_after(0.3):
                    await done.wait()
                assert not done.is_set(), "a write went through while the file's lock was held"
                lock.release()
                with anyio.fail_after(10):
                    await done.wait()
        finally:
            if lock.locked() and not done.is_set():
                lock.release()
        assert (await qb.stats()).queued == 1
