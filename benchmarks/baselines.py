"""What persistq is measured against: raw sqlite3, raw aiosqlite, persist-queue and huey.

The raw baselines do the least a durable queue must do, with none of its bookkeeping: one
table with a partial index on ready jobs in priority order (the same shape as persistq's claim
index), WAL, and ``synchronous`` FULL or NORMAL to match persistq's ``durability``. Payloads are
JSON-encoded inside the timed loop, because persistq must encode them too.

The peers are run with their own defaults (WAL, the build's default ``synchronous``, which is
FULL), since that is what a user who picks them gets.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
from common import Deadline, Sample, Sizes, Skipped, payload, payload_bytes

__all__ = [
    "SCHEMA",
    "aiosqlite_insert",
    "huey_dequeue",
    "huey_enqueue",
    "persistqueue_ack_cycle",
    "persistqueue_get",
    "persistqueue_put",
    "sqlite3_cycle",
    "sqlite3_executemany",
    "sqlite3_insert",
]

#: The raw baselines' table: what any SQLite job queue needs, nothing more.
SCHEMA = (
    "CREATE TABLE jobs ("
    " id INTEGER PRIMARY KEY, queue TEXT NOT NULL, state TEXT NOT NULL, payload BLOB NOT NULL,"
    " priority INTEGER NOT NULL, attempts INTEGER NOT NULL, run_at REAL NOT NULL,"
    " lease_expires_at REAL, finished_at REAL) STRICT",
    "CREATE INDEX jobs_ready ON jobs (queue, priority DESC, id) WHERE state = 'queued'",
)
INSERT = (
    "INSERT INTO jobs (queue, state, payload, priority, attempts, run_at)"
    " VALUES ('bench', 'queued', ?, 0, 0, ?)"
)
# One statement claims the next ready job, as persistq's claim does (there with IN ... LIMIT n).
CLAIM = (
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_expires_at = ?"
    " WHERE id = (SELECT id FROM jobs WHERE queue = 'bench' AND state = 'queued'"
    " AND run_at <= ? ORDER BY priority DESC, id LIMIT 1)"
    " RETURNING id, payload"
)
DONE = "UPDATE jobs SET state = 'done', finished_at = ?, lease_expires_at = NULL WHERE id = ?"


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, like persistq does, so the
    # baseline pays for the same explicit write transactions.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def _create(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = _connect(path, synchronous)
    for statement in SCHEMA:
        conn.execute(statement)
    return conn


def sqlite3_insert(synchronous: str) -> Any:
    """Single-row INSERT, each in its own committed write transaction."""

    def run(tmp: Path, sizes: Sizes) -> Sample:
        conn = _create(tmp / "raw.db", synchronous)
        try:
            done = 0
            deadline = Deadline(sizes.time_cap)
            start = time.perf_counter()
            for i in range(sizes.seq_puts):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(INSERT, (payload_bytes(i), time.time()))
                conn.execute("COMMIT")
                done += 1
                if deadline.passed():
                    break
            return Sample(done, time.perf_counter() - start)
        finally:
            conn.close()

    return run


def sqlite3_executemany(synchronous: str) -> Any:
    """``executemany`` of all rows in one transaction: SQLite's ceiling for bulk puts."""

    def run(tmp: Path, sizes: Sizes) -> Sample:
        conn = _create(tmp / "raw.db", synchronous)
        try:
            start = time.perf_counter()
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, ((payload_bytes(i), now) for i in range(sizes.put_many_rows)))
            conn.execute("COMMIT")
            return Sample(sizes.put_many_rows, time.perf_counter() - start)
        finally:
            conn.close()

    return run


def _preload_raw(conn: sqlite3.Connection, count: int) -> None:
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(INSERT, ((payload_bytes(i), now) for i in range(count)))
    conn.execute("COMMIT")


def sqlite3_cycle(synchronous: str) -> Any:
    """Claim one job (one UPDATE ... RETURNING, committed), decode it, mark it done (committed)."""

    def run(tmp: Path, sizes: Sizes) -> Sample:
        conn = _create(tmp / "raw.db", synchronous)
        try:
            _preload_raw(conn, sizes.cycles)
            done = 0
            deadline = Deadline(sizes.time_cap)
            start = time.perf_counter()
            while done < sizes.cycles:
                now = time.time()
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute(CLAIM, (now + 30.0, now)).fetchone()
                conn.execute("COMMIT")
                if row is None:
                    break
                json.loads(row[1])
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(DONE, (time.time(), row[0]))
                conn.execute("COMMIT")
                done += 1
                if deadline.passed():
                    break
            return Sample(done, time.perf_counter() - start)
        finally:
            conn.close()

    return run


def aiosqlite_insert(synchronous: str) -> Any:
    """Single-row INSERT + commit through aiosqlite: the floor for an asyncio SQLite put."""

    async def main(tmp: Path, sizes: Sizes) -> Sample:
        import aiosqlite

        _create(tmp / "raw.db", synchronous).close()
        async with aiosqlite.connect(tmp / "raw.db") as db:
            # aiosqlite's default isolation opens a deferred transaction implicitly before the
            # INSERT; commit() ends it. Two thread hops per put: execute and commit.
            await db.execute(f"PRAGMA synchronous = {synchronous}")
            done = 0
            deadline = Deadline(sizes.time_cap)
            start = time.perf_counter()
            for i in range(sizes.seq_puts):
                await db.execute(INSERT, (payload_bytes(i), time.time()))
                await db.commit()
                done += 1
                if deadline.passed():
                    break
            return Sample(done, time.perf_counter() - start)

    def run(tmp: Path, sizes: Sizes) -> Sample:
        return anyio.run(main, tmp, sizes)

    return run


