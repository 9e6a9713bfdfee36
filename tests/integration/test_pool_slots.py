"""Pool slots: long-lived workers fed by the claim loop, and what wakes an idle claim loop.

Each test runs on SQLite and PostgreSQL (``backend_url``). The queues poll only once a minute
here (``poll_interval=60``, a look every 30 s), so a job reaching a handler within the tests'
few seconds was woken by a notification, not found by a poll.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

import persistq_async as pq
from persistq_async.pool import Execution, Pool, StopReason
from tests.conftest import open_queue, pool_counted

from ._support import Gauge, info

pytestmark = pytest.mark.timeout(60)

SLOW_POLL = {"poll_interval": 60.0}


def slot_tasks(pool: Pool) -> list[asyncio.Task[object]]:
    """The pool's live slot tasks (named after the pool)."""
    name = f"persistq pool {pool.name} slot"
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


async def test_deliveries_run_on_long_lived_slots(backend_url: str, queue_name: str) -> None:
    # A task per delivery would show 40 different tasks; slots show at most `concurrency`.
    tasks: set[int] = set()
    async with open_queue(backend_url, queue_name) as q:
        await q.put_many([{"n": i} for i in range(40)])

        async def handler(job: pq.Job) -> int:
            tasks.add(id(asyncio.current_task()))
            await anyio.lowlevel.checkpoint()
            return int(job.payload["n"])

        async with pq.Supervisor(grace=5) as sup:
            pool = await sup.add(q, handler, concurrency=3)
            await q.join(timeout=20)
            assert len(slot_tasks(pool)) == 3
        await pool_counted(lambda: pool.processed >= 40)
        assert pool.processed == 40
        assert pool.failed == 0
    assert 1 <= len(tasks) <= 3


async def test_resize_starts_and_retires_slots(backend_url: str, queue_name: str) -> None:
    gauge = Gauge()
    gate = anyio.Event()

    async def handler(job: pq.Job) -> None:
        gauge.enter()
        try:
            await gate.wait()
        finally:
            gauge.leave()

    async with open_queue(backend_url, queue_name) as q:
        async with pq.Supervisor(grace=5) as sup:
            pool = await sup.add(q, handler, concurrency=2)
            await anyio.wait_all_tasks_blocked()
            assert len(slot_tasks(pool)) == 2
            await sup.resize(pool.name, 5)
            await anyio.wait_all_tasks_blocked()
            assert len(slot_tasks(pool)) == 5
            # Busy slots beyond a smaller limit finish their delivery, then return.
            await q.put_many([{"n": i} for i in range(4)])
            with anyio.fail_after(10):
                await gauge.reached(4).wait()
            await sup.resize(pool.name, 1)
            await anyio.wait_all_tasks_blocked()
            assert len(slot_tasks(pool)) == 4  # the parked one returned, the busy ones run on
            gate.set()
            await q.join(timeout=10)
            with anyio.fail_after(5):
                while len(slot_tasks(pool)) > 1:  # noqa: ASYNC110 - no event for a task ending
                    await anyio.sleep(0.01)
            # The one slot left still runs jobs, one at a time.
            gauge.peak = 0
            await q.put_many([{"n": i} for i in range(3)])
            await q.join(timeout=10)
            assert gauge.peak == 1
            await pool_counted(lambda: pool.processed >= 7)
            assert pool.processed == 7
        assert slot_tasks(pool) == []


async def test_an_idle_pool_is_woken_by_a_put_not_a_poll(backend_url: str, queue_name: str) -> None:
    started = anyio.Event()

    async def handler(job: pq.Job) -> None:
        started.set()

    async with (
        open_queue(backend_url, queue_name, **SLOW_POLL) as q,
        open_queue(backend_url, queue_name, **SLOW_POLL) as other,
    ):
        async with pq.Supervisor(grace=5) as sup:
            await sup.add(q, handler, concurrency=2)
            await anyio.wait_all_tasks_blocked()  # the claim loop waits: nothing to claim
            # Another Queue object on the same database and event loop: its commit wakes
            # this one's pool at once.
            job_id = await other.put({"n": 1})
            with anyio.fail_after(5):
                await started.wait()
            await q.join(timeout=5)
        assert (await info(q, job_id)).state == pq.JobState.DONE


