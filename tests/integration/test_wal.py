"""The WAL stays bounded, and a reader that pins it is reported."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

import persistq_async as pq
from persistq_async.backends import sqlite as sqlite_backend
from persistq_async.testing import run_write


async def _put_until(q: pq.Queue, wal: Path, size: int) -> None:
    for _ in range(400):
        await q.put_many([{"pad": "x" * 200, "n": n} for n in range(50)])
        if wal.exists() and wal.stat().st_size >= size:
            return
    raise AssertionError(f"the WAL never reached {size} bytes")


async def test_a_reader_pinning_the_wal_is_reported(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_backend, "WAL_WARN_BYTES", 256 * 1024)
    monkeypatch.setattr(sqlite_backend, "WAL_CHECK_INTERVAL", 0.0)
    wal = Path(f"{db_path}-wal")
    warned = threading.Event()
    watcher = _Watcher("wal_growing", warned)
    logging.getLogger("persistq_async").addHandler(watcher)
    try:
        async with pq.Queue(db_path, name="wal") as q:
            await q.put({"n": 0})
            reader = sqlite3.connect(db_path)
            try:
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM persistq_jobs").fetchone()  # a snapshot
                with caplog.at_level(logging.WARNING, logger="persistq_async"):
                    await _put_until(q, wal, 1024 * 1024)
                    # The checkpointer thread checks after the commits; wait for its verdict.
                    assert await anyio.to_thread.run_sync(warned.wait, 10.0), "no warning in 10 s"
            finally:
                reader.close()
    finally:
        logging.getLogger("persistq_async").removeHandler(watcher)
    warnings = [r for r in caplog.records if getattr(r, "action", None) == "wal_growing"]
    assert warnings, "no wal_growing warning while a reader pinned the WAL"
    assert "read transaction" in warnings[0].getMessage()
    assert warnings[0].wal_bytes >= 256 * 1024


class _Watcher(logging.Handler):
    """Sets ``event`` when a record with ``action`` is logged, from whatever thread."""

    def __init__(self, action: str, event: threading.Event) -> None:
        super().__init__(logging.WARNING)
        self.action = action
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "action", None) == self.action:
            self.event.set()


async def test_without_a_pinning_reader_there_is_no_warning_and_the_wal_is_bounded(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_backend, "WAL_WARN_BYTES", 256 * 1024)
    monkeypatch.setattr(sqlite_backend, "WAL_CHECK_INTERVAL", 0.0)
    wal = Path(f"{db_path}-wal")
    async with pq.Queue(db_path, name="wal") as q:
        with caplog.at_level(logging.WARNING, logger="persistq_async"):
            for _ in range(40):
                await q.put_many([{"pad": "x" * 200, "n": n} for n in range(200)])
        # Checkpoints let the writer reuse the WAL from its start: it stays near 1000 pages.
        assert os.path.getsize(wal) < 8 * 1024 * 1024
    assert not [r for r in caplog.records if getattr(r, "action", None) == "wal_growing"]


async def test_only_batches_that_record_a_promise_are_synced(db_path: Path) -> None:
    # At durability "full", a batch of claims (or lease extensions) skips the fsync: losing it
    # to a power cut only means delivering the job again. Anything else is synced.
    def level(conn: object) -> int:
        return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())  # type: ignore[attr-defined]

    async with pq.Queue(db_path, name="sync") as q:
        assert await run_write(q, level, kind="claim") == 1  # NORMAL
        assert await run_write(q, level, kind="put") == 2  # FULL
        assert await run_write(q, level, kind="extend") == 1
        assert await run_write(q, level, kind="ack") == 2
    async with pq.Queue(db_path, name="sync", durability="normal") as q:
        assert await run_write(q, level, kind="put") == 1  # normal stays normal
