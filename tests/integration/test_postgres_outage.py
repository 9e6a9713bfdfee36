"""PostgreSQL only: workers ride out lost connections (as in a server restart) and lose nothing."""

from __future__ import annotations

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import persistq_async as pq
from tests.conftest import pool_counted

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(90)]

JOBS = 300


async def test_pool_survives_every_connection_being_killed(pg_url: str, queue_name: str) -> None:
    done: set[int] = set()
    third_done = anyio.Event()

    async def handler(job: pq.Job) -> None:
        await anyio.sleep(0.005)
        done.add(int(job.payload["n"]))
        if len(done) >= JOBS // 3:
            third_done.set()

    admin = create_async_engine(pg_url)

    async def kill_all_connections() -> int:
        # What a server restart does to every client: all their connections drop at once.
        async with admin.connect() as conn:
            killed = await conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            count = int(killed.scalar_one())
            await conn.commit()
            return count

    try:
        async with pq.Queue(pg_url, name=queue_name, lease_seconds=2.0, poll_interval=0.05) as q:
            await q.put_many([{"n": n} for n in range(JOBS)])
            async with pq.Supervisor(grace=2.0, rescue_interval=0.5) as sup:
                pool = await sup.add(q, handler, concurrency=8, name="outage")
                kills = 0
                with anyio.fail_after(60):
                    await third_done.wait()
                    for _ in range(3):
                        kills += await kill_all_connections()
                        await anyio.sleep(0.2)
                    await q.join()
                assert kills >= 3
                await pool_counted(lambda: pool.processed >= JOBS)
                assert pool.processed >= JOBS
            stats = await q.stats()
            assert (stats.done, stats.queued, stats.running, stats.dead) == (JOBS, 0, 0, 0)
            assert done == set(range(JOBS))
    finally:
        await admin.dispose()
