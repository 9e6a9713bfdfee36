"""Schema 2 (tags, headers, attempts' ready time, the worker registry) on a database that the
previous release wrote.

``tests/fixtures/schema_v1.db`` and ``schema_v1_postgresql.sql`` (``pg_dump --inserts``) were
written by the code of main before schema 2, with five jobs in queue ``legacy``: one done, one
dead (nacked, then failed), two queued and one delayed by an hour.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

import persistq_async as pq
from persistq_async import schema
from tests.conftest import private_pg_database

FIXTURES = Path(__file__).parent.parent / "fixtures"


async def _load_pg_dump(url: str, sql: str) -> None:
    import asyncpg

    target = make_url(url).set(drivername="postgresql")
    conn = await asyncpg.connect(target.render_as_string(hide_password=False))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def v1_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at schema 1, as the previous release left it."""
    if request.param == "sqlite":
        path = tmp_path / "legacy.db"
        shutil.copy(FIXTURES / "schema_v1.db", path)
        yield str(path)
        return
    with private_pg_database("persistq_v1") as url:
        anyio.run(_load_pg_dump, url, (FIXTURES / "schema_v1_postgresql.sql").read_text())
        yield url


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
