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
    # About 6 MiB go through the WAL; the commits' own checkpoints (every AUTOCHECKPOINT_PAGES
    # pages) copy it back as they go, so the WAL is reused from its start and stays small.
    async with pq.Queue(db_path, name="wal") as q:
        for _ in range(60):
            await q.put_many([{"pad": "x" * 1000, "n": n} for n in range(100)])
    page = 4096 + 24  # a WAL frame: one page and its header
    wal = Path(f"{db_path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # the last close checkpoints
    # Reopen without closing in between, to see the WAL while the queue is open.
    async with pq.Queue(db_path, name="wal") as q:
        for _ in range(60):
            await q.put_many([{"pad": "x" * 1000, "n": n} for n in range(100)])
        size = wal.stat().st_size
    assert size < 3 * sqlite_backend.AUTOCHECKPOINT_PAGES * page, size


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
