"""Flow control seen from pools: the on_dead hook, dead letters from handler outcomes, the cap
and the rate limit holding for the pools of one process, and pause stopping a pool.

Each test runs on SQLite and PostgreSQL (``backend_url``); the tests with several processes are
in ``test_flow_processes.py``.
"""

from __future__ import annotations

import logging

import anyio
import pytest

import persistq_async as pq
from tests.conftest import open_queue, pool_counted

from ._support import Gauge, info, records

pytestmark = pytest.mark.timeout(60)


async def test_on_dead_is_called_with_the_job_and_its_last_error(
    backend_url: str, queue_name: str
) -> None:
    dead_name = f"{queue_name}.dead"
    calls: list[tuple[int, int, str | None]] = []

    async def on_dead(job: pq.Job, error: str | None) -> None:
        calls.append((job.id, job.attempts, error))

    async def handler(job: pq.Job) -> None:
        if job.payload == "reject":
            raise pq.Reject("bad address")
        raise RuntimeError("smtp down")

    async with (
        open_queue(backend_url, queue_name, dead_letter_queue=dead_name, backoff_base=0) as q,
        open_queue(backend_url, dead_name) as dlq,
        pq.Supervisor(grace=5) as sup,
    ):
        retried = await q.put("retry", max_attempts=2)
        rejected = await q.put("reject", max_attempts=5)
        await sup.add(q, handler, concurrency=2, on_dead=on_dead)
        with anyio.fail_after(20):
            await q.join()
        # Both died, and the hook saw them after the move to the dead-letter queue.
        assert sorted(c[0] for c in calls) == sorted([retried, rejected])
        by_id = {c[0]: c for c in calls}
        assert by_id[retried][1] == 2
        assert "RuntimeError: smtp down" in (by_id[retried][2] or "")
        assert by_id[rejected][2] == "rejected: bad address"
        moved = {i.id: i for i in await dlq.list_jobs()}
        assert set(moved) == {retried, rejected}
        assert [a.outcome for a in moved[retried].history] == ["nacked", "nacked"]
        assert (await q.stats()).total == 0


async def test_a_failing_on_dead_hook_is_logged_and_the_job_kept(
    queue: pq.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    job_id = await queue.put("x", max_attempts=1)
    called = anyio.Event()

    async def on_dead(job: pq.Job, error: str | None) -> None:
        called.set()
        raise ValueError("the alerting service is down")

    async def handler(job: pq.Job) -> None:
        raise RuntimeError("boom")

    async with pq.Supervisor(grace=5) as sup:
        pool = await sup.add(queue, handler, on_dead=on_dead)
        with anyio.fail_after(10):
            await called.wait()
            await queue.join()
        await queue.put("the pool goes on", max_attempts=1)  # the hook did not stop the pool
        with anyio.fail_after(10):
            await queue.join()
        await pool_counted(lambda: pool.processed >= 2)
        assert pool.processed == 2
    found = await info(queue, job_id)
    assert found.state is pq.JobState.DEAD
    failures = records(caplog, "on_dead_failed")
    assert len(failures) == 2
    assert "the alerting service is down" in failures[0].getMessage()


async def test_on_dead_is_not_called_for_a_retry(queue: pq.Queue) -> None:
    calls: list[int] = []
    attempts: list[int] = []

    async def on_dead(job: pq.Job, error: str | None) -> None:
        calls.append(job.id)

    async def handler(job: pq.Job) -> None:
        attempts.append(job.attempts)
        if job.attempts < 2:
            raise pq.Retry(delay=0)

    await queue.put("x", max_attempts=3)
    async with pq.Supervisor(grace=5) as sup:
        await sup.add(queue, handler, on_dead=on_dead)
        with anyio.fail_after(10):
            await queue.join()
    assert (attempts, calls) == ([1, 2], [])


async def test_on_dead_must_be_an_async_function(queue: pq.Queue) -> None:
    def hook(job: pq.Job, error: str | None) -> None:
        pass

    async def handler(job: pq.Job) -> None:
        pass

    async with pq.Supervisor(grace=5) as sup:
        with pytest.raises(pq.ArgumentTypeError, match="on_dead"):
            await sup.add(queue, handler, on_dead=hook)  # type: ignore[arg-type]


async def test_max_running_holds_across_pools_of_one_process(
    backend_url: str, queue_name: str
) -> None:
    gauge = Gauge()

    async def handler(job: pq.Job) -> None:
        gauge.enter()
        try:
            await anyio.sleep(0.02)
        finally:
            gauge.leave()

    async with (
        open_queue(backend_url, queue_name, max_running=3) as a,
        open_queue(backend_url, queue_name) as b,
        pq.Supervisor(grace=5) as sup,
    ):
        await a.put_many(list(range(60)))
        await sup.add(a, handler, concurrency=10, name="a")
        await sup.add(b, handler, concurrency=10, name="b")
        with anyio.fail_after(30):
            await a.join()
    assert gauge.peak <= 3
    assert gauge.peak == 3  # the slots were used


async def test_pause_stops_a_pool_and_resume_restarts_it(queue: pq.Queue) -> None:
    done: list[int] = []
    started = anyio.Event()
    release = anyio.Event()
    slow_done = anyio.Event()

    async def handler(job: pq.Job) -> None:
        started.set()
        if job.payload == "slow":
            await release.wait()
        done.append(job.id)
        if job.payload == "slow":
            slow_done.set()

    async with pq.Supervisor(grace=5) as sup:
        slow = await queue.put("slow")
        await sup.add(queue, handler, concurrency=5)
        with anyio.fail_after(10):
            await started.wait()
        await queue.pause()
        later = await queue.put_many(["x", "y"])
        await anyio.sleep(0.3)
        assert (await queue.stats()).queued == 2  # the pool claims nothing while paused
        release.set()  # the running job finishes normally
        with anyio.fail_after(10):
            await slow_done.wait()
            await anyio.sleep(0.1)  # its ack commits
        assert slow in done
        assert (await queue.stats()).queued == 2
        await queue.resume()
        with anyio.fail_after(10):
            await queue.join()
    assert set(later) <= set(done)


async def test_rate_limited_pool_runs_at_the_rate(backend_url: str, queue_name: str) -> None:
    started: list[float] = []

    async def handler(job: pq.Job) -> None:
        started.append(anyio.current_time())

    async with (
        open_queue(backend_url, queue_name, rate_limit="20/s", rate_burst=2) as q,
        pq.Supervisor(grace=5) as sup,
    ):
        await q.put_many(list(range(32)))
        await sup.add(q, handler, concurrency=10)
        with anyio.fail_after(20):
            await q.join()
    span = started[-1] - started[0]
    # 2 at once from the full bucket, then 30 at 20/s: at least 1.5 s; not far beyond it.
    assert span >= 1.45, span
    assert span < 3.0, span
