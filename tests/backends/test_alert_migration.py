"""Schema version 3 (alerting) from older databases: jobs kept, the new tables usable.

From version 2: a fresh database loses what version 3 adds (three tables) and is stamped 2.
From version 1: on PostgreSQL, the dump that the previous main wrote (tests/fixtures, loaded as
test_schema_v2 does), migrated through versions 2 and 3.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

import persistq_async as pq
from persistq_async import schema
from persistq_async.alerts import AlertEvaluator, Alerting
from persistq_async.backends import normalize_url
from tests.conftest import private_pg_database

V3_TABLES = ("persistq_alert_lease", "persistq_alert_state", "persistq_pool_restarts")


async def downgrade_to_version_2(url: str) -> None:
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            for table in V3_TABLES:
                await conn.execute(text(f"DROP TABLE {table}"))
            await conn.execute(
                text("UPDATE persistq_meta SET value = '2' WHERE key = 'schema_version'")
            )
    finally:
        await engine.dispose()


async def table_names(url: str) -> set[str]:
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def migrate_and_check(url: str) -> None:
    async with pq.Queue(url, name="emails") as q:
        done = await q.put({"n": 1})
        job = await q.get_nowait()
        assert job is not None
        await job.ack("sent")
        waiting = await q.put({"n": 2})
    await downgrade_to_version_2(url)
    assert not set(V3_TABLES) & await table_names(url)

    async with pq.Queue(url, name="emails") as q:
        info = await q.job(done)
        assert info is not None
        assert (info.state, info.result) == (pq.JobState.DONE, "sent")
        assert (await q.job(waiting)) is not None
    await check_alerting_works(url, "emails")


async def check_alerting_works(url: str, queue: str) -> None:
    async with pq.Queue(url, name=queue) as q:
        assert set(V3_TABLES) <= await table_names(url)
        seen: list[pq.Alert] = []

        async def sink(alert: pq.Alert) -> None:
            seen.append(alert)

        rule = pq.QueueLagRule(name="lag", queue=queue, above=0)
        evaluator = AlertEvaluator(Alerting(rules=(rule,), sinks=(sink,)), lambda: [q])
        await evaluator.tick()
        assert [(a.rule, a.status) for a in seen] == [("lag", "firing")]
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.connect() as conn:
            version = (
                await conn.execute(
                    text("SELECT value FROM persistq_meta WHERE key = 'schema_version'")
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert version == str(schema.SCHEMA_VERSION)


async def test_sqlite_database_of_version_2_is_migrated(tmp_path: Path) -> None:
    await migrate_and_check(str(tmp_path / "v2.db"))


@pytest.mark.postgres
def test_postgres_database_of_version_2_is_migrated() -> None:
    with private_pg_database("persistq_migrate") as url:
        asyncio.run(migrate_and_check(url))


@pytest.mark.postgres
def test_postgres_database_written_by_the_previous_main_is_migrated() -> None:
    dump = (Path(__file__).parent.parent / "fixtures" / "schema_v1_postgresql.sql").read_text()
    with private_pg_database("persistq_migrate_v1") as url:
        asyncio.run(load_dump(url, dump))
        asyncio.run(check_alerting_works(url, "legacy"))  # its queued jobs have waited: lag


async def load_dump(url: str, sql: str) -> None:
    import asyncpg

    target = make_url(url).set(drivername="postgresql")
    conn = await asyncpg.connect(target.render_as_string(hide_password=False))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
