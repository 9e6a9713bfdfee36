"""get, get_nowait, wake-ups, async iteration, join and stats."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest

import persistq_async as pq
from tests.conftest import CLOCK_START, FakeClock


async def test_get_nowait_on_an_empty_queue_is_none(queue: pq.Queue) -> None:
    assert await queue.get_nowait() is None


async def test_get_times_out_with_builtin_timeout_error(queue: pq.Queue) -> None:
    start = anyio.current_time()
    with anyio.fail_after(3), pytest.raises(TimeoutError) as info:
        await queue.get(timeout=0.2)
    assert type(info.value) is TimeoutError
    assert anyio.current_time() - start >= 0.19
    assert queue.name in str(info.value)


async def test_get_with_zero_timeout_claims_a_ready_job_or_times_out(queue: pq.Queue) -> None:
    with pytest.raises(TimeoutError):
        await queue.get(timeout=0)
    await queue.put("x")
    job = await queue.get(timeout=0)
    assert job.payload == "x"


async def test_get_returns_a_ready_job_at_once(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    with anyio.fail_after(2):
        job = await queue.get()
    assert job.id == job_id


async def test_job_fields_on_delivery(cq: pq.Queue, clock: FakeClock) -> None:
    job_id = await cq.put({"k": "v"}, priority=4, max_attempts=3)
    clock.advance(1)
    job = await cq.get_nowait()
    assert job is not None
    assert job.id == job_id
    assert job.queue == cq.name
    assert job.payload == {"k": "v"}
    assert job.priority == 4
    assert job.attempts == 1
    assert job.max_attempts == 3
    assert job.enqueued_at == datetime.fromtimestamp(CLOCK_START, tz=UTC)
    assert job.lease_expires_at == datetime.fromtimestamp(CLOCK_START + 1 + 10, tz=UTC)
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.RUNNING
    assert info.attempts == 1
    assert info.lease_expires_at == job.lease_expires_at
    assert [(a.attempt, a.outcome) for a in info.history] == [(1, None)]


async def test_a_put_wakes_a_waiting_get_at_once(backend_url: str, queue_name: str) -> None:
    # A poll interval far longer than the bound: only the local wake-up can be in time.
    async with pq.Queue(backend_url, name=queue_name, poll_interval=30) as q:
        got: list[pq.Job] = []
        waiting = anyio.Event()

        async def consumer() -> None:
            waiting.set()
            got.append(await q.get(timeout=20))

        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await waiting.wait()
                # Let the consumer reach its wait before the put.
                for _ in range(20):
                    await anyio.lowlevel.checkpoint()
                job_id = await q.put("wake")
        assert [j.id for j in got] == [job_id]
        await got[0].ack()


async def test_a_put_through_another_queue_object_wakes_a_get(
    backend_url: str, queue_name: str
) -> None:
    async with (
        pq.Queue(backend_url, name=queue_name, poll_interval=30) as consumer_q,
        pq.Queue(backend_url, name=queue_name, poll_interval=30) as producer_q,
    ):
        got: list[pq.Job] = []

        async def consumer() -> None:
            got.append(await consumer_q.get(timeout=20))

        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                for _ in range(20):
                    await anyio.lowlevel.checkpoint()
                job_id = await producer_q.put("wake")
        assert [j.id for j in got] == [job_id]
        await got[0].ack()


async def test_a_put_to_another_queue_does_not_satisfy_a_get(
    backend_url: str, queue_name: str
) -> None:
    async with (
        pq.Queue(backend_url, name=queue_name, poll_interval=0.05) as q,
        pq.Queue(backend_url, name=queue_name + "-b") as other,
    ):
        await other.put("not yours")
        with pytest.raises(TimeoutError):
            await q.get(timeout=0.2)
        assert (await other.stats()).queued == 1


async def test_many_waiting_getters_each_get_one_job(queue: pq.Queue) -> None:
    got: list[int] = []

    async def consumer() -> None:
        job = await queue.get(timeout=5)
        got.append(job.id)
        await job.ack()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(consumer)
            await anyio.lowlevel.checkpoint()
            ids = await queue.put_many(range(5))
    assert sorted(got) == ids
    assert (await queue.stats()).done == 5


async def test_async_for_yields_leased_jobs(queue: pq.Queue) -> None:
    ids = await queue.put_many(["a", "b", "c"])
    seen: list[int] = []
    with anyio.fail_after(3):
        async for job in queue:
            assert isinstance(job, pq.Job)
            seen.append(job.id)
            await job.ack()
            if len(seen) == 3:
                break
    assert seen == ids
    assert (await queue.stats()).done == 3


async def test_async_for_waits_for_new_jobs(queue: pq.Queue) -> None:
    seen: list[object] = []

    async def producer() -> None:
        for n in range(3):
            await queue.put(n)

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            async for job in queue:
                async with job:
                    seen.append(job.payload)
                if len(seen) == 3:
                    break
    assert seen == [0, 1, 2]


async def test_join_returns_at_once_on_an_idle_queue(queue: pq.Queue) -> None:
    with anyio.fail_after(1):
        await queue.join()


async def test_join_waits_for_running_jobs_to_finish(queue: pq.Queue) -> None:
    ids = await queue.put_many(range(4))
    finished: list[int] = []

    async def worker() -> None:
        while (job := await queue.get_nowait()) is not None:
            await anyio.lowlevel.checkpoint()
            finished.append(job.id)
            await job.ack()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker)
            await queue.join()
            # join only returns once nothing is queued or running
            assert sorted(finished) == ids
    s = await queue.stats()
    assert (s.queued, s.running, s.done) == (0, 0, 4)


async def test_join_waits_for_a_job_held_by_another_task(queue: pq.Queue) -> None:
    await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    joined = anyio.Event()

    async def joiner() -> None:
        await queue.join()
        joined.set()

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(joiner)
            with anyio.move_on_after(0.2):
                await joined.wait()
            assert not joined.is_set()
            await job.ack()
            await joined.wait()


async def test_join_counts_delayed_jobs_and_times_out(queue: pq.Queue) -> None:
    await queue.put("later", delay=3600)
    with anyio.fail_after(3), pytest.raises(TimeoutError):
        await queue.join(timeout=0.2)


async def test_join_does_not_wait_for_other_queues(backend_url: str, queue_name: str) -> None:
    async with (
        pq.Queue(backend_url, name=queue_name) as q,
        pq.Queue(backend_url, name=queue_name + "-b") as other,
    ):
        await other.put("busy elsewhere")
        with anyio.fail_after(1):
            await q.join()


async def test_stats_counts_each_state(cq: pq.Queue, clock: FakeClock) -> None:
    s = await cq.stats()
    assert (s.queued, s.running, s.done, s.dead, s.cancelled, s.total) == (0, 0, 0, 0, 0, 0)
    await cq.put_many(range(6))
    await cq.put("delayed", delay=100)
    done, dead, nacked, running = [await cq.get_nowait() for _ in range(4)]
    assert done
    assert dead
    assert nacked
    assert running
    await done.ack()
    await dead.fail(error="bad")
    await nacked.nack(delay=5)
    cancelled_id = (await cq.list_jobs(state="queued"))[-1].id
    assert await cq.cancel(cancelled_id)
    s = await cq.stats()
    # queued: the 2 unclaimed plain jobs + the nacked one; the delayed one was cancelled
    assert (s.queued, s.running, s.done, s.dead, s.cancelled) == (3, 1, 1, 1, 1)
    assert s.total == 7
    assert s.queue == cq.name
