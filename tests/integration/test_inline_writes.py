"""At durability "normal", small batches run on the event loop's thread when the writer's thread
is idle; never when anything would make the loop wait (the file's lock or SQLite's write lock
held elsewhere), never at "full", never a checkpoint, never a big batch.

Which thread ran a batch is seen by wrapping the writer's ``run_batch`` (the real one still runs).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import persistq_async as pq
from persistq_async.backends import sqlite as sqlite_backend
from persistq_async.backends.wal_lock import LOCK_SUFFIX
from persistq_async.store import writer as writer_module

LOOP = "loop"
THREAD = "writer"


class Batches:
    """Every batch the writer runs: on which thread, its op kinds, whether it gave up busy."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, db_path: Path) -> None:
        self.seen: list[tuple[str, list[str], bool]] = []
        self.db_path = db_path
        #: (backfilled frames before, after) of every batch run on the loop's thread.
        self.backfill: list[tuple[int, int]] = []
        real = writer_module.run_batch
        loop_thread = threading.get_ident()

        def spy(conn: Any, batch: list[writer_module.Op[Any]], **kwargs: Any) -> bool:
            where = LOOP if threading.get_ident() == loop_thread else THREAD
            before = self.backfilled()
            ran = real(conn, batch, **kwargs)
            if where == LOOP:
                self.backfill.append((before, self.backfilled()))
            self.seen.append((where, [op.kind for op in batch], ran))
            return ran

        monkeypatch.setattr(writer_module, "run_batch", spy)

    def backfilled(self) -> int:
        """``nBackfill`` of the WAL-index (sqlite.org/walformat.html: the checkpoint info at
        offset 96 of the -shm file, its first field): frames a checkpoint copied back."""
        try:
            data = Path(f"{self.db_path}-shm").read_bytes()[96:100]
        except FileNotFoundError:
            return 0
        return int.from_bytes(data, sys.byteorder) if len(data) == 4 else 0

    def where(self, kind: str) -> set[str]:
        return {w for w, kinds, ran in self.seen if kind in kinds and ran}


async def lone_cycles(q: pq.Queue, count: int) -> None:
    for _ in range(count):
        job = await q.get_nowait()
        assert job is not None
        await job.ack()


