"""Transient database errors: how each backend classifies real driver errors, and how outcome
writes are tried again while the lease lasts (never a permanent error, never past the lease).

The errors are the drivers' own, provoked for real: a write lock held by another connection, a
refused connection, a backend terminated mid-transaction, a unique violation.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

import persistq_async as pq
from persistq_async.backends import PostgresBackend, SQLiteBackend, normalize_url
from persistq_async.config import Options
from persistq_async.job import WriteAbandoned
from persistq_async.store import writer as writer_module
from persistq_async.store.writer import wrap_db_error

pytestmark = pytest.mark.timeout(60)


def _records(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


# ---------------------------------------------------------------------- SQLite


def test_sqlite_busy_is_transient_and_never_committed_a_constraint_is_neither(
    tmp_path: Path,
) -> None:
    db = tmp_path / "x.db"
    backend = SQLiteBackend(normalize_url(str(db)), Options())
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    holder.execute("INSERT INTO t VALUES (1)")
    holder.execute("BEGIN IMMEDIATE")
    engine = create_engine(f"sqlite:///{db}", connect_args={"timeout": 0})
    try:
        with engine.connect() as conn:
            with pytest.raises(DBAPIError) as busy:
                conn.exec_driver_sql("INSERT INTO t VALUES (2)")
            conn.rollback()
            holder.execute("ROLLBACK")
            with pytest.raises(DBAPIError) as duplicate:
                conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    finally:
        engine.dispose()
        holder.close()
    wrapped = wrap_db_error(busy.value, "writing", "x.db")
    assert busy.value.orig is not None
    for error in (busy.value, busy.value.orig, wrapped):
        assert backend.is_transient(error), error
        assert backend.never_committed(error), error
    for error in (duplicate.value, wrap_db_error(duplicate.value, "writing", "x.db")):
        assert not backend.is_transient(error)
        assert not backend.never_committed(error)
    assert not backend.is_transient(pq.LeaseLost("gone"))


@pytest.fixture
def no_writer_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer thread gives up a busy batch at once, so the job's own retries are seen."""
    monkeypatch.setattr(writer_module, "MAX_BUSY_RETRIES", 0)


def _hold_write_lock(db: Path, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        threading.Event().wait(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.mark.usefixtures("no_writer_retries")
async def test_an_ack_locked_out_is_tried_again_until_it_lands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "jobs.db"
    async with pq.Queue(db, name="q", busy_timeout=0.05, lease_seconds=10) as q:
        job_id = await q.put({"n": 1})
        job = await q.get(timeout=5)
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(db, 1.0, locked))
        holder.start()
        try:
            await anyio.to_thread.run_sync(locked.wait, 5)
            with caplog.at_level(logging.DEBUG, logger="persistq_async"):
                await job.ack("done")
        finally:
            await anyio.to_thread.run_sync(holder.join)
        assert len(_records(caplog, "write_retrying")) == 1
        assert _records(caplog, "write_abandoned") == []
        found = await q.job(job_id)
        assert found is not None
        assert (found.state, found.result, found.attempts) == (pq.JobState.DONE, "done", 1)


@pytest.mark.usefixtures("no_writer_retries")
async def test_an_ack_locked_out_past_the_lease_is_given_up_and_the_job_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "jobs.db"
    async with pq.Queue(db, name="q", busy_timeout=0.05, lease_seconds=0.6) as q:
        job_id = await q.put({"n": 1})
        job = await q.get(timeout=5)
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(db, 1.5, locked))
        holder.start()
        try:
            await anyio.to_thread.run_sync(locked.wait, 5)
            with caplog.at_level(logging.DEBUG, logger="persistq_async"):
                began = anyio.current_time()
                with pytest.raises(WriteAbandoned) as info:
                    await job.ack()
                took = anyio.current_time() - began
        finally:
            await anyio.to_thread.run_sync(holder.join)
        assert isinstance(info.value, pq.DatabaseError)
        assert took < 1.5  # given up when the lease ran out, not when the lock went
        [abandoned] = _records(caplog, "write_abandoned")
        assert abandoned.job_id == job_id  # type: ignore[attr-defined]
        assert not job.finished
        again = await q.get(timeout=5)  # the rescue of the expired lease delivers it again
        assert (again.id, again.attempts) == (job_id, 2)
        await again.ack()


