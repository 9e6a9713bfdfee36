"""Pools: the concurrency limit, handler outcomes, timeouts, heartbeats and cancellation.

Each test runs on SQLite and PostgreSQL (``backend_url``). Every wait is bounded; handlers
signal the test through events rather than the test sleeping.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import anyio
import pytest

import persistq_async as pq
from tests.conftest import open_queue, pool_counted

from ._support import Gauge, info, records, run_in_other_loop

pytestmark = pytest.mark.timeout(60)


async def test_concurrency_limit_holds_exactly_under_load(queue: pq.Queue) -> None:
    concurrency, total = 4, 30
    ids = await queue.put_many([{"n": i} for i in range(total)])
    gauge = Gauge()
    gate = anyio.Event()
    leased_while_full: list[int] = []

    async def handler(job: pq.Job) -> int:
        gauge.enter()
        try:
            await gate.wait()
            for _ in range(3):  # yield so that other handlers could overlap if the limit leaked
                await anyio.lowlevel.checkpoint()
            return int(job.payload["n"])
        finally:
            gauge.leave()

    async with pq.Supervisor(grace=5) as sup:
        pool = await sup.add(queue, handler, concurrency=concurrency, job_timeout=10, name="load")
        with anyio.fail_after(10):
            await gauge.reached(concurrency).wait()
        # Full: the pool must not lease more than it can run (no local buffer of leased jobs).
        stats = await queue.stats()
        leased_while_full.append(stats.running)
        assert pool.active == concurrency
        assert stats.queued == total - concurrency
        gate.set()
        await queue.join(timeout=20)
        await pool_counted(lambda: pool.processed >= total)
        assert pool.processed == total
        assert pool.failed == 0
        assert pool.active == 0

    assert leased_while_full == [concurrency]
    assert gauge.peak == concurrency
    results = {(await info(queue, i)).result for i in ids}
    assert results == set(range(total))


async def test_return_acks_and_stores_the_result(queue: pq.Queue) -> None:
    job_id = await queue.put({"to": "a@example.org"})

    async def handler(job: pq.Job) -> dict[str, str]:
        return {"sent": job.payload["to"]}

    async with pq.Supervisor(grace=5) as sup:
        pool = await sup.add(queue, handler, concurrency=2, job_timeout=5)
        await queue.join(timeout=10)
        await pool_counted(lambda: pool.processed >= 1)
        assert (pool.processed, pool.failed) == (1, 0)

    found = await info(queue, job_id)
    assert found.state == pq.JobState.DONE
    assert found.result == {"sent": "a@example.org"}
    assert found.attempts == 1
    assert [(a.attempt, a.outcome) for a in found.history] == [(1, "acked")]


async def test_raise_nacks_with_the_traceback_on_the_attempt(queue: pq.Queue) -> None:
    job_id = await queue.put({"x": 1}, max_attempts=2)
    calls: list[int] = []

    async def exploding_handler(job: pq.Job) -> None:
        calls.append(job.attempts)
        raise ValueError(f"boom on attempt {job.attempts}")

    async with pq.Supervisor(grace=5) as sup:
        pool = await sup.add(queue, exploding_handler, concurrency=1, job_timeout=5)
        # backoff_base is 1 s by default: the retry waits about 0.5..1 s
        await queue.join(timeout=10)
        await pool_counted(lambda: pool.processed >= 2)
        assert (pool.processed, pool.failed) == (2, 2)

    assert calls == [1, 2]
    found = await info(queue, job_id)
    assert found.state == pq.JobState.DEAD
    assert [a.outcome for a in found.history] == ["nacked", "nacked"]
    for number, attempt in enumerate(found.history, start=1):
        assert attempt.error is not None
        assert attempt.error.startswith("Traceback (most recent call last)")
        assert "in exploding_handler" in attempt.error
        assert f"ValueError: boom on attempt {number}" in attempt.error
    assert found.last_error is not None
    assert "ValueError: boom on attempt 2" in found.last_error


async def test_retry_with_a_delay_reruns_at_the_chosen_time(queue: pq.Queue) -> None:
    job_id = await queue.put({"x": 1})
    started: list[float] = []
    first_nacked = anyio.Event()

    async def handler(job: pq.Job) -> str:
        started.append(anyio.current_time())
        if job.attempts == 1:
            first_nacked.set()
            raise pq.Retry(delay=0.5)
        return "second time lucky"

    async with pq.Supervisor(grace=5) as sup:
        pool = await sup.add(queue, handler, concurrency=1, job_timeout=5)
        with anyio.fail_after(5):
            await first_nacked.wait()
        await queue.join(timeout=10)
        await pool_counted(lambda: pool.processed >= 2)
        assert (pool.processed, pool.failed) == (2, 0)  # a retry request is not a failure

    assert len(started) == 2
    assert started[1] - started[0] >= 0.45
    found = await info(queue, job_id)
    assert found.state == pq.JobState.DONE
    assert found.result == "second time lucky"
    assert [a.outcome for a in found.history] == ["nacked", "acked"]


async def test_retry_delay_is_written_as_the_run_at(queue: pq.Queue) -> None:
    job_id = await queue.put({"x": 1})
    ran = anyio.Event()

    async def handler(job: pq.Job) -> None:
        ran.set()
        raise pq.Retry(delay=60)

    before = datetime.now(UTC).timestamp()
    async with pq.Supervisor(grace=5) as sup:
        await sup.add(queue, handler, concurrency=1)
        with anyio.fail_after(5):
            await ran.wait()
        await sup.remove(queue.name)  # the outcome is recorded before the pool stops

    found = await info(queue, job_id)
    assert found.state == pq.JobState.QUEUED
    assert found.attempts == 1
    assert 59 <= found.run_at.timestamp() - before <= 65


async def test_reject_dead_letters_at_once(queue: pq.Queue) -> None:
    job_id = await queue.put({"to": "nobody"}, max_attempts=5)

    async def handler(job: pq.Job) -> None:
        raise pq.Reject("bad address")

    async with pq.Supervisor(grace=5) as sup:
        pool = await sup.add(queue, handler, concurrency=1)
        await queue.join(timeout=10)
        await pool_counted(lambda: pool.processed >= 1)
        assert (pool.processed, pool.failed) == (1, 1)

    found = await info(queue, job_id)
    assert found.state == pq.JobState.DEAD
    assert found.attempts == 1  # not retried although 4 attempts were left
    assert [a.outcome for a in found.history] == ["failed"]
    assert found.last_error is not None
    assert "bad address" in found.last_error


async def test_hung_handler_is_cancelled_retried_then_dead(
    backend_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    cancelled: list[int] = []
    async with open_queue(backend_url, queue_name, backoff_base=0.05, backoff_max=0.1) as q:
        job_id = await q.put({"hang": True}, max_attempts=3)

        async def handler(job: pq.Job) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.append(job.attempts)

        start = anyio.current_time()
        async with pq.Supervisor(grace=5) as sup:
            pool = await sup.add(q, handler, concurrency=1, job_timeout=0.2)
            await q.join(timeout=10)
            await pool_counted(lambda: pool.processed >= 3)
            assert (pool.processed, pool.failed) == (3, 3)
        elapsed = anyio.current_time() - start

        found = await info(q, job_id)
    assert cancelled == [1, 2, 3]
    assert found.state == pq.JobState.DEAD
    assert [a.outcome for a in found.history] == ["nacked"] * 3
    for attempt in found.history:
        assert attempt.error is not None
        assert "timeout" in attempt.error
    assert elapsed < 5  # 3 x 0.2 s plus short backoffs
    timeouts = records(caplog, "job_timeout")
    assert [r.job_id for r in timeouts] == [job_id] * 3  # type: ignore[attr-defined]


async def test_heartbeat_keeps_a_long_job_from_being_redelivered(
    backend_url: str, queue_name: str
) -> None:
    lease = 0.6
    async with (
        open_queue(backend_url, queue_name, lease_seconds=lease) as q,
        open_queue(backend_url, queue_name, lease_seconds=lease) as rival,
    ):
        job_id = await q.put({"long": True})
        started = anyio.Event()

        async def handler(job: pq.Job) -> str:
            started.set()
            await anyio.sleep(1.5)  # the work itself: 2.5 leases long
            return "finished"

        async with pq.Supervisor(grace=5) as sup:
            await sup.add(q, handler, concurrency=1, job_timeout=10)
            with anyio.fail_after(5):
                await started.wait()
            # Another consumer keeps trying for longer than the lease; every claim also rescues
            # expired leases, so it would get the job if the heartbeat let its lease lapse.
            with pytest.raises(TimeoutError):  # noqa: PT012 - release only what was stolen
                stolen = await rival.get(timeout=1.2)
                await stolen.release()
            await q.join(timeout=5)

        found = await info(q, job_id)
    assert found.state == pq.JobState.DONE
    assert found.result == "finished"
    assert found.attempts == 1
    assert [a.outcome for a in found.history] == ["acked"]


async def test_cancel_of_a_running_job_cancels_its_handler_at_once(queue: pq.Queue) -> None:
    running = anyio.Event()
    stopped = anyio.Event()

    async def handler(job: pq.Job) -> str:
        if job.payload.get("quick"):
            return "quick"
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.set()
        return "unreachable"

    job_id = await queue.put({"slow": True})
    # A heartbeat far away: only the in-process cancel listener can stop the handler in time.
    async with pq.Supervisor(grace=5, heartbeat_interval=30) as sup:
        pool = await sup.add(queue, handler, concurrency=1)
        with anyio.fail_after(5):
            await running.wait()
        assert await queue.cancel(job_id) is True
        with anyio.fail_after(1):
            await stopped.wait()
        # The pool keeps working afterwards.
        quick = await queue.put({"quick": True})
        await queue.join(timeout=5)
        assert pool.active == 0

    found = await info(queue, job_id)
    assert found.state == pq.JobState.CANCELLED
    assert [a.outcome for a in found.history] == ["cancelled"]
    assert (await info(queue, quick)).state == pq.JobState.DONE


async def test_cancel_from_another_queue_object_on_the_same_database(
    backend_url: str, queue_name: str
) -> None:
    running = anyio.Event()
    stopped = anyio.Event()

    async def handler(job: pq.Job) -> None:
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.set()

    async with open_queue(backend_url, queue_name) as q:
        job_id = await q.put({"slow": True})
        async with pq.Supervisor(grace=5, heartbeat_interval=30) as sup:
            await sup.add(q, handler, concurrency=1)
            with anyio.fail_after(5):
                await running.wait()
            async with open_queue(backend_url, queue_name) as other:
                assert await other.cancel(job_id) is True
            with anyio.fail_after(1):
                await stopped.wait()
        found = await info(q, job_id)
    assert found.state == pq.JobState.CANCELLED
    assert [a.outcome for a in found.history] == ["cancelled"]


async def test_cancel_in_another_process_reaches_the_handler_through_the_heartbeat(
    backend_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    running = anyio.Event()
    stopped = anyio.Event()

    async def handler(job: pq.Job) -> None:
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.set()

    async def cancel_elsewhere(job_id: int) -> bool:
        async with open_queue(backend_url, queue_name) as other:
            return await other.cancel(job_id)

    async with open_queue(backend_url, queue_name) as q:
        job_id = await q.put({"slow": True})
        async with pq.Supervisor(grace=5, heartbeat_interval=0.1) as sup:
            pool = await sup.add(q, handler, concurrency=1)
            with anyio.fail_after(5):
                await running.wait()
            # Another event loop: no in-process listener hears it, only the database knows.
            assert await anyio.to_thread.run_sync(
                run_in_other_loop, lambda: cancel_elsewhere(job_id)
            )
            with anyio.fail_after(2):
                await stopped.wait()
            assert pool.failed == 0
        found = await info(q, job_id)
    assert found.state == pq.JobState.CANCELLED
    assert [a.outcome for a in found.history] == ["cancelled"]
    lost = [r for r in records(caplog, "lease_lost") if "lease lost" in r.getMessage()]
    assert lost
    assert lost[0].job_id == job_id  # type: ignore[attr-defined]


async def test_blocking_handler_is_reported_and_its_lease_not_extended(
    backend_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="persistq_async")
    lease = 0.6
    release = anyio.Event()
    started = anyio.Event()
    outcome: list[str] = []

    async def handler(job: pq.Job) -> str:
        if job.attempts > 1:
            return "second delivery"
        started.set()
        time.sleep(1.5)  # noqa: ASYNC251 - the subject: blocks the event loop past the watchdog's 1 s grace
        # ... and then ignores its timeout: the watchdog must give up on it.
        with anyio.CancelScope(shield=True):
            await release.wait()
        outcome.append("first delivery finished")
        return "first delivery"

    async with (
        open_queue(backend_url, queue_name, lease_seconds=lease) as q,
        open_queue(backend_url, queue_name, lease_seconds=30) as rival,
    ):
        job_id = await q.put({"blocking": True})
        # The rival's claim rescues the expired lease itself. The supervisor's rescuer is kept
        # out of the way: on PostgreSQL a rescue racing that claim can revoke the rival's fresh
        # lease (store._rescue's UPDATE does not re-check the expiry; see the report).
        async with pq.Supervisor(grace=5, rescue_interval=60) as sup:
            try:
                await sup.add(q, handler, concurrency=1, job_timeout=0.2)
                with anyio.fail_after(5):
                    await started.wait()
                # The lease must run out although the handler is still alive: a rival gets it.
                with anyio.fail_after(10):
                    second = await rival.get()
                execution = sup.pools[queue_name].executions[job_id]
                with anyio.fail_after(2):  # the watchdog ticks every 0.25 s; no event to wait on
                    while not execution.unresponsive:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                assert second.attempts == 2
                await second.ack("taken over")
            finally:
                release.set()  # the handler ignores cancellation: let it end in every case
            await q.join(timeout=5)
        found = await info(q, job_id)

    assert outcome == ["first delivery finished"]
    blocking = records(caplog, "job_blocking")
    assert any(getattr(r, "job_id", None) == job_id for r in blocking)
    assert any(str(job_id) in r.getMessage() for r in blocking)
    assert found.state == pq.JobState.DONE
    assert found.result == "taken over"  # the unresponsive handler's ack was refused
    assert [a.outcome for a in found.history] == ["expired", "acked"]


async def test_a_job_delivered_again_while_its_last_delivery_is_still_running(
    queue: pq.Queue,
) -> None:
    # The handler nacks its own job and carries on; the pool, with a slot free, claims the job
    # again at once. Both deliveries of the one job run side by side in the pool, and the first
    # to end must not take the other's place in the pool's books with it.
    second_started = anyio.Event()
    first_finished = anyio.Event()

    async def handler(job: pq.Job) -> str:
        if job.attempts == 1:
            await job.nack(delay=0)
            await second_started.wait()
            return "first"
        second_started.set()
        await first_finished.wait()
        return "second"

    async with pq.Supervisor() as sup:
        pool = await sup.add(queue, handler, concurrency=2)
        job_id = await queue.put({})
        await second_started.wait()
        await anyio.wait_all_tasks_blocked()  # the first delivery has ended
        assert pool.processed == 1
        assert list(pool.executions) == [job_id]  # the second delivery's, still running
        first_finished.set()
        await queue.join(timeout=10)
    # Leaving the supervisor raised nothing: the pool did not crash.
    await pool_counted(lambda: pool.processed >= 2)
    assert pool.processed == 2
    assert not pool.executions
    found = await info(queue, job_id)
    assert (found.state, found.result, found.attempts) == (pq.JobState.DONE, "second", 2)
