"""Leases: expiry and re-delivery, fencing by lease token, extend, acting twice."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest

import persistq_async as pq
from tests.conftest import CLOCK_START, FakeClock


async def test_expired_lease_is_redelivered_with_one_more_attempt(
    cq: pq.Queue, clock: FakeClock
) -> None:
    job_id = await cq.put("x")
    first = await cq.get_nowait()
    assert first is not None
    assert first.attempts == 1
    clock.advance(9.9)
    assert await cq.get_nowait() is None  # the lease still holds
    clock.advance(0.2)
    second = await cq.get_nowait()
    assert second is not None
    assert second.id == job_id
    assert second.attempts == 2
    assert second.lease_token != first.lease_token
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.RUNNING
    assert info.attempts == 2
    assert "lease expired" in (info.last_error or "")
    assert [(a.attempt, a.outcome) for a in info.history] == [(1, "expired"), (2, None)]
    assert info.history[0].finished_at == datetime.fromtimestamp(CLOCK_START + 10.1, tz=UTC)


async def test_stale_holder_cannot_finish_the_job(cq: pq.Queue, clock: FakeClock) -> None:
    job_id = await cq.put("x")
    stale = await cq.get_nowait()
    assert stale is not None
    clock.advance(11)
    fresh = await cq.get_nowait()
    assert fresh is not None
    assert fresh.id == job_id
    for act in (stale.ack, stale.fail, stale.nack):
        with pytest.raises(pq.LeaseLost):
            await act()
    with pytest.raises(pq.LeaseLost):
        await stale.extend(30)
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.RUNNING
    await fresh.ack("ok")
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DONE
    assert info.result == "ok"


async def test_expired_lease_without_a_new_taker_still_refuses_the_ack(
    cq: pq.Queue, clock: FakeClock, backend_url: str
) -> None:
    job_id = await cq.put("x")
    job = await cq.get_nowait()
    assert job is not None
    clock.advance(11)
    # A claim on any queue of the database rescues expired leases, even one that takes nothing.
    async with pq.Queue(backend_url, name=cq.name + "-other", clock=clock) as other:
        assert await other.get_nowait() is None
    with pytest.raises(pq.LeaseLost, match="expired"):
        await job.ack()
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.QUEUED
    assert [a.outcome for a in info.history] == ["expired"]


async def test_expired_lease_on_the_last_attempt_makes_the_job_dead(
    cq: pq.Queue, clock: FakeClock
) -> None:
    job_id = await cq.put("x", max_attempts=2)
    for _ in range(2):
        job = await cq.get_nowait()
        assert job is not None
        clock.advance(11)
    assert await cq.get_nowait() is None
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DEAD
    assert info.attempts == 2
    assert info.finished_at is not None
    assert [a.outcome for a in info.history] == ["expired", "expired"]
    assert (await cq.stats()).dead == 1


async def test_a_stale_ack_among_concurrent_acks_is_refused_alone(
    cq: pq.Queue, clock: FakeClock
) -> None:
    # Acks that meet in one write batch are applied together (SQLite): one stale among them
    # must be refused on its own, and every other one applied, with one attempt row each.
    await cq.put("taken twice")
    stale = await cq.get_nowait()
    assert stale is not None
    clock.advance(11)
    for i in range(4):
        await cq.put(i)
    fresh, _ = await cq.claim(5)
    assert len(fresh) == 5
    outcomes: dict[int, BaseException | None] = {}

    async def ack(key: int, job: pq.Job) -> None:
        try:
            await job.ack(key)
            outcomes[key] = None
        except pq.PersistQError as exc:
            outcomes[key] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(ack, -1, stale)
        for key, job in enumerate(fresh[1:], start=1):
            tg.start_soon(ack, key, job)
    assert isinstance(outcomes.pop(-1), pq.LeaseLost)
    await ack(0, fresh[0])  # the stale delivery's job, acked by its current holder
    assert outcomes == dict.fromkeys(range(5))
    for key, job in enumerate(fresh):
        info = await cq.job(job.id)
        assert info is not None
        assert (info.state, info.result) == (pq.JobState.DONE, key)
        assert [a.outcome for a in info.history].count("acked") == 1


async def test_ack_twice_raises_job_already_finished(queue: pq.Queue) -> None:
    await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    await job.ack()
    assert job.finished
    for act in (job.ack, job.nack, job.fail):
        with pytest.raises(pq.JobAlreadyFinished):
            await act()
    with pytest.raises(pq.JobAlreadyFinished):
        await job.extend(5)


@pytest.mark.parametrize("first", ["nack", "fail"])
async def test_any_second_outcome_raises_job_already_finished(queue: pq.Queue, first: str) -> None:
    job_id = await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    await (job.nack(delay=100) if first == "nack" else job.fail())
    with pytest.raises(pq.JobAlreadyFinished):
        await job.ack()
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is (pq.JobState.QUEUED if first == "nack" else pq.JobState.DEAD)


async def test_extend_moves_the_lease_and_keeps_the_job(cq: pq.Queue, clock: FakeClock) -> None:
    job_id = await cq.put("x")
    job = await cq.get_nowait()
    assert job is not None
    assert job.lease_expires_at == datetime.fromtimestamp(CLOCK_START + 10, tz=UTC)
    clock.advance(5)
    await job.extend(100)
    expected = datetime.fromtimestamp(CLOCK_START + 105, tz=UTC)
    assert job.lease_expires_at == expected
    info = await cq.job(job_id)
    assert info is not None
    assert info.lease_expires_at == expected
    clock.advance(50)  # far past the first lease
    assert await cq.get_nowait() is None
    await job.ack()
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DONE
    assert [a.outcome for a in info.history] == ["acked"]


async def test_extend_can_shorten_the_lease(cq: pq.Queue, clock: FakeClock) -> None:
    await cq.put("x")
    job = await cq.get_nowait()
    assert job is not None
    await job.extend(1)
    clock.advance(2)
    again = await cq.get_nowait()
    assert again is not None
    assert again.id == job.id
    assert again.attempts == 2


async def test_lease_seconds_option_sets_the_lease(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with pq.Queue(backend_url, name=queue_name, clock=clock, lease_seconds=2.5) as q:
        await q.put("x")
        job = await q.get_nowait()
        assert job is not None
        assert job.lease_expires_at == datetime.fromtimestamp(CLOCK_START + 2.5, tz=UTC)


async def test_a_job_is_never_leased_twice_at_once(queue: pq.Queue) -> None:
    ids = await queue.put_many(range(30))
    got: list[int] = []

    async def consumer() -> None:
        while (job := await queue.get_nowait()) is not None:
            got.append(job.id)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(consumer)
    assert sorted(got) == ids
    assert (await queue.stats()).running == 30


async def test_a_job_is_never_leased_twice_by_two_queue_objects(
    backend_url: str, queue_name: str
) -> None:
    async with (
        pq.Queue(backend_url, name=queue_name) as a,
        pq.Queue(backend_url, name=queue_name) as b,
    ):
        ids = await a.put_many(range(20))
        got: list[int] = []

        async def consumer(q: pq.Queue) -> None:
            while (job := await q.get_nowait()) is not None:
                got.append(job.id)
                await job.ack()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for q in (a, b, a, b):
                    tg.start_soon(consumer, q)
        assert sorted(got) == ids
        assert (await a.stats()).done == 20
