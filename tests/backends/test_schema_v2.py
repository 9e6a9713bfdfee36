"""Schema 2 (tags, headers, attempts' ready time, the worker registry) on a database that the
previous release wrote.

The database comes from the ``v1_url`` fixture of tests/conftest.py.
"""

from __future__ import annotations

import time

import anyio
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

import persistq_async as pq
from persistq_async import schema


async def _columns(url: str, table: str) -> set[str]:
    async_url = url if "://" in url else f"sqlite+aiosqlite:///{url}"
    engine = create_async_engine(async_url)
    try:
        async with engine.connect() as conn:
            return set(
                await conn.run_sync(
                    lambda c: {col["name"] for col in inspect(c).get_columns(table)}
                )
            )
    finally:
        await engine.dispose()


async def test_a_schema_1_database_is_migrated_and_keeps_its_jobs(v1_url: str) -> None:
    assert "tags" not in await _columns(v1_url, "persistq_jobs")
    # The queue's clock stands a few seconds after the fixture was written, whenever the test
    # runs: its delayed job stays an hour ahead, and its deliveries stay recent.
    now = [time.time()]
    async with pq.Queue(v1_url, name="legacy", poll_interval=0.05, clock=lambda: now[0]) as q:
        now[0] = max(i.created_at.timestamp() for i in await q.list_jobs(limit=10)) + 5
        health = await q.health(require_workers=False)
        assert health.schema_version == schema.SCHEMA_VERSION >= 2
        assert health.status == "ok", health
        stats = await q.stats(window=60)
        assert (stats.queued, stats.done, stats.dead) == (3, 1, 1)
        assert (stats.ready, stats.scheduled) == (2, 1)
        infos = await q.list_jobs(limit=10)
        assert [i.payload["n"] for i in infos] == [1, 2, 3, 4, 5]
        assert all(i.tags == () and dict(i.headers) == {} for i in infos)
        dead = next(i for i in infos if i.state is pq.JobState.DEAD)
        assert [a.outcome for a in dead.history] == ["nacked", "failed"]
        # old attempts have no ready time: they count in the window, not in the wait times
        assert dict(stats.finished) == {"acked": 1, "nacked": 1, "failed": 1}
        assert stats.run_time_p50 is not None
        assert stats.wait_time_p50 is None
        # the new columns work on old and new jobs alike
        new_id = await q.put({"n": 6}, tags=["fresh"], headers={"k": "v"})
        assert [i.id for i in await q.list_jobs(tags=["fresh"])] == [new_id]
        assert await q.workers() == []
        done: list[int] = []
        all_done = anyio.Event()

        async def handler(job: pq.Job) -> None:
            done.append(job.payload["n"])
            if sorted(done) == [4, 5, 6]:  # the delayed job stays scheduled
                all_done.set()

        async with pq.Supervisor(grace=1) as sup:
            await sup.add(q, handler, concurrency=2)
            assert [w.id for w in await q.workers()] == [sup.id]
            with anyio.fail_after(20):
                await all_done.wait()
        after = await q.stats()
        assert after.wait_time_p50 is not None  # deliveries since the migration have one
    assert {"tags", "headers"} <= await _columns(v1_url, "persistq_jobs")
    assert "ready_at" in await _columns(v1_url, "persistq_attempts")
    # and a second open finds it current
    async with pq.Queue(v1_url, name="legacy") as q:
        assert (await q.stats()).done == 4
