"""Events for observers: what the queue, jobs, pools and supervisor tell, that an observer that
raises disturbs nothing, and that nothing is built when nobody listens."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import persistq_async as pq
from persistq_async import metrics
from persistq_async.metrics import Event, EventKind, JobEvent, PoolEvent
from tests.conftest import open_queue
from tests.integration._support import records

K = EventKind


@pytest.fixture
def events() -> Iterator[list[Event]]:
    seen: list[Event] = []
    metrics.add_observer(seen.append)
    try:
        yield seen
    finally:
        metrics.remove_observer(seen.append)
    assert not metrics.hub.observed


def _of(events: list[Event], job_id: int) -> list[EventKind]:
    return [e.kind for e in events if isinstance(e, JobEvent) and e.job_id == job_id]


class _CrashOnce(pq.Queue):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crashes = 1

    async def claim(
        self, limit: int, *, lease_seconds: float | None = None
    ) -> tuple[list[pq.Job], float | None]:
        if self.crashes:
            self.crashes -= 1
            raise pq.DatabaseError("claiming failed (simulated)")
        return await super().claim(limit, lease_seconds=lease_seconds)


async def test_the_life_of_jobs_and_pools_as_events(
    backend_url: str, queue_name: str, events: list[Event]
) -> None:
    async with _CrashOnce(
        backend_url, name=queue_name, poll_interval=0.05, max_attempts=2, backoff_base=0.01
    ) as q:
        ok, flaky, rejected, slow = await q.put_many(
            [{"do": "ok"}, {"do": "raise"}, {"do": "reject"}, {"do": "sleep"}]
        )
        cancelled = await q.put({"do": "never"}, delay=3600)
        assert await q.cancel(cancelled)

        async def handler(job: pq.Job) -> None:
            if job.payload["do"] == "raise":
                raise ValueError("flaky")
            if job.payload["do"] == "reject":
                raise pq.Reject("no")
            if job.payload["do"] == "sleep" and job.attempts == 1:
                await anyio.sleep(30)

        async with pq.Supervisor(grace=1, restart_period=60) as sup:
            await sup.add(q, handler, concurrency=4, job_timeout=0.5, name="p")
            await q.join(timeout=20)
    # On a shared PostgreSQL database the rescuer may take back other tests' expired leases.
    events = [e for e in events if e.queue == queue_name]
    assert _of(events, ok) == [K.JOB_PUT, K.JOB_CLAIMED, K.JOB_ACKED]
    assert _of(events, flaky) == [
        K.JOB_PUT,
        K.JOB_CLAIMED,
        K.JOB_NACKED,
        K.JOB_CLAIMED,
        K.JOB_DEAD,
    ]
    assert _of(events, rejected) == [K.JOB_PUT, K.JOB_CLAIMED, K.JOB_DEAD]
    assert _of(events, slow) == [
        K.JOB_PUT,
        K.JOB_CLAIMED,
        K.JOB_TIMEOUT,
        K.JOB_NACKED,
        K.JOB_CLAIMED,
        K.JOB_ACKED,
    ]
    assert _of(events, cancelled) == [K.JOB_PUT, K.JOB_CANCELLED]
    by_id = [e for e in events if isinstance(e, JobEvent) and e.job_id == ok]
    claimed, acked = by_id[1], by_id[2]
    assert claimed.wait_seconds is not None
    assert claimed.wait_seconds >= 0
    assert acked.run_seconds is not None
    assert acked.run_seconds >= 0
    timeout = next(e for e in events if isinstance(e, JobEvent) and e.kind is K.JOB_TIMEOUT)
    assert timeout.pool == "p"
    assert timeout.run_seconds is not None
    assert timeout.run_seconds >= 0.5
    pools = [e for e in events if isinstance(e, PoolEvent)]
    assert [e.kind for e in pools] == [K.POOL_STARTED, K.POOL_RESTARTED, K.POOL_STOPPED]
    assert pools[1].error is not None
    assert "simulated" in pools[1].error
    assert {(e.pool, e.queue, e.concurrency) for e in pools} == {("p", queue_name, 4)}


async def test_a_rescued_lease_is_an_event(
    backend_url: str, queue_name: str, events: list[Event]
) -> None:
    now = [1_700_000_000.0]
    async with open_queue(backend_url, queue_name, lease_seconds=5, clock=lambda: now[0]) as q:
        first = await q.put({"n": 1})
        last = await q.put({"n": 2}, max_attempts=1)
        assert await q.get_nowait() is not None
        assert await q.get_nowait() is not None
        now[0] += 10
        assert await q.store.rescue() >= 2  # other tests' leases may go too
    assert _of(events, first)[-1] is K.JOB_RESCUED
    assert _of(events, last)[-1] is K.JOB_DEAD


async def test_an_observer_that_raises_is_logged_and_disturbs_nothing(
    queue: pq.Queue, caplog: pytest.LogCaptureFixture, events: list[Event]
) -> None:
    calls = Counter[str]()

    def broken(event: Event) -> None:
        # Only this queue's: a claim on a shared database may rescue other tests' leases.
        if event.queue == queue.name:
            calls[event.kind.value] += 1
            raise RuntimeError("observer bug")

    metrics.add_observer(broken)
    try:
        job_id = await queue.put({"n": 1})
        job = await queue.get(timeout=5)
        await job.ack("fine")
    finally:
        metrics.remove_observer(broken)
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DONE
    assert info.result == "fine"
    assert calls == {"job_put": 1, "job_claimed": 1, "job_acked": 1}
    failed = records(caplog, "observer_failed")
    assert len(failed) == 3
    assert all(r.levelno == logging.ERROR for r in failed)
    # the observer registered before the broken one heard everything
    assert _of(events, job_id) == [K.JOB_PUT, K.JOB_CLAIMED, K.JOB_ACKED]


async def test_nothing_is_built_when_nobody_listens(
    queue: pq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not metrics.hub.observed
    assert not metrics.hub.traced

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("an event was built with nobody listening")

    for module in ("queue", "job", "pool", "supervisor", "store.jobstore"):
        target = f"persistq_async.{module}"
        for name in ("JobEvent", "PoolEvent"):
            monkeypatch.setattr(f"{target}.{name}", forbidden, raising=False)

    async def handler(job: pq.Job) -> None:
        if job.payload["n"] == 1:
            raise ValueError("retry")

    await queue.put_many([{"n": 0}, {"n": 1}], max_attempts=1)
    async with pq.Supervisor(grace=1) as sup:
        await sup.add(queue, handler, concurrency=2)
        await queue.join(timeout=10)
    stats = await queue.stats()
    assert (stats.done, stats.dead) == (1, 1)


def test_observers_must_be_callable() -> None:
    with pytest.raises(pq.ArgumentTypeError, match="observer"):
        metrics.add_observer("not callable")  # type: ignore[arg-type]
    metrics.remove_observer(print)  # not registered: nothing happens
