"""The dashboard's reads in the store, on each backend: every queue's counts and ready jobs,
attempts per minute, and keyset pages newest first with a priority filter."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

import persistq_async as pq
from persistq_async.store import dashboard
from persistq_async.store.dashboard import QueueSummary
from tests.backends.conftest import FakeClock


async def summaries(q: pq.Queue, now: float) -> list[QueueSummary]:
    return await q.store.read(partial(dashboard.queue_summaries, now=now), "reading queues")


def mine(found: list[QueueSummary], *names: str) -> dict[str, QueueSummary]:
    """The summaries of this test's queues (a PostgreSQL database is shared by the suite)."""
    return {s.queue: s for s in found if s.queue in names}


async def test_queue_summaries_count_every_queue_and_its_ready_jobs(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    other = queue_name + "-b"
    async with (
        pq.Queue(backend_url, name=queue_name, clock=clock) as q,
        pq.Queue(backend_url, name=other, clock=clock) as r,
    ):
        await q.put({"n": 1})
        clock.advance(5)
        await q.put({"n": 2})
        await q.put({"n": 3}, delay=60)
        job = await q.get_nowait()
        assert job is not None
        await job.ack()
        await r.put({"n": 4})
        await r.cancel(await r.put({"n": 5}))
        clock.advance(10)
        found = mine(await summaries(q, clock.now), queue_name, other)
    a, b = found[queue_name], found[other]
    assert a.counts[pq.JobState.QUEUED] == 2
    assert a.counts[pq.JobState.DONE] == 1
    assert a.ready == 1  # the delayed one is not ready
    assert a.oldest_ready_at == pytest.approx(clock.now - 10)
    assert b.counts[pq.JobState.CANCELLED] == 1
    assert b.ready == 1
    assert sorted(found) == [queue_name, other]


async def test_throughput_buckets_attempts_by_minute_queue_and_outcome(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with pq.Queue(backend_url, name=queue_name, clock=clock, max_attempts=5) as q:
        start = clock.now
        await q.put_many([{"n": i} for i in range(3)])
        for _ in range(2):
            job = await q.get_nowait()
            assert job is not None
            await job.ack()
        clock.advance(125)  # two minutes and a bit later
        job = await q.get_nowait()
        assert job is not None
        await job.nack(delay=0, error="boom")
        found = await q.store.read(
            partial(dashboard.throughput, since=start, bucket_seconds=60.0, buckets=4), "t"
        )
    assert found.buckets == 4
    assert found.counts[queue_name]["acked"] == [2, 0, 0, 0]
    assert found.counts[queue_name]["nacked"] == [0, 0, 1, 0]


async def test_job_pages_walk_newest_first_by_keyset_with_filters(
    backend_url: str, queue_name: str
) -> None:
    async with pq.Queue(backend_url, name=queue_name) as q:
        low = await q.put_many([{"n": i} for i in range(7)])
        high = await q.put_many([{"n": i} for i in range(3)], priority=9)
        kwargs = {"queue": queue_name, "state": pq.JobState.QUEUED, "limit": 3}

        async def job_page(**more: Any) -> dashboard.JobPage:
            return await q.store.read(partial(dashboard.job_page, **more), "listing jobs")

        first = await job_page(priority=0, before_id=None, after_id=None, **kwargs)
        assert [r.id for r in first.records] == low[::-1][:3]
        assert (first.has_older, first.has_newer) == (True, False)
        second = await job_page(priority=0, before_id=first.records[-1].id, after_id=None, **kwargs)
        assert [r.id for r in second.records] == low[::-1][3:6]
        assert (second.has_older, second.has_newer) == (True, True)
        last = await job_page(priority=0, before_id=second.records[-1].id, after_id=None, **kwargs)
        assert [r.id for r in last.records] == [low[0]]
        assert (last.has_older, last.has_newer) == (False, True)
        back = await job_page(priority=0, before_id=None, after_id=low[0], **kwargs)
        assert [r.id for r in back.records] == [r.id for r in second.records]
        assert (back.has_older, back.has_newer) == (True, True)
        nines = await job_page(priority=9, before_id=None, after_id=None, **kwargs)
        assert [r.id for r in nines.records] == high[::-1]
        assert (nines.has_older, nines.has_newer) == (False, False)
        every = await job_page(
            queue=None, state=None, priority=None, before_id=None, after_id=None, limit=500
        )
        assert set(low + high) <= {r.id for r in every.records}