async def test_a_lone_consumer_writes_on_the_event_loop_thread(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(monkeypatch, db_path)
    async with pq.Queue(db_path, name="lone", durability="normal") as q:
        await q.put_many([{"n": n} for n in range(20)])
        await lone_cycles(q, 20)
        assert (await q.stats()).done == 20
    assert batches.where("put") == {LOOP}
    assert batches.where("claim") == {LOOP}
    assert batches.where("ack") == {LOOP}


async def test_at_durability_full_every_batch_runs_on_the_thread(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(monkeypatch, db_path)
    async with pq.Queue(db_path, name="full", durability="full") as q:
        await q.put({"n": 1})
        await lone_cycles(q, 1)
    assert batches.seen
    assert {w for w, _, _ in batches.seen} == {THREAD}


async def test_a_big_batch_stays_on_the_thread(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(monkeypatch, db_path)
    async with pq.Queue(db_path, name="big", durability="normal") as q:
        await q.put_many([{"n": n} for n in range(writer_module.INLINE_MAX_ROWS + 1)])
        await q.put_many([{"n": n} for n in range(3)])
    assert [w for w, kinds, _ in batches.seen if kinds == ["put"]] == [THREAD, LOOP]


@pytest.mark.parametrize("through_symlink", [False, True])
async def test_checkpoints_run_on_the_thread_and_keep_the_wal_small(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, through_symlink: bool
) -> None:
    batches = Batches(monkeypatch, db_path)
    wal = Path(f"{db_path}-wal")
    opened = db_path
    if through_symlink:  # SQLite names the -wal and -shm after the real path
        opened = db_path.parent / "link" / "jobs.db"
        opened.parent.mkdir()
        # The file must exist before the link to it is opened.
        async with pq.Queue(db_path, name="ckpt", durability="normal"):
            pass
        opened.symlink_to(db_path)
    # Work in proportion to the checkpoint mark: about six marks' worth of WAL pages.
    scale = sqlite_backend.AUTOCHECKPOINT_PAGES // 250
    async with pq.Queue(opened, name="ckpt", durability="normal") as q:
        for _ in range(40 * scale):
            await q.put_many([{"pad": "x" * 1000, "n": n} for n in range(40)])
        await lone_cycles(q, 300 * scale)
        size = wal.stat().st_size
    # No batch on the loop's thread copied a frame back (a reset may zero the count).
    assert batches.backfill
    assert all(after <= before or after == 0 for before, after in batches.backfill)
    # The thread did checkpoint: the WAL was reused from its start instead of growing
    # (about 1,600 jobs' puts and 600 commits per 250 pages of the mark went through it).
    checkpoints = sum(kinds == [] for w, kinds, _ in batches.seen if w == THREAD)
    # ...when the WAL passed the mark, not after every commit (the WAL-index was read).
    assert 0 < checkpoints < 100, checkpoints
    assert size < 3 * sqlite_backend.AUTOCHECKPOINT_PAGES * (4096 + 24), size


class LoopStalls:
    """The longest time the event loop went without running a 2 ms ticker."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.stop = False

    async def run(self) -> None:
        while not self.stop:
            start = time.perf_counter()
            await anyio.sleep(0.002)
            self.longest = max(self.longest, time.perf_counter() - start - 0.002)


async def _put_while_held(
    q: pq.Queue, hold: Callable[[], Any], release: Callable[[], Any], seconds: float
) -> tuple[float, float, float]:
    """Hold a lock, put, release it after ``seconds``: (put's duration, release time offset,
    longest loop stall while it was held)."""
    stalls = LoopStalls()
    done = anyio.Event()
    done_at: list[float] = []
    released_at: list[float] = []
    hold()
    start = time.perf_counter()

    async def put() -> None:
        await q.put({"n": 1})
        done_at.append(time.perf_counter() - start)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stalls.run)
        tg.start_soon(put)
        await anyio.sleep(seconds)
        held_stall = stalls.longest
        release()
        released_at.append(time.perf_counter() - start)
        with anyio.fail_after(10):
            await done.wait()
        stalls.stop = True
    return done_at[0], released_at[0], held_stall


async def test_a_file_lock_held_by_another_process_sends_the_batch_to_the_thread(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(monkeypatch, db_path)
    async with pq.Queue(db_path, name="held", durability="normal") as q:
        await q.put({"n": 0})  # a batch before: the next lone one is dispatched at once
        child: list[subprocess.Popen[str]] = []
        script = (
            "import fcntl, os, sys\n"
            f"fd = os.open({str(db_path) + LOCK_SUFFIX!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.readline()\n"
        )

        def hold() -> None:
            proc = subprocess.Popen(
                [sys.executable, "-c", script],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "held"
            child.append(proc)

        def release() -> None:
            proc = child[0]
            assert proc.stdin is not None
            proc.communicate("\n", timeout=10)

        seen_before = len(batches.seen)
        done, released, stall = await _put_while_held(q, hold, release, 1.0)
        assert done >= released  # the put waited for the lock, on the thread
        assert stall < 0.25, stall  # the loop did not wait for it
        assert [w for w, kinds, _ in batches.seen[seen_before:] if kinds == ["put"]] == [THREAD]
        assert (await q.stats()).queued == 2


async def test_a_foreign_write_transaction_sends_the_batch_to_the_thread(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(monkeypatch, db_path)
    async with pq.Queue(db_path, name="foreign", durability="normal") as q:
        await q.put({"n": 0})
        foreign = sqlite3.connect(db_path, isolation_level=None)
        try:
            seen_before = len(batches.seen)
            done, released, stall = await _put_while_held(
                q,
                lambda: foreign.execute("BEGIN IMMEDIATE"),
                lambda: foreign.execute("COMMIT"),
                1.0,
            )
        finally:
            foreign.close()
        assert done >= released
        assert stall < 0.25, stall
        # Tried on the loop's thread, found busy (nothing written), then run on the thread.
        tried = [(w, ran) for w, kinds, ran in batches.seen[seen_before:] if kinds == ["put"]]
        assert tried == [(LOOP, False), (THREAD, True)]
        assert (await q.stats()).queued == 2  # written once


async def test_a_cancelled_caller_s_inline_claim_is_released(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(monkeypatch, db_path)
    async with pq.Queue(db_path, name="cancel", durability="normal") as q:
        await q.put({"n": 1})
        with anyio.CancelScope() as scope:
            scope.cancel()  # cancelled before its write is dispatched; the write still runs
            await q.get_nowait()
        job = await q.get_nowait()  # the abandoned claim was handed back
        assert job is not None
        assert job.attempts == 1
        await job.ack()
    assert batches.where("claim") == {LOOP}


async def test_writes_of_one_loop_iteration_share_an_inline_batch(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(monkeypatch, db_path)
    async with pq.Queue(db_path, name="share", durability="normal") as q:
        await q.put({"n": 0})  # a lone write: the next lone one is dispatched one iteration on
        await q.put({"n": 1})
        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(q.put, {"n": n})
        assert (await q.stats()).queued == 7
    puts = [(w, len(kinds)) for w, kinds, _ in batches.seen if kinds and kinds[0] == "put"]
    assert puts == [(LOOP, 1), (LOOP, 1), (LOOP, 5)]
