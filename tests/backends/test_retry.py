"""nack, backoff, dead after max_attempts, fail, ``async with job`` and the audit trail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

import persistq_async as pq
from tests.conftest import CLOCK_START, FakeClock


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(CLOCK_START + seconds, tz=UTC)


async def test_nack_with_delay_retries_after_it(cq: pq.Queue, clock: FakeClock) -> None:
    job_id = await cq.put("x")
    job = await cq.get_nowait()
    assert job is not None
    await job.nack(delay=30, error="smtp down")
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.QUEUED
    assert info.run_at == at(30)
    assert info.last_error == "smtp down"
    assert info.lease_expires_at is None
    assert await cq.get_nowait() is None
    clock.advance(29)
    assert await cq.get_nowait() is None
    clock.advance(1)
    again = await cq.get_nowait()
    assert again is not None
    assert again.id == job_id
    assert again.attempts == 2


async def test_nack_with_timedelta_delay(cq: pq.Queue, clock: FakeClock) -> None:
    job_id = await cq.put("x")
    job = await cq.get_nowait()
    assert job is not None
    await job.nack(delay=timedelta(seconds=7))
    info = await cq.job(job_id)
    assert info is not None
    assert info.run_at == at(7)


async def test_nack_with_zero_delay_is_ready_at_once(cq: pq.Queue) -> None:
    await cq.put("x")
    job = await cq.get_nowait()
    assert job is not None
    await job.nack(delay=0)
    again = await cq.get_nowait()
    assert again is not None
    assert again.attempts == 2


async def test_nack_without_delay_backs_off_exponentially(cq: pq.Queue, clock: FakeClock) -> None:
    # cq: backoff_base=10; attempt n waits in [base * 2**(n-1) / 2, base * 2**(n-1)].
    job_id = await cq.put("x", max_attempts=10)
    for attempt in (1, 2, 3):
        job = await cq.get_nowait()
        assert job is not None
        assert job.attempts == attempt
        await job.nack(error=f"try {attempt}")
        info = await cq.job(job_id)
        assert info is not None
        wait = info.run_at.timestamp() - clock.now
        full = 10 * 2 ** (attempt - 1)
        assert full / 2 <= wait <= full
        assert await cq.get_nowait() is None
        clock.advance(full)


async def test_backoff_is_capped_by_backoff_max(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with pq.Queue(
        backend_url, name=queue_name, clock=clock, backoff_base=3, backoff_max=4
    ) as q:
        job_id = await q.put("x")
        job = await q.get_nowait()
        assert job is not None
        await job.nack(delay=0)
        job = await q.get_nowait()
        assert job is not None
        assert job.attempts == 2
        await job.nack()  # uncapped: 3 * 2 = 6, drawn from [3, 6]
        info = await q.job(job_id)
        assert info is not None
        assert 2 <= info.run_at.timestamp() - clock.now <= 4


async def test_nack_on_the_last_attempt_makes_the_job_dead(cq: pq.Queue) -> None:
    job_id = await cq.put("x", max_attempts=3)
    for attempt in (1, 2, 3):
        job = await cq.get_nowait()
        assert job is not None
        assert job.attempts == attempt
        await job.nack(delay=0, error=f"boom {attempt}")
    assert await cq.get_nowait() is None
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DEAD
    assert info.attempts == 3
    assert info.last_error == "boom 3"
    assert info.finished_at is not None
    assert [(a.attempt, a.outcome, a.error) for a in info.history] == [
        (1, "nacked", "boom 1"),
        (2, "nacked", "boom 2"),
        (3, "nacked", "boom 3"),
    ]
    s = await cq.stats()
    assert (s.queued, s.dead) == (0, 1)


async def test_max_attempts_one_means_no_retry(cq: pq.Queue) -> None:
    job_id = await cq.put("x", max_attempts=1)
    job = await cq.get_nowait()
    assert job is not None
    await job.nack(delay=0)
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DEAD


async def test_fail_makes_the_job_dead_at_once(cq: pq.Queue, clock: FakeClock) -> None:
    job_id = await cq.put("x", max_attempts=5)
    job = await cq.get_nowait()
    assert job is not None
    clock.advance(3)
    await job.fail(error="bad address")
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DEAD
    assert info.attempts == 1
    assert info.last_error == "bad address"
    assert info.finished_at == at(3)
    assert info.lease_expires_at is None
    assert [(a.outcome, a.error, a.finished_at) for a in info.history] == [
        ("failed", "bad address", at(3))
    ]
    clock.advance(1000)
    assert await cq.get_nowait() is None


async def test_ack_stores_the_result(cq: pq.Queue, clock: FakeClock) -> None:
    job_id = await cq.put("x")
    job = await cq.get_nowait()
    assert job is not None
    clock.advance(2)
    await job.ack({"sent": True, "n": [1, 2]})
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DONE
    assert info.result == {"sent": True, "n": [1, 2]}
    assert info.finished_at == at(2)
    assert info.lease_expires_at is None
    assert [(a.attempt, a.outcome, a.started_at, a.finished_at) for a in info.history] == [
        (1, "acked", at(0), at(2))
    ]


async def test_ack_with_an_unencodable_result_keeps_the_lease(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    with pytest.raises(pq.SerializationError):
        await job.ack({1, 2})
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.RUNNING
    await job.ack("fine")
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DONE


async def test_long_errors_are_cut(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    await job.fail(error="e" * 100_000)
    info = await queue.job(job_id)
    assert info is not None
    assert info.last_error is not None
    assert 100 < len(info.last_error) <= 10_000


async def test_error_may_be_an_exception(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    await job.nack(delay=0, error=ValueError("bad value"))
    info = await queue.job(job_id)
    assert info is not None
    assert "bad value" in (info.last_error or "")


# --- async with job ------------------------------------------------------------------------------


async def test_async_with_acks_on_a_clean_exit(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    async with job as entered:
        assert entered is job
    assert job.finished
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DONE
    assert [a.outcome for a in info.history] == ["acked"]


async def test_async_with_nacks_and_reraises_on_an_error(cq: pq.Queue) -> None:
    job_id = await cq.put("x")
    job = await cq.get_nowait()
    assert job is not None
    with pytest.raises(ZeroDivisionError):
        async with job:
            1 / 0  # noqa: B018
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.QUEUED
    assert info.attempts == 1
    assert "ZeroDivisionError" in (info.last_error or "")
    assert [a.outcome for a in info.history] == ["nacked"]
    assert info.run_at > info.enqueued_at  # retried with backoff, not at once


async def test_async_with_error_on_the_last_attempt_makes_the_job_dead(cq: pq.Queue) -> None:
    job_id = await cq.put("x", max_attempts=1)
    job = await cq.get_nowait()
    assert job is not None
    with pytest.raises(RuntimeError, match="nope"):
        async with job:
            raise RuntimeError("nope")
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DEAD


async def test_async_with_leaves_an_explicit_outcome_alone(cq: pq.Queue) -> None:
    job_id = await cq.put("x")
    job = await cq.get_nowait()
    assert job is not None
    async with job:
        await job.fail(error="decided inside")
    info = await cq.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DEAD
    assert [a.outcome for a in info.history] == ["failed"]


async def test_async_with_hands_the_lease_back_on_cancellation(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    entered = anyio.Event()

    async def handler() -> None:
        async with job:
            entered.set()
            await anyio.sleep_forever()

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(handler)
            await entered.wait()
            tg.cancel_scope.cancel()
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.QUEUED
    assert info.attempts == 0  # a handed-back lease is not counted
    assert [(a.attempt, a.outcome) for a in info.history] == [(1, "released")]
    again = await queue.get_nowait()
    assert again is not None
    assert again.id == job_id
    assert again.attempts == 1
    await again.ack()
    info = await queue.job(job_id)
    assert info is not None
    assert [(a.attempt, a.outcome) for a in info.history] == [(1, "released"), (1, "acked")]


async def test_release_is_idempotent_and_not_counted(queue: pq.Queue) -> None:
    job_id = await queue.put("x", max_attempts=1)
    job = await queue.get_nowait()
    assert job is not None
    await job.release()
    await job.release()
    with pytest.raises(pq.JobAlreadyFinished):
        await job.ack()
    again = await queue.get_nowait()
    assert again is not None
    assert again.id == job_id
    assert again.attempts == 1


async def test_history_records_every_outcome(cq: pq.Queue, clock: FakeClock) -> None:
    job_id = await cq.put("x", max_attempts=10)
    job = await cq.get_nowait()
    assert job is not None
    await job.nack(delay=0, error="first")  # attempt 1: nacked
    job = await cq.get_nowait()
    assert job is not None
    clock.advance(11)  # attempt 2: expired
    job = await cq.get_nowait()
    assert job is not None
    await job.release()  # attempt 3 handed back: released, not counted
    job = await cq.get_nowait()
    assert job is not None
    await job.fail(error="last")  # attempt 3 again: failed
    await cq.requeue(job_id)
    job = await cq.get_nowait()
    assert job is not None
    assert job.attempts == 1
    assert await cq.cancel(job_id)  # attempt 1 after requeue: cancelled
    await cq.requeue(job_id)
    job = await cq.get_nowait()
    assert job is not None
    await job.ack()
    info = await cq.job(job_id)
    assert info is not None
    assert [(a.attempt, a.outcome) for a in info.history] == [
        (1, "nacked"),
        (2, "expired"),
        (3, "released"),
        (3, "failed"),
        (1, "cancelled"),
        (1, "acked"),
    ]
    assert [a.error for a in info.history][:2] == ["first", info.history[1].error]
    assert info.history[3].error == "last"
    for a in info.history:
        assert a.started_at.tzinfo is not None
        assert a.finished_at is not None
        assert a.finished_at >= a.started_at
