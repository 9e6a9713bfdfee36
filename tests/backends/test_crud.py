"""Inspection and operations: job, list_jobs, requeue, cancel, delete, purge, clean."""

from __future__ import annotations

import pytest

import persistq_async as pq
from tests.conftest import FakeClock

UNKNOWN_ID = 987_654_321


async def test_job_of_an_unknown_id_is_none(queue: pq.Queue) -> None:
    assert await queue.job(UNKNOWN_ID) is None


async def test_job_of_another_queue_is_not_visible(backend_url: str, queue_name: str) -> None:
    async with (
        pq.Queue(backend_url, name=queue_name) as q,
        pq.Queue(backend_url, name=queue_name + "-b") as other,
    ):
        job_id = await other.put("theirs")
        assert await q.job(job_id) is None
        assert await q.list_jobs() == []
        for op in (q.requeue, q.cancel, q.delete):
            with pytest.raises(pq.JobNotFound):
                await op(job_id)
        info = await other.job(job_id)
        assert info is not None
        assert info.state is pq.JobState.QUEUED


@pytest.mark.parametrize("op", ["requeue", "cancel", "delete"])
async def test_unknown_ids_raise_job_not_found(queue: pq.Queue, op: str) -> None:
    with pytest.raises(pq.JobNotFound) as info:
        await getattr(queue, op)(UNKNOWN_ID)
    assert isinstance(info.value, LookupError)
    assert str(UNKNOWN_ID) in str(info.value)


async def test_list_jobs_oldest_first_with_state_filter(queue: pq.Queue) -> None:
    ids = await queue.put_many(["a", "b", "c", "d"], priority=0)
    await queue.put("urgent", priority=9)
    urgent = await queue.get_nowait()
    assert urgent is not None
    await urgent.ack()
    all_jobs = await queue.list_jobs()
    assert [j.id for j in all_jobs] == [*ids, urgent.id]
    assert [j.payload for j in all_jobs] == ["a", "b", "c", "d", "urgent"]
    assert all(isinstance(j, pq.JobInfo) for j in all_jobs)
    done = await queue.list_jobs(state=pq.JobState.DONE)
    assert [j.id for j in done] == [urgent.id]
    assert [a.outcome for a in done[0].history] == ["acked"]
    assert [j.id for j in await queue.list_jobs(state="queued")] == ids
    assert [j.id for j in await queue.list_jobs(state="QUEUED")] == ids
    assert await queue.list_jobs(state=pq.JobState.DEAD) == []


async def test_list_jobs_limit_and_offset(queue: pq.Queue) -> None:
    ids = await queue.put_many(range(10))
    assert [j.id for j in await queue.list_jobs(limit=3)] == ids[:3]
    assert [j.id for j in await queue.list_jobs(limit=3, offset=3)] == ids[3:6]
    assert [j.id for j in await queue.list_jobs(limit=100, offset=8)] == ids[8:]
    assert await queue.list_jobs(offset=10) == []
    assert [j.id for j in await queue.list_jobs()] == ids


async def test_list_jobs_argument_errors(queue: pq.Queue) -> None:
    with pytest.raises(ValueError, match="limit"):
        await queue.list_jobs(limit=0)
    with pytest.raises(ValueError, match="offset"):
        await queue.list_jobs(offset=-1)
    with pytest.raises(ValueError, match="state"):
        await queue.list_jobs(state="sleeping")
    with pytest.raises(TypeError, match="state"):
        await queue.list_jobs(state=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="limit"):
        await queue.list_jobs(limit="10")  # type: ignore[arg-type]


@pytest.mark.parametrize("finish", ["ack", "fail", "nack-dead", "cancel"])
async def test_requeue_puts_a_finished_job_back(
    cq: pq.Queue, clock: FakeClock, finish: str
) -> None:
    job_id = await cq.put("x", max_attempts=1)
    if finish == "cancel":
        assert await cq.cancel(job_id)
    else:
        job = await cq.get_nowait()
        assert job is not None
        if finish == "ack":
            await job.ack("r")
        elif finish == "fail":
            await job.fail(error="bad")
        else:
            await job.nack(delay=0, error="spent")
    before = await cq.job(job_id)
    assert before is not None
    assert before.state in pq.FINISHED_STATES
    clock.advance(60)
    await cq.requeue(job_id)
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.QUEUED
    assert info.attempts == 0
    assert info.finished_at is None
    assert info.result is None
    assert info.enqueued_at > before.enqueued_at
    assert info.history == before.history  # kept
    job = await cq.get_nowait()
    assert job is not None
    assert job.id == job_id
    assert job.attempts == 1
    await job.ack()
    info = await cq.job(job_id)
    assert info is not None
    assert len(info.history) == len(before.history) + 1
    assert info.history[-1].outcome == "acked"


