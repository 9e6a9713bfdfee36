"""Cancellation sweep: every public coroutine, cancelled after k loop iterations (k = 0..30)
and after random short delays. Afterwards another connection takes the write lock within
100 ms (no lock or transaction left open), the next call succeeds, and the audit trail is valid.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import persistq_async as pq

pytestmark = pytest.mark.timeout(300)

Call = Callable[[pq.Queue, pq.Job], Awaitable[object]]

#: Every public coroutine of Queue and Job, called as a user would.
CALLS: dict[str, Call] = {
    "put": lambda q, j: q.put({"n": 1}),
    "put_many": lambda q, j: q.put_many([{"n": n} for n in range(5)]),
    "get": lambda q, j: q.get(timeout=0.5),
    "get_nowait": lambda q, j: q.get_nowait(),
    "stats": lambda q, j: q.stats(),
    "job": lambda q, j: q.job(j.id),
    "list_jobs": lambda q, j: q.list_jobs(),
    "join": lambda q, j: q.join(timeout=0.05),
    "clean": lambda q, j: q.clean(),
    "requeue": lambda q, j: q.requeue(j.id),
    "cancel": lambda q, j: q.cancel(j.id),
    "delete": lambda q, j: q.delete(j.id),
    "purge": lambda q, j: q.purge("done"),
    "ack": lambda q, j: j.ack({"ok": 1}),
    "nack": lambda q, j: j.nack(delay=0, error="e"),
    "fail": lambda q, j: j.fail(error="e"),
    "extend": lambda q, j: j.extend(10),
}
#: Calls that act on a finished job (requeue) rather than on a leased one.
NEEDS_FINISHED = {"requeue"}


async def _cancel(call: Call, q: pq.Queue, job: pq.Job, *, k: int | None, delay: float) -> None:
    async def run() -> None:
        # outcomes a finished call may have; the sweep is about cancellation
        with contextlib.suppress(TimeoutError, pq.JobStateError, pq.JobNotFound, pq.LeaseLost):
            await call(q, job)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            if k is None:
                await anyio.sleep(delay)
            else:
                for _ in range(k):
                    await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()


def _write_lock_free(path: Path) -> float:
    """Seconds another connection waited to take the write lock (BEGIN IMMEDIATE)."""
    conn = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    try:
        started = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        waited = time.monotonic() - started
        conn.execute("ROLLBACK")
        return waited
    finally:
        conn.close()


async def _check(q: pq.Queue, path: Path) -> None:
    waited = await anyio.to_thread.run_sync(_write_lock_free, path)
    assert waited < 0.1, f"the write lock was still held {waited:.3f}s after a cancellation"
    # The next call succeeds, and the audit trail is valid.
    await q.put({"after": True})
    for info in await q.list_jobs(limit=1000):
        # (numbers restart after a requeue, so they need not grow across the whole history)
        assert all(1 <= a.attempt <= info.max_attempts for a in info.history), info
        assert info.attempts <= info.max_attempts
        finished = [a for a in info.history if a.outcome is not None]
        if info.state is pq.JobState.RUNNING:
            assert info.history, info
            assert info.history[-1].outcome is None, info
        elif info.state is pq.JobState.DONE:
            assert finished, info
            assert finished[-1].outcome == "acked", info
        assert not [a for a in info.history[:-1] if a.outcome is None], info
    stray = [
        j for j in await q.list_jobs(state="running", limit=1000) if j.lease_expires_at is None
    ]
    assert not stray


async def _prepare(q: pq.Queue, name: str) -> pq.Job:
    await q.put({"n": 0})
    job = await q.get(timeout=2)
    if name in NEEDS_FINISHED:
        await job.ack()
    return job


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_cancel_after_each_loop_iteration(tmp_path: Path, name: str) -> None:
    path = tmp_path / "sweep.db"
    async with pq.Queue(path, name="sweep", poll_interval=0.05) as q:
        for k in range(31):
            job = await _prepare(q, name)
            await _cancel(CALLS[name], q, job, k=k, delay=0)
            await _check(q, path)
            if not job.finished:
                await job.release()


async def test_cancel_after_random_short_delays(tmp_path: Path) -> None:
    rng = random.Random(6)
    path = tmp_path / "sweep.db"
    async with pq.Queue(path, name="sweep", poll_interval=0.05) as q:
        for _ in range(120):
            name = rng.choice(sorted(CALLS))
            job = await _prepare(q, name)
            await _cancel(CALLS[name], q, job, k=None, delay=rng.uniform(0, 0.004))
            await _check(q, path)
            if not job.finished:
                await job.release()


#: Flow-control calls, swept like the others in the test below.
FLOW_CALLS: dict[str, Call] = {
    "pause": lambda q, j: q.pause(),
    "resume": lambda q, j: q.resume(),
    "set_rate_limit": lambda q, j: q.set_rate_limit("100000/s", burst=1000),
    "set_max_running": lambda q, j: q.set_max_running(1000),
    "set_dead_letter_queue": lambda q, j: q.set_dead_letter_queue("sweep.dead"),
}


@pytest.mark.parametrize("name", sorted({*CALLS, *FLOW_CALLS}))
async def test_cancel_with_every_limit_on(tmp_path: Path, name: str) -> None:
    """The sweep on a capped, rate-limited queue with a dead-letter queue, the flow-control
    calls included: a cancelled claim hands back its slot, no lock is left held."""
    call = CALLS.get(name) or FLOW_CALLS[name]
    path = tmp_path / "sweep.db"
    async with pq.Queue(
        path,
        name="sweep",
        poll_interval=0.05,
        max_running=1000,
        rate_limit="100000/s",
        rate_burst=1000,
        dead_letter_queue="sweep.dead",
    ) as q:
        for k in range(0, 31, 2):
            job = await _prepare(q, name)
            await _cancel(call, q, job, k=k, delay=0)
            await _check(q, path)
            await q.resume()  # a cancelled resume (or a pause) must not stall the next round
            if not job.finished:
                await job.release()
            if name not in ("get", "get_nowait"):  # (a get that won keeps its job)
                stats = await q.stats()
                assert stats.running == 0, stats  # no slot of the cap left taken