async def test_a_permanent_error_is_never_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with pq.Queue(tmp_path / "jobs.db", name="q", lease_seconds=0.2) as q:
        await q.put({"n": 1})
        job = await q.get(timeout=5)
        await anyio.sleep(0.3)
        assert await q.store.rescue() == 1
        with caplog.at_level(logging.DEBUG, logger="persistq_async"), pytest.raises(pq.LeaseLost):
            await job.ack()
        assert _records(caplog, "write_retrying") == []


# ---------------------------------------------------------------------- PostgreSQL


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.postgres
async def test_postgres_classifies_real_errors(pg_url: str) -> None:
    url = normalize_url(pg_url)
    backend = PostgresBackend(url, Options())

    refused_engine = create_async_engine(url.set(port=_closed_port()))
    try:
        with pytest.raises(ConnectionRefusedError) as refused:
            async with refused_engine.connect():
                pass
    finally:
        await refused_engine.dispose()
    assert backend.is_transient(refused.value)
    assert backend.never_committed(refused.value)

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as conflict:
                await conn.execute(
                    text(
                        "DO $$ BEGIN RAISE EXCEPTION 'conflict' "
                        "USING ERRCODE = 'serialization_failure'; END $$"
                    )
                )
            await conn.rollback()
            await conn.execute(text("CREATE TEMP TABLE t (id int PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            with pytest.raises(DBAPIError) as duplicate:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
            await conn.rollback()

        async with engine.connect() as victim, engine.connect() as killer:
            await victim.execute(text("BEGIN"))
            pid = (await victim.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            with anyio.fail_after(10):
                while True:  # until the server has ended the victim's session
                    alive = await killer.execute(
                        text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                    )
                    if alive.scalar_one() == 0:
                        break
                    await anyio.sleep(0.05)
            with pytest.raises(DBAPIError) as lost:
                await victim.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    for error in (conflict.value, wrap_db_error(conflict.value, "writing", "pg")):
        assert backend.is_transient(error)
        assert backend.never_committed(error)
    assert backend.is_transient(lost.value)
    # A session ended mid-transaction: its COMMIT could have been the statement that was lost.
    assert not backend.never_committed(lost.value)
    assert not backend.is_transient(duplicate.value)
    assert not backend.never_committed(duplicate.value)


@pytest.mark.usefixtures("no_writer_retries")
async def test_an_ack_cancelled_while_it_waits_to_try_again_leaves_the_job_leased(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "jobs.db"
    async with pq.Queue(db, name="q", busy_timeout=0.05, lease_seconds=10) as q:
        job_id = await q.put({"n": 1})
        job = await q.get(timeout=5)
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(db, 1.0, locked))
        holder.start()
        try:
            await anyio.to_thread.run_sync(locked.wait, 5)
            with caplog.at_level(logging.DEBUG, logger="persistq_async"):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(job.ack)
                    with anyio.fail_after(5):
                        while not _records(caplog, "write_retrying"):  # noqa: ASYNC110
                            await anyio.sleep(0.01)
                    tg.cancel_scope.cancel()  # while it sleeps before the next try
        finally:
            await anyio.to_thread.run_sync(holder.join)
        # Not applied, not half applied: the delivery is still leased, and still ours to finish.
        assert not job.finished
        found = await q.job(job_id)
        assert found is not None
        assert (found.state, [a.outcome for a in found.history]) == (pq.JobState.RUNNING, [None])
        await job.ack("later")
        found = await q.job(job_id)
        assert found is not None
        assert (found.state, found.result, found.attempts) == (pq.JobState.DONE, "later", 1)
