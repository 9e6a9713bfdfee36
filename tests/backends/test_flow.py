"""Flow control on each backend: pause and resume, rate limits, the running cap, dead letters.

The rate limit and the cap are driven by an injected clock, so the token counts are exact.
"""

from __future__ import annotations

import anyio
import pytest

import persistq_async as pq
from persistq_async.store import EXPIRED_ERROR
from tests.backends.conftest import FakeClock


def clocked(url: str, name: str, clock: FakeClock, **options: object) -> pq.Queue:
    options.setdefault("poll_interval", 0.05)
    options.setdefault("lease_seconds", 10)
    return pq.Queue(url, name=name, clock=clock, **options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- pause


async def test_paused_queue_takes_puts_and_gives_nothing(queue: pq.Queue) -> None:
    await queue.put_many([1, 2])
    await queue.pause()
    assert (await queue.stats()).paused is True
    await queue.put(3)  # puts are still taken
    jobs, next_due = await queue.claim(5)
    assert (jobs, next_due) == ([], None)
    assert await queue.get_nowait() is None
    with pytest.raises(TimeoutError):
        await queue.get(timeout=0.2)
    stats = await queue.stats()
    assert (stats.queued, stats.running) == (3, 0)
    await queue.resume()
    assert (await queue.stats()).paused is False
    jobs, _ = await queue.claim(5)
    assert sorted(j.payload for j in jobs) == [1, 2, 3]


async def test_pause_is_kept_in_the_database(backend_url: str, queue_name: str) -> None:
    async with pq.Queue(backend_url, name=queue_name) as q:
        await q.put("x")
        await q.pause()
    async with pq.Queue(backend_url, name=queue_name) as q:
        assert (await q.stats()).paused is True
        assert await q.get_nowait() is None
        await q.resume()
    async with pq.Queue(backend_url, name=queue_name) as q:
        assert (await q.stats()).paused is False
        job = await q.get(timeout=5)
        await job.ack()


async def test_pause_lets_running_jobs_finish(queue: pq.Queue) -> None:
    await queue.put_many(["a", "b"])
    first = await queue.get(timeout=5)
    await queue.pause()
    await first.extend(30)
    await first.ack("done")  # a running job finishes normally
    assert await queue.get_nowait() is None
    stats = await queue.stats()
    assert (stats.done, stats.queued) == (1, 1)


async def test_resume_wakes_a_waiting_get(backend_url: str, queue_name: str) -> None:
    """A consumer on another queue object waits through the pause and wakes on resume."""
    async with (
        pq.Queue(backend_url, name=queue_name, poll_interval=0.1) as admin,
        pq.Queue(backend_url, name=queue_name, poll_interval=0.1) as worker,
    ):
        await admin.pause()
        await admin.put("x")
        got: list[pq.Job] = []
        resumed_at: list[float] = []

        async def consume() -> None:
            got.append(await worker.get(timeout=10))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await anyio.sleep(0.5)
                assert got == []  # paused: nothing claimed for several poll intervals
                resumed_at.append(anyio.current_time())
                await admin.resume()
        waited = anyio.current_time() - resumed_at[0]
        # Within poll_interval on SQLite; on PostgreSQL the notification is at once. Both
        # bounds are loose for a loaded machine.
        assert waited < 1.0, waited
        await got[0].ack()


async def test_pause_reaches_a_pool_in_another_queue_object(
    backend_url: str, queue_name: str
) -> None:
    """A pool on another Queue object stops claiming once the pause committed."""
    claimed: list[int] = []
    first = anyio.Event()

    async def handler(job: pq.Job) -> None:
        claimed.append(job.id)
        first.set()

    async with (
        pq.Queue(backend_url, name=queue_name, poll_interval=0.05) as admin,
        pq.Queue(backend_url, name=queue_name, poll_interval=0.05) as worker,
        pq.Supervisor(grace=5) as sup,
    ):
        await sup.add(worker, handler, concurrency=4)
        await admin.put("before")
        with anyio.fail_after(10):
            await first.wait()
            await admin.join(timeout=10)
        await admin.pause()
        ids = await admin.put_many(["during"] * 5)
        await anyio.sleep(0.5)
        assert not set(ids) & set(claimed)
        await admin.resume()
        with anyio.fail_after(10):
            await admin.join()
        assert set(ids) <= set(claimed)


# ---------------------------------------------------------------------- rate limits


async def test_rate_limit_hands_out_the_burst_then_the_rate(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with clocked(backend_url, queue_name, clock, lease_seconds=1000) as q:
        await q.put_many(list(range(20)))
        await q.set_rate_limit("10/s", burst=3)
        assert (await q.stats()).rate_limit == "10/s"
        jobs, _ = await q.claim(20)
        assert len(jobs) == 3  # the full bucket
        jobs, next_due = await q.claim(20)
        assert jobs == []
        assert next_due == pytest.approx(clock.now + 0.1)  # the next token
        clock.advance(0.25)
        jobs, next_due = await q.claim(20)
        assert len(jobs) == 2
        assert next_due == pytest.approx(clock.now + 0.05)
        clock.advance(0.05)
        assert len((await q.claim(20))[0]) == 1
        clock.advance(100)  # a long idle time refills only up to the burst
        assert len((await q.claim(20))[0]) == 3
        await q.set_rate_limit(None)
        assert (await q.stats()).rate_limit is None
        assert len((await q.claim(20))[0]) == 11


async def test_rate_limit_is_shared_by_queue_objects(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with (
        clocked(backend_url, queue_name, clock, rate_limit="2/m") as a,
        clocked(backend_url, queue_name, clock, rate_limit="2/m") as b,
    ):
        await a.put_many(list(range(5)))
        # The default burst of 2/m is 1, and opening b with the same limit kept a's bucket.
        assert len((await a.claim(5))[0]) == 1
        assert len((await b.claim(5))[0]) == 0
        clock.advance(30)
        assert len((await b.claim(5))[0]) == 1
        assert len((await a.claim(5))[0]) == 0
        await b.set_rate_limit("2/m", burst=1)  # the same limit: the bucket is kept
        assert len((await a.claim(5))[0]) == 0
        await b.set_rate_limit("4/m", burst=2)  # a new limit starts full
        assert len((await a.claim(5))[0]) == 2


async def test_rate_limit_arguments_are_checked(queue: pq.Queue) -> None:
    with pytest.raises(pq.ArgumentError, match="limit: expected a count"):
        await queue.set_rate_limit("lots")
    with pytest.raises(pq.ArgumentError, match="burst: must be >= 1"):
        await queue.set_rate_limit("1/s", burst=0)
    with pytest.raises(pq.ArgumentTypeError, match="limit"):
        await queue.set_rate_limit(100)  # type: ignore[arg-type]
    with pytest.raises(pq.ArgumentError, match="burst"):
        await queue.set_rate_limit(None, burst=3)
    assert (await queue.stats()).rate_limit is None  # nothing was written


# ---------------------------------------------------------------------- max_running


async def test_max_running_caps_the_claims(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with clocked(backend_url, queue_name, clock, max_running=2) as q:
        assert (await q.stats()).max_running == 2
        await q.put_many(list(range(6)))
        first, _ = await q.claim(5)
        assert len(first) == 2
        jobs, next_due = await q.claim(5)
        assert jobs == []
        assert next_due == clock.now + 10  # a lease running out frees a slot
        await first[0].ack()
        second, _ = await q.claim(5)
        assert len(second) == 1
        # Leases that expired stop counting once rescued (the claim rescues first).
        clock.advance(10)
        third, _ = await q.claim(5)
        assert len(third) == 2
        assert (await q.stats()).running == 2
        await q.set_max_running(1)  # lower than what runs: nothing new until below it
        assert (await q.claim(5))[0] == []
        await q.set_max_running(None)
        assert (await q.stats()).max_running is None
        assert len((await q.claim(5))[0]) == 5 - 2


async def test_max_running_and_rate_limit_together(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with clocked(backend_url, queue_name, clock, max_running=3, rate_limit="100/s") as q:
        await q.put_many(list(range(30)))
        assert len((await q.claim(30))[0]) == 3  # the cap binds before the burst of 10
        stats = await q.stats()
        assert (stats.max_running, stats.rate_limit) == (3, "100/s")


async def test_max_running_argument_is_checked(queue: pq.Queue) -> None:
    with pytest.raises(pq.ArgumentError, match="limit: must be >= 1"):
        await queue.set_max_running(0)
    with pytest.raises(pq.ArgumentTypeError):
        await queue.set_max_running("3")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- dead letters


async def test_a_job_that_dies_moves_to_the_dead_letter_queue(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    dead_name = f"{queue_name}.dead"
    async with (
        clocked(backend_url, queue_name, clock, dead_letter_queue=dead_name, max_attempts=2) as q,
        clocked(backend_url, dead_name, clock) as dlq,
    ):
        nacked, failed, expired = await q.put_many(["nack", "fail", "expire"])
        for _ in range(2):
            jobs, _ = await q.claim(3)
            for job in jobs:
                if job.payload == "nack":
                    await job.nack(delay=0, error="smtp down")
                elif job.payload == "fail":
                    await job.fail(error="bad address")
            clock.advance(10)  # the "expire" lease runs out; the next claim rescues it
        await q.claim(1)
        assert (await q.stats()).total == 0
        assert await q.job(nacked) is None
        infos = {i.id: i for i in await dlq.list_jobs()}
        assert set(infos) == {nacked, failed, expired}
        for info in infos.values():
            assert info.state is pq.JobState.QUEUED
            assert info.queue == dead_name
            assert info.attempts == 0
        # History and last error come along.
        assert [a.outcome for a in infos[nacked].history] == ["nacked", "nacked"]
        assert infos[nacked].last_error == "smtp down"
        assert [a.outcome for a in infos[failed].history] == ["failed"]
        assert infos[failed].last_error == "bad address"
        assert [a.outcome for a in infos[expired].history] == ["expired", "expired"]
        assert infos[expired].last_error == EXPIRED_ERROR
        job = await dlq.get(timeout=5)
        assert job.attempts == 1
        await job.ack()


async def test_nack_reports_dead_for_a_dead_lettered_job(backend_url: str, queue_name: str) -> None:
    async with pq.Queue(
        backend_url, name=queue_name, dead_letter_queue=f"{queue_name}.dead", max_attempts=1
    ) as q:
        await q.put("x")
        job = await q.get(timeout=5)
        state = await q.store.nack(job.id, job.lease_token, 0.0, "boom")
        assert state is pq.JobState.DEAD


async def test_dead_letter_keeps_a_job_dead_when_its_dedupe_key_is_taken(
    backend_url: str, queue_name: str
) -> None:
    dead_name = f"{queue_name}.dead"
    async with (
        pq.Queue(backend_url, name=queue_name, dead_letter_queue=dead_name) as q,
        pq.Queue(backend_url, name=dead_name) as dlq,
    ):
        held = await dlq.put("holder", dedupe_key="k")
        job_id = await q.put("x", dedupe_key="k")
        job = await q.get(timeout=5)
        await job.fail(error="no")
        info = await q.job(job_id)
        assert info is not None
        assert info.state is pq.JobState.DEAD  # not moved: the key is held there
        assert [i.id for i in await dlq.list_jobs()] == [held]


async def test_without_a_dead_letter_queue_a_job_stays_dead(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    job = await queue.get(timeout=5)
    await job.fail(error="no")
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DEAD


async def test_dead_letter_queue_set_at_run_time(backend_url: str, queue_name: str) -> None:
    dead_name = f"{queue_name}.dead"
    async with (
        pq.Queue(backend_url, name=queue_name) as q,
        pq.Queue(backend_url, name=dead_name) as dlq,
    ):
        with pytest.raises(pq.ArgumentError, match="own dead-letter queue"):
            await q.set_dead_letter_queue(queue_name)
        await q.set_dead_letter_queue(dead_name)
        first = await q.put("x")
        await (await q.get(timeout=5)).fail(error="no")
        assert [i.id for i in await dlq.list_jobs()] == [first]
        await q.set_dead_letter_queue(None)
        second = await q.put("y")
        await (await q.get(timeout=5)).fail(error="no")
        info = await q.job(second)
        assert info is not None
        assert info.state is pq.JobState.DEAD


# ---------------------------------------------------------------------- cancellation


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 8, 13, 21])
async def test_cancelled_get_on_a_capped_rate_limited_queue_hands_back(
    backend_url: str, queue_name: str, k: int
) -> None:
    from tests.backends.test_cancellation import cancel_after

    async with pq.Queue(
        backend_url, name=queue_name, poll_interval=0.05, max_running=1, rate_limit="1000/s"
    ) as q:
        job_id = await q.put("x")
        got = await cancel_after(k, lambda: q.get(timeout=5))
        held = [j for j in got if isinstance(j, pq.Job)]
        running = [i.id for i in await q.list_jobs(state="running")]
        assert running == [j.id for j in held]
        if held:
            await held[0].ack()
        else:
            # The slot the cancelled claim took is free again.
            job = await q.get(timeout=5)
            assert job.id == job_id
            await job.ack()
        assert (await q.stats()).done == 1


# ---------------------------------------------------------------------- migration


async def test_a_version_1_database_is_migrated(v1_url: str) -> None:
    # The first release's database (tests/conftest.py: v1_url) gains the settings table.
    async with pq.Queue(v1_url, name="legacy", max_running=2) as q:
        stats = await q.stats()
        assert (stats.queued, stats.max_running, stats.paused) == (3, 2, False)
        await q.pause()
        assert await q.get_nowait() is None
        await q.resume()
        job = await q.get(timeout=5)
        assert job.payload["n"] in (4, 5)  # a ready job of the old database (3 is delayed)
        await job.ack()
