"""The checkpointer thread copies the WAL back so that commits do not have to."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

import persistq_async as pq
from persistq_async.backends import checkpointer as checkpointer_module
from persistq_async.backends.checkpointer import Checkpointer


def _wal_database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # only the checkpointer copies
    conn.execute("CREATE TABLE t (x TEXT)")
    return conn


def test_a_request_copies_every_frame_back(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    writer = _wal_database(path)
    reports: list[tuple[int, int, int]] = []
    reported = threading.Event()

    def on_result(busy: int, frames: int, done: int) -> None:
        reports.append((busy, frames, done))
        reported.set()

    checkpointer = Checkpointer(path, synchronous="FULL", on_result=on_result)
    checkpointer.start()
    try:
        assert checkpointer.running
        for n in range(200):
            writer.execute("INSERT INTO t VALUES (?)", ("x" * 500 + str(n),))
        checkpointer.request()
        assert reported.wait(10), "no checkpoint within 10 s of the request"
    finally:
        checkpointer.stop()
    assert not checkpointer.running
    busy, frames, done = reports[-1]
    assert busy == 0
    assert frames > 0
    assert done == frames  # nobody pinned the WAL: all of it is in the database now
    # Nothing left for the writer's own checkpoint to copy.
    assert writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1:] == (frames, frames)
    writer.close()


def test_a_checkpointer_that_cannot_open_the_file_is_just_not_running(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path / "missing" / "q.db", synchronous="FULL")
    checkpointer.start()
    assert not checkpointer.running
    checkpointer.request()  # harmless
    checkpointer.stop()


async def test_a_queue_runs_its_checkpointer_while_open(db_path: Path) -> None:
    async with pq.Queue(db_path, name="ck") as q:
        backend = q.store.backend
        checkpointer = backend._checkpointer  # type: ignore[attr-defined]
        assert checkpointer is not None
        assert checkpointer.running
        await q.put_many([{"n": n} for n in range(100)])
    assert not checkpointer.running
    assert backend._checkpointer is None  # type: ignore[attr-defined]


async def test_a_claim_finds_the_jobs_put_in_its_own_batch(db_path: Path) -> None:
    # The claim is submitted first, the put second, both before the writer's next batch:
    # claims run last in a batch, so the claim sees the job.
    async with pq.Queue(db_path, name="order") as q:
        got: list[pq.Job | None] = []

        async def claim() -> None:
            got.append(await q.get_nowait())

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim)
            tg.start_soon(q.put, {"n": 1})
        assert got[0] is not None
        assert got[0].payload == {"n": 1}
        await got[0].ack()


def test_a_stop_that_comes_just_as_a_checkpoint_starts_is_not_lost(tmp_path: Path) -> None:
    # A stop arriving after the delay ran out but before the request was cleared used to be
    # cleared with it: the thread went back to waiting for a request that never came, and
    # stop() (so Queue.aclose(), and the interpreter's exit) waited for it forever.
    path = tmp_path / "wal.db"
    _wal_database(path).close()
    checkpointer = Checkpointer(path, synchronous="NORMAL")

    class StopArrivesNow(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            stopped = super().wait(timeout)
            if not stopped:
                # What stop() does, at the worst moment; no later set() comes to the rescue.
                self.set()
                checkpointer._wanted.set()
            return stopped

    checkpointer._stopping = StopArrivesNow()
    checkpointer.start()
    thread = checkpointer._thread
    assert thread is not None
    checkpointer.request()
    thread.join(10)
    try:
        assert not thread.is_alive(), "the checkpointer missed the stop and waits forever"
    finally:
        checkpointer.stop()


def test_stop_waits_for_a_stuck_checkpoint_only_so_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "wal.db"
    _wal_database(path).close()
    entered, release = threading.Event(), threading.Event()

    def stuck(busy: int, frames: int, done: int) -> None:
        entered.set()
        release.wait(10)

    monkeypatch.setattr(checkpointer_module, "STOP_TIMEOUT", 0.2)
    checkpointer = Checkpointer(path, synchronous="NORMAL", on_result=stuck)
    checkpointer.start()
    thread = checkpointer._thread
    assert thread is not None
    checkpointer.request()
    assert entered.wait(10), "no checkpoint within 10 s of the request"
    with caplog.at_level(logging.WARNING, logger=checkpointer_module.__name__):
        checkpointer.stop()  # returns although the checkpoint has not ended
    assert thread.is_alive()
    assert "did not stop within" in caplog.text
    release.set()
    thread.join(10)
    assert not thread.is_alive()
