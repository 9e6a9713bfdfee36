"""The supervisor's services, each on its own: one ``tick()`` at a time, on a real database.

Leases are driven by an injected clock, so expiry is exact and no test waits for it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator

import anyio
import pytest

import persistq_async as pq
from persistq_async._maintenance import Cleaner, Heartbeat, Rescuer, Service, Watchdog
from persistq_async.pool import Execution, Pool, StopReason
from tests.conftest import CLOCK_START, FakeClock, open_queue

from ._support import info, records

pytestmark = pytest.mark.timeout(60)

LEASE = 10.0


@pytest.fixture
async def cq(backend_url: str, queue_name: str, clock: FakeClock) -> AsyncIterator[pq.Queue]:
    """A queue driven by ``clock``, with 10 s leases and a 100 s retention."""
    q = open_queue(backend_url, queue_name, clock=clock, lease_seconds=LEASE, retention_seconds=100)
    async with q as opened:
        yield opened


async def noop(job: pq.Job) -> None:
    return None


async def no_crash(pool: Pool, exc: BaseException) -> None:
    raise AssertionError("not used")


def idle_pool(q: pq.Queue) -> Pool:
    """A pool that is never run: the test puts executions into it by hand."""
    return Pool(q, noop, name="p", concurrency=4, job_timeout=None, on_crash=no_crash)


async def running(pool: Pool, q: pq.Queue, *, deadline: float = math.inf) -> Execution:
    """Claim one job of ``q`` and register it as running in ``pool``."""
    jobs, _ = await q.claim(1)
    assert len(jobs) == 1
    now = anyio.current_time()
    execution = Execution(job=jobs[0], scope=anyio.CancelScope(), started_at=now, deadline=deadline)
    pool.executions[jobs[0].id] = execution
    return execution


async def lease_expiry(q: pq.Queue, job_id: int) -> float:
    found = await info(q, job_id)
    assert found.lease_expires_at is not None
    return found.lease_expires_at.timestamp()


# ---------------------------------------------------------------------- heartbeat


async def test_heartbeat_extends_running_leases(cq: pq.Queue, clock: FakeClock) -> None:
    await cq.put_many([{"n": 1}, {"n": 2}])
    pool = idle_pool(cq)
    first = await running(pool, cq)
    second = await running(pool, cq)
    assert await lease_expiry(cq, first.job.id) == pytest.approx(CLOCK_START + LEASE)
    heartbeat = Heartbeat(lambda: [pool], interval=1)

    clock.advance(7)
    await heartbeat.tick()
    for execution in (first, second):
        assert await lease_expiry(cq, execution.job.id) == pytest.approx(CLOCK_START + 7 + LEASE)
        assert execution.reason is None
    # The extended lease holds past the original expiry: a rescue leaves the jobs alone.
    clock.advance(5)
    assert await cq.store.rescue() == 0
    assert (await cq.stats()).running == 2


async def test_heartbeat_skips_unresponsive_and_stopping_handlers(
    cq: pq.Queue, clock: FakeClock
) -> None:
    await cq.put_many([{"n": 1}, {"n": 2}, {"n": 3}])
    pool = idle_pool(cq)
    healthy = await running(pool, cq)
    blocked = await running(pool, cq)
    stopping = await running(pool, cq)
    blocked.unresponsive = True
    stopping.reason = StopReason.TIMEOUT

    clock.advance(5)
    await Heartbeat(lambda: [pool], interval=1).tick()
    assert await lease_expiry(cq, healthy.job.id) == pytest.approx(CLOCK_START + 5 + LEASE)
    assert await lease_expiry(cq, blocked.job.id) == pytest.approx(CLOCK_START + LEASE)
    assert await lease_expiry(cq, stopping.job.id) == pytest.approx(CLOCK_START + LEASE)

    # So the unresponsive handler's lease runs out honestly and the job goes back.
    clock.advance(LEASE - 4)
    assert await cq.store.rescue() == 2
    assert (await info(cq, blocked.job.id)).state == pq.JobState.QUEUED
    assert (await info(cq, healthy.job.id)).state == pq.JobState.RUNNING


async def test_heartbeat_stops_a_handler_whose_lease_is_lost(
    cq: pq.Queue, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    await cq.put_many([{"n": 1}, {"n": 2}])
    pool = idle_pool(cq)
    expired = await running(pool, cq)
    healthy = await running(pool, cq)
    await healthy.job.extend(100)
    clock.advance(LEASE + 1)
    assert await cq.store.rescue() == 1  # only the first one's lease ran out

    await Heartbeat(lambda: [pool], interval=1).tick()
    assert expired.reason is StopReason.LEASE_LOST
    assert expired.scope.cancel_called
    assert healthy.reason is None
    assert not healthy.scope.cancel_called
    lost = records(caplog, "lease_lost")
    assert [r.job_id for r in lost] == [expired.job.id]  # type: ignore[attr-defined]


async def test_heartbeat_leaves_finished_deliveries_alone(cq: pq.Queue, clock: FakeClock) -> None:
    job_id = await cq.put({"n": 1})
    pool = idle_pool(cq)
    execution = await running(pool, cq)
    await execution.job.ack("done")
    await Heartbeat(lambda: [pool], interval=1).tick()
    assert execution.reason is None
    found = await info(cq, job_id)
    assert (found.state, found.lease_expires_at) == (pq.JobState.DONE, None)


async def test_a_failing_lease_extension_is_logged_and_the_others_go_on(
    cq: pq.Queue,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Regression: a database error in one beat escaped the tick's task group as an
    # ExceptionGroup, which the service loop did not catch, and the supervisor went down.
    caplog.set_level(logging.WARNING, logger="persistq_async")
    await cq.put_many([{"n": 1}, {"n": 2}])
    pool = idle_pool(cq)
    failing = await running(pool, cq)
    healthy = await running(pool, cq)
    extend = cq.store.extend

    async def flaky_extend(job_id: int, token: str, seconds: float) -> float:
        if job_id == failing.job.id:
            raise pq.DatabaseError("writing failed on test.db: connection lost (simulated)")
        return await extend(job_id, token, seconds)

    monkeypatch.setattr(cq.store, "extend", flaky_extend)
    clock.advance(5)
    await Heartbeat(lambda: [pool], interval=1).tick()  # raises nothing
    assert await lease_expiry(cq, healthy.job.id) == pytest.approx(CLOCK_START + 5 + LEASE)
    assert await lease_expiry(cq, failing.job.id) == pytest.approx(CLOCK_START + LEASE)
    assert failing.reason is None  # not cancelled: the lease may still be extended in time
    warned = [r for r in caplog.records if "extending its lease failed" in r.getMessage()]
    assert [r.job_id for r in warned] == [failing.job.id]  # type: ignore[attr-defined]

    monkeypatch.setattr(cq.store, "extend", extend)
    await Heartbeat(lambda: [pool], interval=1).tick()
    assert await lease_expiry(cq, failing.job.id) == pytest.approx(CLOCK_START + 5 + LEASE)


# ---------------------------------------------------------------------- watchdog


async def test_watchdog_marks_a_handler_that_ignores_its_timeout(
    cq: pq.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="persistq_async")
    await cq.put_many([{"n": 1}, {"n": 2}, {"n": 3}])
    pool = idle_pool(cq)
    now = anyio.current_time()
    overdue = await running(pool, cq, deadline=now - 2.0)  # past its timeout by 2 s
    recent = await running(pool, cq, deadline=now - 0.5)  # within the grace: being cancelled
    unlimited = await running(pool, cq)
    watchdog = Watchdog(lambda: [pool], interval=0.25, grace=1.0)

    await watchdog.tick()
    assert overdue.unresponsive
    assert overdue.warned
    assert not recent.unresponsive
    assert not unlimited.unresponsive
    warnings = records(caplog, "job_blocking")
    assert [r.job_id for r in warnings] == [overdue.job.id]  # type: ignore[attr-defined]
    assert warnings[0].levelno == logging.WARNING
    assert str(overdue.job.id) in warnings[0].getMessage()

    await watchdog.tick()  # warned once per delivery
    assert len(records(caplog, "job_blocking")) == 1


async def test_watchdog_reports_a_blocked_event_loop_naming_the_running_jobs(
    cq: pq.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="persistq_async")
    await cq.put_many([{"n": 1}, {"n": 2}])
    pool = idle_pool(cq)
    first = await running(pool, cq)
    second = await running(pool, cq)
    watchdog = Watchdog(lambda: [pool], interval=0.05, grace=0.2)

    await watchdog.tick()
    assert records(caplog, "job_blocking") == []
    time.sleep(0.4)  # noqa: ASYNC251 - the blocking call under test: the loop cannot run for 0.4 s
    await watchdog.tick()
    (warning,) = records(caplog, "job_blocking")
    assert warning.jobs == f"{first.job.id}, {second.job.id}"  # type: ignore[attr-defined]
    assert "blocked" in warning.getMessage()


# ---------------------------------------------------------------------- rescuer


async def test_rescuer_requeues_expired_leases_and_kills_spent_jobs(
    cq: pq.Queue, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    retry = await cq.put({"n": 1}, max_attempts=3)
    poison = await cq.put({"n": 2}, max_attempts=1)
    jobs, _ = await cq.claim(2)
    assert sorted(j.id for j in jobs) == [retry, poison]
    clock.advance(5)
    fresh = await cq.put({"n": 3})
    (fresh_job,), _ = await cq.claim(1)  # leased at +5: not expired at +11
    rescuer = Rescuer(lambda: [cq, cq], interval=1)

    await rescuer.tick()  # nothing has expired yet
    assert (await cq.stats()).running == 3

    clock.advance(LEASE - 4)  # +11
    await rescuer.tick()
    found = await info(cq, retry)
    assert (found.state, found.attempts) == (pq.JobState.QUEUED, 1)
    assert [a.outcome for a in found.history] == ["expired"]
    assert found.last_error is not None
    assert "lease expired" in found.last_error
    dead = await info(cq, poison)
    assert dead.state == pq.JobState.DEAD  # its one attempt is spent: a poison job stops here
    assert [a.outcome for a in dead.history] == ["expired"]
    assert (await info(cq, fresh)).state == pq.JobState.RUNNING
    # (on PostgreSQL the rescue also sweeps earlier tests' queues in the database: filter)
    mine = [r for r in caplog.records if getattr(r, "queue", None) == cq.name]
    assert {r.job_id for r in mine if r.action == "job_rescued"} == {retry}  # type: ignore[attr-defined]
    assert {r.job_id for r in mine if r.action == "job_dead"} == {poison}  # type: ignore[attr-defined]
    # The late ack of a rescued delivery is refused.
    with pytest.raises(pq.LeaseLost):
        await next(j for j in jobs if j.id == retry).ack()
    await fresh_job.ack()


async def test_rescuer_skips_closed_queues(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    closed = open_queue(backend_url, queue_name, clock=clock)
    async with open_queue(backend_url, queue_name, clock=clock, lease_seconds=LEASE) as q:
        job_id = await q.put({"n": 1})
        await q.claim(1)
        clock.advance(LEASE + 1)
        # A queue that was never opened raises QueueClosed on use; the rescuer must not ask it.
        async with closed:
            pass
        await Rescuer(lambda: [q], interval=1).tick()
        assert (await info(q, job_id)).state == pq.JobState.QUEUED


# ---------------------------------------------------------------------- cleaner


async def test_cleaner_deletes_finished_jobs_past_retention_only(
    cq: pq.Queue, clock: FakeClock
) -> None:
    done = await cq.put({"n": 1})
    queued = await cq.put({"n": 2}, delay=1000)
    (job,), _ = await cq.claim(1)
    assert job.id == done
    await job.ack("ok")
    cleaner = Cleaner(lambda: [cq], interval=60)

    clock.advance(50)  # retention is 100 s
    await cleaner.tick()
    assert (await info(cq, done)).state == pq.JobState.DONE

    clock.advance(60)
    await cleaner.tick()
    assert await cq.job(done) is None
    assert (await info(cq, queued)).state == pq.JobState.QUEUED  # never cleaned while active


# ---------------------------------------------------------------------- the service loop


class Counting(Service):
    def __init__(self, interval: float, fail_first: int = 0) -> None:
        self.interval = interval
        self.ticks = 0
        self.fail_first = fail_first
        self.ticked = anyio.Event()

    async def tick(self) -> None:
        self.ticks += 1
        self.ticked.set()
        self.ticked = anyio.Event()
        if self.ticks <= self.fail_first:
            raise pq.DatabaseError("the database is gone (simulated)")


async def test_a_failing_tick_is_logged_and_the_service_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="persistq_async")
    service = Counting(interval=0.01, fail_first=2)
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        with anyio.fail_after(5):
            while service.ticks < 3:
                await service.ticked.wait()
        tg.cancel_scope.cancel()
    failures = [r for r in caplog.records if "the database is gone" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.levelno == logging.WARNING for r in failures)


async def test_a_shorter_interval_takes_effect_during_the_wait() -> None:
    service = Counting(interval=60)
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        await anyio.lowlevel.checkpoint()
        service.set_interval(0.01)
        with anyio.fail_after(2):  # not after the 60 s wait that had begun
            await service.ticked.wait()
        tg.cancel_scope.cancel()
    assert service.interval == 0.01


async def test_the_heartbeat_follows_the_shortest_lease_of_the_pools(
    backend_url: str, queue_name: str
) -> None:
    # Regression: the heartbeat started with the 30 s default before any pool existed and kept
    # that first wait, so a 0.6 s lease added afterwards expired before its first beat.
    async with open_queue(backend_url, queue_name, lease_seconds=0.6) as q:
        job_id = await q.put({"n": 1})
        started = anyio.Event()
        finish = anyio.Event()

        async def handler(job: pq.Job) -> None:
            started.set()
            await finish.wait()

        async with pq.Supervisor(grace=5) as sup:
            await sup.add(q, handler, concurrency=1)
            with anyio.fail_after(5):
                await started.wait()
            first = await lease_expiry(q, job_id)
            with anyio.fail_after(1):  # a beat every 0.2 s
                while await lease_expiry(q, job_id) == first:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            finish.set()
        assert (await info(q, job_id)).attempts == 1
