"""put(connection=...): the job is written in the caller's transaction, visible iff it commits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import persistq_async as pq


def sqlalchemy_url(backend_url: str) -> str:
    return backend_url if "://" in backend_url else f"sqlite+aiosqlite:///{backend_url}"


@pytest.fixture
async def app_engine(queue: pq.Queue, backend_url: str) -> AsyncIterator[AsyncEngine]:
    """The application's own engine on the queue's database, with a table of its own."""
    engine = create_async_engine(sqlalchemy_url(backend_url))
    table = f'"orders_{queue.name}"'
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, item TEXT)"))
    try:
        yield engine
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {table}"))
        await engine.dispose()


def orders(queue: pq.Queue) -> str:
    return f'"orders_{queue.name}"'


async def test_job_exists_once_the_transaction_commits(
    queue: pq.Queue, app_engine: AsyncEngine
) -> None:
    async with app_engine.connect() as conn:
        await conn.execute(text(f"INSERT INTO {orders(queue)} (id, item) VALUES (1, 'book')"))
        job_id = await queue.put({"order": 1}, connection=conn)
        assert isinstance(job_id, int)
        # Not committed yet. (Only reads here: on SQLite the open transaction holds the one
        # write lock, so a claim would wait for it.)
        assert await queue.job(job_id) is None
        assert (await queue.stats()).total == 0
        await conn.commit()
    info = await queue.job(job_id)
    assert info is not None
    assert info.payload == {"order": 1}
    assert info.state is pq.JobState.QUEUED
    with anyio.fail_after(3):
        job = await queue.get(timeout=3)
    assert job.id == job_id
    await job.ack()


async def test_rollback_leaves_no_job(queue: pq.Queue, app_engine: AsyncEngine) -> None:
    async with app_engine.connect() as conn:
        await conn.execute(text(f"INSERT INTO {orders(queue)} (id, item) VALUES (1, 'book')"))
        job_id = await queue.put({"order": 1}, connection=conn)
        await conn.rollback()
    assert await queue.job(job_id) is None
    assert (await queue.stats()).total == 0
    async with app_engine.connect() as conn:
        count = (await conn.execute(text(f"SELECT count(*) FROM {orders(queue)}"))).scalar_one()
    assert count == 0


async def test_an_exception_in_engine_begin_rolls_the_job_back(
    queue: pq.Queue, app_engine: AsyncEngine
) -> None:
    with pytest.raises(RuntimeError):  # noqa: PT012 - the raise must happen inside begin()
        async with app_engine.begin() as conn:
            await queue.put_many(["a", "b"], connection=conn)
            raise RuntimeError("application failed")
    assert (await queue.stats()).total == 0


async def test_put_many_through_a_connection(queue: pq.Queue, app_engine: AsyncEngine) -> None:
    async with app_engine.begin() as conn:
        ids = await queue.put_many([1, 2, 3], connection=conn, priority=2)
    assert [j.id for j in await queue.list_jobs()] == ids
    assert all(j.priority == 2 for j in await queue.list_jobs())


async def test_put_through_a_session(queue: pq.Queue, app_engine: AsyncEngine) -> None:
    async with AsyncSession(app_engine) as session:
        async with session.begin():
            await session.execute(
                text(f"INSERT INTO {orders(queue)} (id, item) VALUES (7, 'lamp')")
            )
            job_id = await queue.put({"order": 7}, connection=session)
            assert await queue.job(job_id) is None
        info = await queue.job(job_id)
        assert info is not None
        assert info.payload == {"order": 7}


async def test_session_rollback_leaves_no_job(queue: pq.Queue, app_engine: AsyncEngine) -> None:
    async with AsyncSession(app_engine) as session:
        job_id = await queue.put("x", connection=session)
        await session.rollback()
    assert await queue.job(job_id) is None
    assert (await queue.stats()).total == 0


async def test_dedupe_key_through_a_connection(queue: pq.Queue, app_engine: AsyncEngine) -> None:
    existing = await queue.put("first", dedupe_key="k")
    async with app_engine.begin() as conn:
        assert await queue.put("second", dedupe_key="k", connection=conn) == existing
    assert (await queue.stats()).total == 1


async def test_a_bad_payload_through_a_connection_writes_nothing(
    queue: pq.Queue, app_engine: AsyncEngine
) -> None:
    async with app_engine.begin() as conn:
        with pytest.raises(pq.SerializationError):
            await queue.put_many(["ok", {1, 2}], connection=conn)
    assert (await queue.stats()).total == 0


async def test_a_connection_to_another_database_is_refused(queue: pq.Queue, tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    try:
        async with engine.connect() as conn:
            with pytest.raises(pq.PersistQError) as info:
                await queue.put("x", connection=conn)
            assert isinstance(info.value, ValueError)
            assert "connection" in str(info.value)
    finally:
        await engine.dispose()
    assert (await queue.stats()).total == 0
