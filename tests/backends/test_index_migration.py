"""Schema 6 (narrower job indexes) from a version 5 database: jobs kept, the indexes replaced.

A fresh database is put back into version 5's shape (the full ``(queue, state, id)`` index and
the leases index on the expiry alone, stamped 5) with jobs in every state; opened again, it is
migrated: the two indexes have their new definitions, every job is where it was, and the reads
and the job path work on it. The databases written by the first release (tests/fixtures) go
through this migration too, in test_schema_v2 and test_alert_migration.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import persistq_async as pq
from persistq_async import schema
from persistq_async.backends import normalize_url
from tests.conftest import private_pg_database

REPLACED = (
    "persistq_jobs_queue_state",
    "persistq_jobs_leases",
    "persistq_jobs_due",
    "persistq_jobs_finished",
)
VERSION_5_INDEXES = (
    "CREATE INDEX persistq_jobs_queue_state ON persistq_jobs (queue, state, id)",
    "CREATE INDEX persistq_jobs_leases ON persistq_jobs (lease_expires_at) WHERE state = 'running'",
    "CREATE INDEX persistq_jobs_due ON persistq_jobs (queue, run_at) WHERE state = 'queued'",
    "CREATE INDEX persistq_jobs_finished ON persistq_jobs (finished_at) "
    "WHERE state IN ('done', 'dead', 'cancelled')",
)


async def execute(url: str, *statements: str) -> list[list[tuple[object, ...]]]:
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            found = []
            for statement in statements:
                result = await conn.execute(text(statement))
                found.append([tuple(r) for r in result] if result.returns_rows else [])
            return found
    finally:
        await engine.dispose()


async def index_definitions(url: str) -> dict[str, str]:
    if url.startswith("postgresql"):
        query = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'persistq_jobs'"
    else:
        query = "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'persistq_jobs'"
    (rows,) = await execute(url, query)
    return {str(name): str(sql) for name, sql in rows if sql is not None}


async def downgrade_to_version_5(url: str) -> None:
    await execute(
        url,
        *(f"DROP INDEX {name}" for name in REPLACED),
        *VERSION_5_INDEXES,
        "UPDATE persistq_meta SET value = '5' WHERE key = 'schema_version'",
    )


async def migrate_and_check(url: str) -> None:
    async with pq.Queue(url, name="mail") as q:
        ids = await q.put_many(range(6))
        jobs, _ = await q.claim(3)
        await jobs[0].ack("sent")
        await jobs[1].fail(error="boom")
        await q.cancel(ids[5])  # jobs[2] stays running
    await downgrade_to_version_5(url)
    before = await index_definitions(url)
    assert "WHERE" not in before["persistq_jobs_queue_state"].upper()
    assert "queue" not in before["persistq_jobs_leases"].split("(")[1].split(")")[0]

    async with pq.Queue(url, name="mail") as q:
        after = await index_definitions(url)
        listed = after["persistq_jobs_queue_state"]
        assert "WHERE" in listed.upper(), listed
        # finished jobs only, by two inequalities (no IN list: see schema.FINISHED)
        for name in ("persistq_jobs_queue_state", "persistq_jobs_finished"):
            assert "<> 'queued'" in after[name], after[name]
            assert "<> 'running'" in after[name], after[name]
            assert "'done'" not in after[name], after[name]
        leases = after["persistq_jobs_leases"]
        assert "lease_expires_at, queue, state" in leases, leases
        assert "queue, run_at, state" in after["persistq_jobs_due"]
        assert set(after) == set(before)  # the other indexes untouched, none lost
        for name in set(after) - set(REPLACED):
            assert after[name] == before[name]
        stats = await q.stats()
        assert (stats.queued, stats.running, stats.done, stats.dead, stats.cancelled) == (
            2,
            1,
            1,
            1,
            1,
        )
        infos = {i.id: i for i in await q.list_jobs(limit=10)}
        assert sorted(infos) == sorted(ids)
        assert infos[jobs[0].id].result == "sent"
        assert [i.id for i in await q.list_jobs(state=pq.JobState.RUNNING)] == [jobs[2].id]
        assert await q.queue_names() == ["mail"]
        # the job path works on the migrated indexes
        job = await q.get_nowait()
        assert job is not None
        assert job.id == ids[3]
        await job.ack()
        assert (await q.stats()).done == 2
        assert [i.id for i in await q.list_jobs(state=pq.JobState.DONE)] == [ids[0], ids[3]]
    (version,) = await execute(url, "SELECT value FROM persistq_meta WHERE key = 'schema_version'")
    assert version == [(str(schema.SCHEMA_VERSION),)]


async def test_sqlite_database_of_version_5_is_migrated(tmp_path: Path) -> None:
    await migrate_and_check(str(tmp_path / "v5.db"))


@pytest.mark.postgres
def test_postgres_database_of_version_5_is_migrated() -> None:
    with private_pg_database("persistq_migrate_v5") as url:
        asyncio.run(migrate_and_check(url))
