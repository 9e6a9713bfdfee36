"""stats(window=...): counts, ready and scheduled, lag, and the window's deliveries, driven by a
fake clock so that every figure is known exactly."""

from __future__ import annotations

import pytest

import persistq_async as pq
from persistq_async.errors import ArgumentError, ArgumentTypeError
from tests.backends.conftest import FakeClock


async def test_an_empty_queue(cq: pq.Queue) -> None:
    s = await cq.stats()
    assert (s.queued, s.ready, s.scheduled, s.running, s.total) == (0, 0, 0, 0, 0)
    assert s.lag is None
    assert s.oldest_ready_age is None
    assert s.window_seconds == 60.0
    assert dict(s.finished) == {}
    assert s.throughput == 0.0
    assert s.retries == 0
    assert s.run_time_p50 is None
    assert s.wait_time_p99 is None


async def test_counts_lag_and_the_window(cq: pq.Queue, clock: FakeClock) -> None:
    a = await cq.put({"n": "a"})
    await cq.put({"n": "b"}, delay=100)
    c = await cq.put({"n": "c"})
    clock.advance(5)
    s = await cq.stats()
    assert (s.queued, s.ready, s.scheduled) == (3, 2, 1)
    assert s.lag == 5.0
    job = await cq.get_nowait()
    assert job is not None
    assert job.id == a
    clock.advance(2)
    await job.ack()  # ran 2 s
    job = await cq.get_nowait()
    assert job is not None
    assert job.id == c
    s = await cq.stats()
    assert (s.running, s.ready, s.lag) == (1, 0, None)
    clock.advance(1)
    await job.nack(error="try again")  # ran 1 s; backoff puts it 5 to 10 s ahead
    s = await cq.stats(window=60)
    assert (s.queued, s.ready, s.scheduled, s.done) == (2, 0, 2, 1)
    assert dict(s.finished) == {"acked": 1, "nacked": 1}
    assert s.retries == 1
    assert s.throughput == pytest.approx(1 / 60)
    assert (s.run_time_p50, s.run_time_p95, s.run_time_p99) == (1.0, 2.0, 2.0)
    assert (s.wait_time_p50, s.wait_time_p95, s.wait_time_p99) == (5.0, 7.0, 7.0)
    # a window that ends before them holds none of them
    clock.advance(120)
    s = await cq.stats(window=60)
    assert dict(s.finished) == {}
    assert s.run_time_p50 is None
    assert s.retries == 0
    assert (s.ready, s.scheduled) == (2, 0)
    oldest = min(i.run_at.timestamp() for i in await cq.list_jobs(state="queued"))
    assert s.lag == pytest.approx(clock.now - oldest)
    # a wider window still sees them
    s = await cq.stats(window=200)
    assert dict(s.finished) == {"acked": 1, "nacked": 1}


async def test_dead_failed_expired_and_cancelled_outcomes(cq: pq.Queue, clock: FakeClock) -> None:
    await cq.put({"n": 1}, max_attempts=1)
    job = await cq.get_nowait()
    assert job is not None
    await job.nack(error="no luck")  # the last attempt: dead
    await cq.put({"n": 2})
    job = await cq.get_nowait()
    assert job is not None
    await job.fail(error="rejected")
    await cq.put({"n": 3}, max_attempts=3)
    job = await cq.get_nowait()
    assert job is not None
    clock.advance(11)  # past the 10 s lease: the next claim rescues it, attempts left
    again = await cq.get_nowait()
    assert again is not None
    assert again.id == job.id
    assert await cq.cancel(again.id)
    s = await cq.stats()
    assert dict(s.finished) == {"dead": 1, "failed": 1, "expired": 1, "cancelled": 1}
    assert s.retries == 1  # the expiry, which queued the job again
    assert s.throughput == pytest.approx(2 / 60)  # the dead and the failed job
    assert (s.dead, s.cancelled) == (2, 1)


async def test_queues_do_not_mix(cq: pq.Queue, backend_url: str, queue_name: str) -> None:
    async with pq.Queue(backend_url, name=queue_name + "-other", clock=cq.store.clock) as other:
        await other.put({"x": 1})
        job = await other.get_nowait()
        assert job is not None
        await job.ack()
        assert (await cq.stats()).finished == {}
        assert (await other.stats()).finished == {"acked": 1}


async def test_bad_windows_are_refused(cq: pq.Queue) -> None:
    with pytest.raises(ArgumentError, match="window"):
        await cq.stats(window=0)
    with pytest.raises(ArgumentTypeError, match="window"):
        await cq.stats(window="60")  # type: ignore[arg-type]