async def test_work_listeners_hear_work_of_every_store_on_the_database(
    backend_url: str, queue_name: str
) -> None:
    # What a pool's claim loop listens to: work for a queue (a put, a nack, a freed cap slot)
    # from any store of this process on the database, and "*" after a rescue; not mere
    # changes of state (an ack).
    heard: list[str] = []
    async with (
        open_queue(backend_url, queue_name, **SLOW_POLL) as q,
        open_queue(backend_url, queue_name, **SLOW_POLL) as other,
    ):
        q.store.wakeups.add_work_listener(heard.append)
        try:
            await other.put({"n": 1})
            job = await other.get_nowait()
            assert job is not None
            assert heard.count(queue_name) >= 1
            # PostgreSQL's notification of the put arrives on the listening connection some
            # time after the commit; let it land before listening for what an ack does.
            await anyio.sleep(0.3)
            heard.clear()
            await job.ack()
            assert queue_name not in heard
            other.store.wakeups.notify_all_work()
            assert heard == ["*"]
        finally:
            q.store.wakeups.remove_work_listener(heard.append)
        heard.clear()
        await other.put({"n": 2})
        assert heard == []


async def test_a_stop_once_the_handler_has_ended_cancels_nothing(
    backend_url: str, queue_name: str
) -> None:
    # The scope of a delivery whose handler returned is the one, shielded, in which its
    # outcome is written: a late Queue.cancel, lost lease or shutdown must not cancel it.
    async with open_queue(backend_url, queue_name) as q:
        await q.put({"n": 1})
        jobs, _ = await q.claim(1)
        execution = Execution(job=jobs[0], scope=anyio.CancelScope(), started_at=0, deadline=1)
        execution.settling = True
        execution.stop(StopReason.CANCELLED)
        assert execution.reason is StopReason.CANCELLED
        assert not execution.scope.cancel_called
        execution.settling = False
        execution.stop(StopReason.TIMEOUT)
        assert execution.reason is StopReason.CANCELLED  # the first reason is kept
        assert execution.scope.cancel_called
        await jobs[0].ack()


@pytest.mark.parametrize(
    "case", ["to-a-parked-slot", "before-the-slots-ran", "after-the-slots-were-cancelled"]
)
async def test_a_delivery_handed_over_as_the_pool_is_cancelled_is_handed_back(
    backend_url: str, queue_name: str, case: str
) -> None:
    # The claim loop hands a delivery over in the same loop iteration as the pool's task
    # group is cancelled from outside: to a slot parked on its future, to the pending deque
    # before any slot ran, or to the deque once every parked slot was cancelled (no slot will
    # ever take it: the pool hands it back as it stops). In each case the lease is handed
    # back at once, not left to expire.
    ran: list[int] = []

    async def handler(job: pq.Job) -> None:
        ran.append(job.id)
        await anyio.sleep_forever()

    async with open_queue(backend_url, queue_name, lease_seconds=600) as q:
        job_id = await q.put({"n": 1})
        pool = Pool(q, handler, name="p", concurrency=2, job_timeout=None, on_crash=no_crash)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                # Claimed before the pool runs, so its own claim loop finds nothing.
                jobs, _ = await q.claim(1)
                await tg.start(pool.run, 5.0)
                if case != "before-the-slots-ran":
                    await anyio.wait_all_tasks_blocked()  # the slots are parked
                if case == "after-the-slots-were-cancelled":
                    tg.cancel_scope.cancel()
                    pool._start(jobs[0])
                else:
                    pool._start(jobs[0])
                    tg.cancel_scope.cancel()
        found = await info(q, job_id)
        assert found.state == pq.JobState.QUEUED, found
        # (On SQLite the pool's cancelled claim may still commit in the writer and is then
        # released too: a second released attempt, never a running one.)
        assert found.history
        assert {a.outcome for a in found.history} == {"released"}
        assert ran in ([], [job_id])
        assert not pool.executions
        assert pool.active == 0


async def no_crash(pool: Pool, exc: BaseException) -> None:
    raise AssertionError(f"the claim loop crashed: {exc!r}")
