"""Cancel at each await on the job path; the database must be consistent afterwards.

A cancelled ``get`` either returned its job or handed the lease back before the cancellation
reached the caller; a cancelled ack, nack or fail was either applied or can be repeated (the
outcomes are idempotent per lease); a cancelled put or put_many wrote all of its jobs or none.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

import persistq_async as pq

#: Checkpoints to let pass before cancelling: 0..10, then a few farther points.
POINTS = [*range(11), 15, 25, 40]


async def cancel_after(k: int, fn: Callable[[], Awaitable[object]]) -> list[object]:
    """Run ``fn`` in a task, cancel it after ``k`` checkpoints; returns [result] if it finished."""
    done: list[object] = []

    async def run() -> None:
        done.append(await fn())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            for _ in range(k):
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    return done


async def assert_no_stray_lease(q: pq.Queue, held: list[pq.Job]) -> None:
    running = {j.id for j in await q.list_jobs(state="running")}
    assert running == {j.id for j in held}


@pytest.mark.parametrize("k", POINTS)
async def test_cancelled_get_hands_the_lease_back(queue: pq.Queue, k: int) -> None:
    job_id = await queue.put("x")
    got = await cancel_after(k, lambda: queue.get(timeout=5))
    held = [j for j in got if isinstance(j, pq.Job)]
    # checked at once: the hand-back happens before the cancellation reaches the caller
    await assert_no_stray_lease(queue, held)
    info = await queue.job(job_id)
    assert info is not None
    if held:
        assert held[0].id == job_id
        assert info.state is pq.JobState.RUNNING
        await held[0].ack()
    else:
        assert info.state is pq.JobState.QUEUED
        assert info.attempts == 0  # a handed-back claim is not an attempt
        assert all(a.outcome == "released" for a in info.history)
        job = await queue.get(timeout=2)
        assert job.id == job_id
        assert job.attempts == 1
        await job.ack()
    assert (await queue.stats()).done == 1


@pytest.mark.parametrize("k", POINTS)
async def test_cancelled_get_racing_a_put(queue: pq.Queue, k: int) -> None:
    got: list[pq.Job] = []
    waiting = anyio.Event()

    async def getter() -> None:
        waiting.set()
        got.append(await queue.get(timeout=5))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(getter)
            await waiting.wait()
            job_id = await queue.put("x")
            for _ in range(k):
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    await assert_no_stray_lease(queue, got)
    if got:
        await got[0].ack()
    else:
        job = await queue.get(timeout=2)
        assert job.id == job_id
        await job.ack()
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DONE


async def test_get_under_move_on_after_zero(queue: pq.Queue) -> None:
    ids = await queue.put_many(range(5))
    held: list[pq.Job] = []
    for _ in range(5):
        with anyio.move_on_after(0):
            held.append(await queue.get())
        await assert_no_stray_lease(queue, held)
    while (job := await queue.get_nowait()) is not None:
        held.append(job)
    assert sorted(j.id for j in held) == ids
    assert all(j.attempts == 1 for j in held)


@pytest.mark.parametrize("outcome", ["ack", "nack", "fail"])
@pytest.mark.parametrize("k", POINTS)
async def test_cancelled_outcome_is_applied_or_repeatable(
    queue: pq.Queue, outcome: str, k: int
) -> None:
    job_id = await queue.put("x", max_attempts=3)
    job = await queue.get_nowait()
    assert job is not None

    def act() -> Awaitable[None]:
        if outcome == "ack":
            return job.ack("r")
        if outcome == "nack":
            return job.nack(delay=1000, error="e")
        return job.fail(error="e")

    await cancel_after(k, act)
    if not job.finished:
        # the cancelled call may or may not have been applied: repeating it must succeed
        await act()
    info = await queue.job(job_id)
    assert info is not None
    expected = {"ack": pq.JobState.DONE, "nack": pq.JobState.QUEUED, "fail": pq.JobState.DEAD}
    assert info.state is expected[outcome]
    assert [a.outcome for a in info.history] == [{"ack": "acked"}.get(outcome, outcome + "ed")]
    assert info.lease_expires_at is None


@pytest.mark.parametrize("k", POINTS)
async def test_cancelled_put_writes_its_job_or_nothing(queue: pq.Queue, k: int) -> None:
    await cancel_after(k, lambda: queue.put_many([{"n": n} for n in range(5)]))
    last = await queue.put("after")  # runs after the cancelled write in the writer
    jobs = await queue.list_jobs()
    assert len(jobs) in (1, 6)
    assert jobs[-1].id == last
    assert [j.payload for j in jobs[:-1]] in ([], [{"n": n} for n in range(5)])
    assert all(j.state is pq.JobState.QUEUED for j in jobs)


async def test_random_cancellations_leave_the_database_consistent(queue: pq.Queue) -> None:
    rng = random.Random(20240517)
    put_count = 0
    for _ in range(40):
        step = rng.choice(["put", "get", "ack", "nack"])
        k = rng.randrange(0, 30)
        if step == "put":
            done = await cancel_after(k, lambda: queue.put({"r": rng.random()}))
            put_count += len(done)
        elif step == "get":
            got = await cancel_after(k, queue.get_nowait)
            for job in got:
                if isinstance(job, pq.Job):
                    await job.release()
        else:
            job = await queue.get_nowait()
            if job is None:
                continue
            act = job.ack if step == "ack" else (lambda j=job: j.nack(delay=0))
            await cancel_after(k, act)
            if not job.finished:
                await act()
        # nothing may stay leased: every get above released or finished what it took
        assert await queue.list_jobs(state="running") == []
    s = await queue.stats()
    assert s.running == 0
    assert s.total >= put_count
    for info in await queue.list_jobs(limit=1000):
        assert info.lease_expires_at is None
        assert all(a.outcome is not None for a in info.history)
        counted = [a for a in info.history if a.outcome != "released"]
        assert info.attempts == len(counted)
    # the queue still works
    job_id = await queue.put("last", priority=100)
    job = await queue.get(timeout=2)
    assert job.id == job_id
    await job.ack()