async def test_requeue_refuses_an_active_job(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    with pytest.raises(pq.JobStateError) as info:
        await queue.requeue(job_id)
    assert isinstance(info.value, pq.PersistQError)
    assert "queued" in str(info.value)
    job = await queue.get_nowait()
    assert job is not None
    with pytest.raises(pq.JobStateError, match="running"):
        await queue.requeue(job_id)
    await job.ack()  # the failed requeue did not disturb the lease


async def test_requeue_refuses_when_the_dedupe_key_is_taken_again(queue: pq.Queue) -> None:
    first = await queue.put("a", dedupe_key="k")
    job = await queue.get_nowait()
    assert job is not None
    await job.ack()
    second = await queue.put("b", dedupe_key="k")
    assert second != first
    with pytest.raises(pq.JobStateError, match="dedupe"):
        await queue.requeue(first)
    info = await queue.job(first)
    assert info is not None
    assert info.state is pq.JobState.DONE


async def test_cancel_a_queued_job(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    assert await queue.cancel(job_id) is True
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.CANCELLED
    assert info.finished_at is not None
    assert info.history == []
    assert await queue.get_nowait() is None
    s = await queue.stats()
    assert (s.queued, s.cancelled) == (0, 1)


async def test_cancel_a_running_job_revokes_its_lease(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    assert await queue.cancel(job_id) is True
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.CANCELLED
    assert info.lease_expires_at is None
    assert [a.outcome for a in info.history] == ["cancelled"]
    for act in (job.ack, job.nack, job.fail):
        with pytest.raises(pq.LeaseLost, match="cancelled"):
            await act()
    with pytest.raises(pq.LeaseLost):
        await job.extend(10)
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.CANCELLED


async def test_cancel_a_job_with_async_with_raises_lease_lost(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    with pytest.raises(pq.LeaseLost):
        async with job:
            assert await queue.cancel(job_id)
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.CANCELLED


@pytest.mark.parametrize("finish", ["ack", "fail", "cancel"])
async def test_cancel_a_finished_job_is_false(queue: pq.Queue, finish: str) -> None:
    job_id = await queue.put("x")
    if finish == "cancel":
        assert await queue.cancel(job_id)
    else:
        job = await queue.get_nowait()
        assert job is not None
        await (job.ack() if finish == "ack" else job.fail())
    before = await queue.job(job_id)
    assert await queue.cancel(job_id) is False
    assert await queue.job(job_id) == before


async def test_delete_removes_a_job_and_its_history(queue: pq.Queue) -> None:
    keep = await queue.put("keep")
    job_id = await queue.put("x", priority=1)
    job = await queue.get_nowait()
    assert job is not None
    assert job.id == job_id
    await job.ack()
    await queue.delete(job_id)
    assert await queue.job(job_id) is None
    with pytest.raises(pq.JobNotFound):
        await queue.delete(job_id)
    assert [j.id for j in await queue.list_jobs()] == [keep]


async def test_delete_a_running_job_makes_its_ack_lose_the_lease(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    await queue.delete(job_id)
    with pytest.raises(pq.LeaseLost, match="deleted"):
        await job.ack()
    assert (await queue.stats()).total == 0


async def test_ids_are_not_reused_after_delete(queue: pq.Queue) -> None:
    first = await queue.put("a")
    await queue.delete(first)
    second = await queue.put("b")
    assert second > first


async def test_purge_deletes_one_state_of_one_queue(backend_url: str, queue_name: str) -> None:
    async with (
        pq.Queue(backend_url, name=queue_name) as q,
        pq.Queue(backend_url, name=queue_name + "-b") as other,
    ):
        ids = await q.put_many(range(5))
        for _ in range(3):
            job = await q.get_nowait()
            assert job is not None
            await job.fail()
        theirs = await other.put("x")
        job = await other.get_nowait()
        assert job is not None
        await job.fail()
        assert await q.purge(pq.JobState.DEAD) == 3
        assert await q.purge("dead") == 0
        assert [j.id for j in await q.list_jobs()] == ids[3:]
        assert await q.purge("queued") == 2
        assert (await q.stats()).total == 0
        info = await other.job(theirs)
        assert info is not None
        assert info.state is pq.JobState.DEAD


async def test_purge_rejects_unknown_states(queue: pq.Queue) -> None:
    with pytest.raises(ValueError, match="state"):
        await queue.purge("gone")
    with pytest.raises(TypeError, match="state"):
        await queue.purge(None)  # type: ignore[arg-type]


async def test_clean_deletes_jobs_finished_before_retention(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with (
        pq.Queue(
            backend_url, name=queue_name, clock=clock, retention_seconds=100, lease_seconds=1000
        ) as q,
        pq.Queue(backend_url, name=queue_name + "-b", clock=clock, retention_seconds=100) as other,
    ):
        old = await q.put_many(["done", "dead", "cancelled"])
        theirs = await other.put("theirs")
        job = await q.get_nowait()
        assert job is not None
        await job.ack()
        job = await q.get_nowait()
        assert job is not None
        await job.fail()
        assert await q.cancel(old[2])
        job = await other.get_nowait()
        assert job is not None
        assert job.id == theirs
        await job.ack()
        clock.advance(50)
        recent = await q.put("recent")
        job = await q.get_nowait()
        assert job is not None
        assert job.id == recent
        await job.ack()
        waiting = await q.put("still queued")
        running_id = await q.put("still running", priority=1)
        running = await q.get_nowait()
        assert running is not None
        assert running.id == running_id
        clock.advance(51)  # the first four finished 101 s ago, "recent" 51 s ago
        assert await q.clean() == 4  # of every queue: "theirs" too
        for job_id in (*old, theirs):
            assert await q.job(job_id) is None
            assert await other.job(job_id) is None
        assert {j.id for j in await q.list_jobs()} == {waiting, running_id, recent}
        clock.advance(50)
        assert await q.clean() == 1
        assert await q.job(recent) is None
        assert await q.clean() == 0
        # active jobs are never cleaned, however old
        assert {j.id for j in await q.list_jobs()} == {waiting, running_id}
        await running.ack()
