"""Opening a database: schema creation and reuse, refusing what is not ours, durability."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

import persistq_async as pq
from persistq_async import schema


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        return [r[0] for r in rows]


async def test_reopening_keeps_jobs_and_history(backend_url: str, queue_name: str) -> None:
    async with pq.Queue(backend_url, name=queue_name) as q:
        done_id, queued_id = await q.put_many(["done", "queued"])
        job = await q.get_nowait()
        assert job is not None
        await job.ack("r")
    async with pq.Queue(backend_url, name=queue_name) as q:
        done = await q.job(done_id)
        assert done is not None
        assert done.state is pq.JobState.DONE
        assert done.result == "r"
        assert [a.outcome for a in done.history] == ["acked"]
        job = await q.get_nowait()
        assert job is not None
        assert job.id == queued_id
        await job.ack()
        assert await q.put("new") > queued_id


async def test_durability_normal_opens_and_works(backend_url: str, queue_name: str) -> None:
    async with pq.Queue(backend_url, name=queue_name, durability="normal") as q:
        job_id = await q.put("x")
        job = await q.get_nowait()
        assert job is not None
        assert job.id == job_id
        await job.ack()
        assert (await q.stats()).done == 1


async def test_schema_is_created_with_version_and_application_id(db_path: Path) -> None:
    async with pq.Queue(db_path, name="q"):
        pass
    assert {"persistq_meta", "persistq_jobs", "persistq_attempts"} <= set(tables(db_path))
    with sqlite3.connect(db_path) as conn:
        version = conn.execute(
            "SELECT value FROM persistq_meta WHERE key = 'schema_version'"
        ).fetchone()
        assert version == (str(schema.SCHEMA_VERSION),)
        assert conn.execute("PRAGMA application_id").fetchone() == (schema.APPLICATION_ID,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_a_url_and_a_path_open_the_same_file(db_path: Path) -> None:
    async with pq.Queue(db_path, name="q") as q:
        job_id = await q.put("x")
    async with pq.Queue(f"sqlite+aiosqlite:///{db_path}", name="q") as q:
        assert await q.job(job_id) is not None


async def test_an_empty_file_becomes_a_queue(db_path: Path) -> None:
    db_path.touch()
    async with pq.Queue(db_path, name="q") as q:
        assert await q.put("x") >= 1


async def test_a_newer_schema_version_is_refused(db_path: Path) -> None:
    async with pq.Queue(db_path, name="q") as q:
        job_id = await q.put("keep me")
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE persistq_meta SET value = '999' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(pq.SchemaError) as info:
        async with pq.Queue(db_path, name="q"):
            pass
    message = str(info.value)
    assert "999" in message
    assert "newer" in message
    assert isinstance(info.value, pq.PersistQError)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute(
            "SELECT value FROM persistq_meta WHERE key = 'schema_version'"
        ).fetchone() == ("999",)
        assert conn.execute("SELECT id FROM persistq_jobs").fetchall() == [(job_id,)]
    conn.close()


async def test_an_unreadable_schema_version_is_refused(db_path: Path) -> None:
    async with pq.Queue(db_path, name="q"):
        pass
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM persistq_meta WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(pq.SchemaError, match="schema version"):
        async with pq.Queue(db_path, name="q"):
            pass


async def test_a_file_that_is_not_sqlite_is_refused_untouched(db_path: Path) -> None:
    db_path.write_bytes(b"name,email\nada,ada@example.org\n" * 100)
    before = digest(db_path)
    with pytest.raises(pq.SchemaError) as info:
        async with pq.Queue(db_path, name="q"):
            pass
    assert "not an SQLite database" in str(info.value)
    assert str(db_path) in str(info.value)
    assert digest(db_path) == before
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]


async def test_a_foreign_sqlite_database_is_refused_untouched(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        conn.execute("INSERT INTO users (email) VALUES ('ada@example.org')")
    conn.close()
    before = digest(db_path)
    with pytest.raises(pq.SchemaError) as info:
        async with pq.Queue(db_path, name="q"):
            pass
    assert "users" in str(info.value)
    assert digest(db_path) == before
    assert tables(db_path) == ["users"]


async def test_a_database_of_another_application_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA application_id = 1234")
    conn.close()
    before = digest(db_path)
    with pytest.raises(pq.SchemaError, match="application"):
        async with pq.Queue(db_path, name="q"):
            pass
    assert digest(db_path) == before


async def test_persistq_tables_without_a_version_are_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE persistq_jobs (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(pq.SchemaError, match="persistq_jobs"):
        async with pq.Queue(db_path, name="q"):
            pass
    assert tables(db_path) == ["persistq_jobs"]


async def test_a_missing_directory_is_named_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(pq.DatabaseError) as info:
        async with pq.Queue(missing / "jobs.db", name="q"):
            pass
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)
    assert not (tmp_path / "no").exists()


async def test_a_directory_as_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(pq.DatabaseError, match="directory"):
        async with pq.Queue(tmp_path, name="q"):
            pass


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write a read-only file"
)
async def test_a_read_only_file_is_refused_untouched(db_path: Path) -> None:
    async with pq.Queue(db_path, name="q") as q:
        await q.put("x")
    before = digest(db_path)
    db_path.chmod(0o444)
    try:
        with pytest.raises(pq.DatabaseError) as info:
            async with pq.Queue(db_path, name="q"):
                pass
        message = str(info.value).lower()
        assert "read-only" in message or "readonly" in message
        assert digest(db_path) == before
    finally:
        db_path.chmod(0o644)


@pytest.mark.parametrize("url", [":memory:", "sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
async def test_an_in_memory_database_is_refused(url: str) -> None:
    with pytest.raises(pq.SchemaError, match="in-memory"):
        async with pq.Queue(url, name="q"):
            pass


@pytest.mark.parametrize(
    "url",
    ["sqlite:///x.db", "mysql+aiomysql://u@h/db", "postgresql+psycopg2://u@h/db", "nonsense://"],
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(pq.PersistQError) as info:
        pq.Queue(url, name="q")
    assert isinstance(info.value, ValueError)
    assert "url" in str(info.value)