# ---------------------------------------------------------------------------- persist-queue


def _persistqueue() -> Any:
    try:
        import persistqueue
        import persistqueue.serializers.json as pq_json
    except ImportError:
        raise Skipped(
            "persist-queue is not installed (pip install persist-queue, or the 'bench' extra)"
        ) from None
    return persistqueue, pq_json


def persistqueue_put() -> Any:
    """persist-queue SQLiteQueue.put with auto_commit (each put committed)."""

    def run(tmp: Path, sizes: Sizes) -> Sample:
        persistqueue, pq_json = _persistqueue()
        q = persistqueue.SQLiteQueue(str(tmp / "pq"), auto_commit=True, serializer=pq_json)
        try:
            done = 0
            deadline = Deadline(sizes.time_cap)
            start = time.perf_counter()
            for i in range(sizes.seq_puts):
                q.put(payload(i))
                done += 1
                if deadline.passed():
                    break
            return Sample(done, time.perf_counter() - start)
        finally:
            q.close()

    return run


def _preload_persistqueue(cls: Any, path: Path, count: int, pq_json: Any, *, batched: bool) -> None:
    # SQLiteQueue can preload in one transaction (auto_commit=False, then task_done commits), so
    # setup does not cost thousands of fsyncs; SQLiteAckQueue refuses auto_commit=False (it warns
    # and commits each put anyway), so it is preloaded put by put. Neither is timed.
    q = cls(str(path), auto_commit=not batched, serializer=pq_json)
    try:
        for i in range(count):
            q.put(payload(i))
        if batched:
            q.task_done()
    finally:
        q.close()


def persistqueue_get() -> Any:
    """persist-queue SQLiteQueue.get with auto_commit (the row is deleted at once)."""

    def run(tmp: Path, sizes: Sizes) -> Sample:
        persistqueue, pq_json = _persistqueue()
        _preload_persistqueue(
            persistqueue.SQLiteQueue, tmp / "pq", sizes.cycles, pq_json, batched=True
        )
        q = persistqueue.SQLiteQueue(str(tmp / "pq"), auto_commit=True, serializer=pq_json)
        try:
            done = 0
            deadline = Deadline(sizes.time_cap)
            start = time.perf_counter()
            while done < sizes.cycles:
                q.get(block=False)
                done += 1
                if deadline.passed():
                    break
            return Sample(done, time.perf_counter() - start)
        finally:
            q.close()

    return run


def persistqueue_ack_cycle() -> Any:
    """persist-queue SQLiteAckQueue get + ack: its at-least-once cycle, like ours."""

    def run(tmp: Path, sizes: Sizes) -> Sample:
        _, pq_json = _persistqueue()
        from persistqueue.sqlackqueue import SQLiteAckQueue

        _preload_persistqueue(SQLiteAckQueue, tmp / "pq", sizes.cycles, pq_json, batched=False)
        q = SQLiteAckQueue(str(tmp / "pq"), auto_commit=True, serializer=pq_json)
        try:
            done = 0
            deadline = Deadline(sizes.time_cap)
            start = time.perf_counter()
            while done < sizes.cycles:
                item = q.get(block=False)
                q.ack(item)
                done += 1
                if deadline.passed():
                    break
            return Sample(done, time.perf_counter() - start)
        finally:
            q.close()

    return run


# ---------------------------------------------------------------------------- huey


def _huey_storage(path: Path) -> Any:
    try:
        from huey.storage import SqliteStorage
    except ImportError:
        raise Skipped("huey is not installed (pip install huey, or the 'bench' extra)") from None
    return SqliteStorage(name="bench", filename=str(path))


def huey_enqueue() -> Any:
    """huey's SqliteStorage.enqueue: one autocommitted INSERT per task."""

    def run(tmp: Path, sizes: Sizes) -> Sample:
        storage = _huey_storage(tmp / "huey.db")
        try:
            done = 0
            deadline = Deadline(sizes.time_cap)
            start = time.perf_counter()
            for i in range(sizes.seq_puts):
                storage.enqueue(payload_bytes(i))
                done += 1
                if deadline.passed():
                    break
            return Sample(done, time.perf_counter() - start)
        finally:
            storage.close()

    return run


def huey_dequeue() -> Any:
    """huey's SqliteStorage.dequeue: select + delete in one exclusive transaction (at-most-once)."""

    def run(tmp: Path, sizes: Sizes) -> Sample:
        storage = _huey_storage(tmp / "huey.db")
        try:
            # Preload straight into huey's own table in one transaction (its enqueue commits
            # each row, which would make setup cost thousands of fsyncs).
            conn = sqlite3.connect(tmp / "huey.db", isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO task (queue, data, priority) VALUES ('bench', ?, 0)",
                ((payload_bytes(i),) for i in range(sizes.cycles)),
            )
            conn.execute("COMMIT")
            conn.close()
            done = 0
            deadline = Deadline(sizes.time_cap)
            start = time.perf_counter()
            while done < sizes.cycles:
                data = storage.dequeue()
                if data is None:
                    break
                json.loads(bytes(data))
                done += 1
                if deadline.passed():
                    break
            return Sample(done, time.perf_counter() - start)
        finally:
            storage.close()

    return run
