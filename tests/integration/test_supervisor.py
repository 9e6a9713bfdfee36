"""The supervisor: restarts and their intensity limit, pool CRUD, several pools, shutdown, input."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

import persistq_async as pq
from tests.conftest import open_queue, pool_counted

from ._support import Gauge, info, records

pytestmark = pytest.mark.timeout(60)


class FlakyQueue(pq.Queue):
    """A queue whose ``claim`` raises a database error the first ``failures`` times."""

    def __init__(self, *args: Any, failures: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures
        self.claims = 0

    async def claim(
        self, limit: int, *, lease_seconds: float | None = None
    ) -> tuple[list[pq.Job], float | None]:
        self.claims += 1
        if self.failures > 0:
            self.failures -= 1
            raise pq.DatabaseError("claiming failed on test.db: disk I/O error (simulated)")
        return await super().claim(limit, lease_seconds=lease_seconds)


async def ok(job: pq.Job) -> str:
    return "ok"


# ---------------------------------------------------------------------- restarts


async def test_a_crashed_claim_loop_is_restarted_and_logged(
    backend_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    async with FlakyQueue(backend_url, name=queue_name, poll_interval=0.05, failures=3) as q:
        ids = await q.put_many([{"n": i} for i in range(5)])
        async with pq.Supervisor(grace=5, max_restarts=5, restart_period=60) as sup:
            pool = await sup.add(q, ok, concurrency=2)
            await q.join(timeout=10)
            assert pool.restarts == 3
            await pool_counted(lambda: pool.processed >= 5)
            assert pool.processed == 5
            # still claiming after the restarts
            later = await q.put({"n": 99})
            await q.join(timeout=5)
        states = {(await info(q, i)).state for i in [*ids, later]}
    assert states == {pq.JobState.DONE}
    restarted = records(caplog, "pool_restarted")
    assert len(restarted) == 3
    assert all(r.levelno == logging.WARNING for r in restarted)
    assert all(r.pool == queue_name for r in restarted)  # type: ignore[attr-defined]
    assert all("disk I/O error" in r.getMessage() for r in restarted)


async def test_restarts_beyond_the_intensity_limit_raise_supervisor_error(
    db_path: Any, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    async with (
        FlakyQueue(db_path, name=queue_name, poll_interval=0.05, failures=1000) as broken,
        open_queue(db_path, "healthy") as healthy,
    ):
        running = anyio.Event()

        async def slow(job: pq.Job) -> str:
            running.set()
            await anyio.sleep_forever()
            return "never"

        healthy_job = await healthy.put({"slow": True})
        with pytest.raises(pq.SupervisorError) as raised:  # noqa: PT012
            async with pq.Supervisor(grace=0.3, max_restarts=2, restart_period=30) as sup:
                await sup.add(healthy, slow, concurrency=1, name="healthy")
                with anyio.fail_after(5):
                    await running.wait()
                await sup.add(broken, ok, concurrency=1, name="broken")
                with anyio.fail_after(10):
                    await anyio.sleep_forever()  # the supervisor cancels this when it gives up
        assert not isinstance(raised.value, BaseExceptionGroup)
        assert "broken" in str(raised.value)
        assert broken.claims == 3  # the first try and two restarts
        assert len(records(caplog, "pool_restarted")) == 2
        assert len(records(caplog, "supervisor_gave_up")) == 1
        # The other pool's running handler was stopped and its lease handed back, not acked.
        found = await info(healthy, healthy_job)
    assert found.state == pq.JobState.QUEUED
    assert found.attempts == 0
    assert [a.outcome for a in found.history] == ["released"]


async def test_restarts_outside_the_period_do_not_add_up(
    db_path: Any, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    # 4 crashes, at least 50 ms apart (the restart backoff); only 1 fits in a 40 ms window.
    async with FlakyQueue(db_path, name=queue_name, poll_interval=0.05, failures=4) as q:
        job_id = await q.put({"x": 1})
        async with pq.Supervisor(grace=5, max_restarts=1, restart_period=0.04) as sup:
            pool = await sup.add(q, ok, concurrency=1)
            await q.join(timeout=10)
            assert pool.restarts == 4
        assert (await info(q, job_id)).state == pq.JobState.DONE
    assert len(records(caplog, "supervisor_gave_up")) == 0


# ---------------------------------------------------------------------- CRUD


async def test_pool_crud_add_read_resize_remove(queue: pq.Queue) -> None:
    gauge = Gauge()
    gate = anyio.Event()

    async def handler(job: pq.Job) -> int:
        gauge.enter()
        try:
            await gate.wait()
            return int(job.payload["n"])
        finally:
            gauge.leave()

    await queue.put_many([{"n": i} for i in range(12)])
    async with pq.Supervisor(grace=5) as sup:
        pool = await sup.add(queue, handler, concurrency=2, job_timeout=10, name="workers")
        # read
        assert isinstance(pool, pq.Pool)
        assert sup.pools["workers"] is pool
        assert list(sup.pools) == ["workers"]
        with pytest.raises(TypeError):
            sup.pools["other"] = pool  # type: ignore[index]
        with anyio.fail_after(5):
            await gauge.reached(2).wait()
        assert (pool.name, pool.concurrency, pool.active, pool.processed, pool.failed) == (
            "workers",
            2,
            2,
            0,
            0,
        )
        # update: up, and the pool fills the new slots
        await sup.resize("workers", 5)
        with anyio.fail_after(5):
            await gauge.reached(5).wait()
        assert (pool.concurrency, pool.active, gauge.running) == (5, 5, 5)
        assert (await queue.stats()).running == 5
        # update: down; running handlers are not cancelled
        await sup.resize("workers", 1)
        assert pool.concurrency == 1
        assert (pool.active, gauge.running) == (5, 5)
        gauge.peak = 0
        gate.set()
        await queue.join(timeout=10)
        assert gauge.peak <= 5
        await pool_counted(lambda: pool.processed >= 12)
        assert pool.processed == 12
        assert pool.failed == 0
        # delete
        await sup.remove("workers")
        assert "workers" not in sup.pools
        assert pool.stopped
        extra = await queue.put({"n": 100})
        assert dict(sup.pools) == {}
    assert (await info(queue, extra)).state == pq.JobState.QUEUED  # nobody claims it any more


async def test_resize_down_holds_the_new_limit_once_handlers_finish(queue: pq.Queue) -> None:
    gauge = Gauge()
    gates = {i: anyio.Event() for i in range(10)}
    after_resize: list[int] = []
    resized = False

    async def handler(job: pq.Job) -> None:
        gauge.enter()
        if resized:
            after_resize.append(gauge.running)
        try:
            await gates[job.payload["n"]].wait()
        finally:
            gauge.leave()

    await queue.put_many([{"n": i} for i in range(10)])
    async with pq.Supervisor(grace=5) as sup:
        pool = await sup.add(queue, handler, concurrency=4)
        with anyio.fail_after(5):
            await gauge.reached(4).wait()
        await sup.resize(pool.name, 2)
        resized = True
        for i in range(10):  # finish one at a time: at most 2 may run once 2 have ended
            gates[i].set()
        await queue.join(timeout=10)
    # Jobs started after the resize never ran alongside more than 2 - counting those still
    # draining from before it only while they had not yet finished.
    await pool_counted(lambda: pool.processed >= 10)
    assert pool.processed == 10
    assert after_resize
    assert max(after_resize) <= 4


async def test_remove_drains_running_handlers(queue: pq.Queue) -> None:
    started = anyio.Event()
    finish = anyio.Event()

    async def handler(job: pq.Job) -> str:
        started.set()
        await finish.wait()
        return "drained"

    job_id = await queue.put({"x": 1})
    async with pq.Supervisor(grace=5) as sup:
        await sup.add(queue, handler, concurrency=1, name="p")
        with anyio.fail_after(5):
            await started.wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.remove, "p")
            await anyio.lowlevel.checkpoint()
            assert "p" in sup.pools  # still draining
            finish.set()
        assert "p" not in sup.pools
    found = await info(queue, job_id)
    assert found.state == pq.JobState.DONE
    assert found.result == "drained"


async def test_remove_with_a_short_grace_hands_the_lease_back(queue: pq.Queue) -> None:
    started = anyio.Event()
    cancelled = anyio.Event()

    async def handler(job: pq.Job) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    job_id = await queue.put({"x": 1})
    async with pq.Supervisor(grace=30) as sup:
        pool = await sup.add(queue, handler, concurrency=1, name="p")
        with anyio.fail_after(5):
            await started.wait()
        with anyio.fail_after(3):
            await sup.remove("p", grace=0.1)
        assert cancelled.is_set()
        assert pool.failed == 0
    found = await info(queue, job_id)
    assert found.state == pq.JobState.QUEUED
    assert found.attempts == 0  # the handed-back delivery does not count
    assert [a.outcome for a in found.history] == ["released"]


async def test_several_pools_on_several_queues(
    backend_url: str, queue_name: str, tmp_path: Any
) -> None:
    seen: dict[str, list[str]] = {"a": [], "b": [], "c": []}

    def handler_for(pool: str) -> Any:
        async def handler(job: pq.Job) -> str:
            seen[pool].append(job.queue)
            return pool

        return handler

    async with (
        open_queue(backend_url, f"{queue_name}-a") as qa,
        open_queue(backend_url, f"{queue_name}-b") as qb,
        open_queue(tmp_path / "other.db", "c") as qc,  # another database
    ):
        await qa.put_many([{"n": i} for i in range(5)])
        await qb.put_many([{"n": i} for i in range(7)])
        await qc.put_many([{"n": i} for i in range(3)])
        async with pq.Supervisor(grace=5) as sup:
            pa = await sup.add(qa, handler_for("a"), concurrency=2, name="a")
            pb = await sup.add(qb, handler_for("b"), concurrency=3, name="b")
            pc = await sup.add(qc, handler_for("c"), concurrency=1, name="c")
            assert sorted(sup.pools) == ["a", "b", "c"]
            with anyio.fail_after(10):
                await qa.join()
                await qb.join()
                await qc.join()
            await pool_counted(
                lambda: pa.processed >= 5 and pb.processed >= 7 and pc.processed >= 3
            )
            assert (pa.processed, pb.processed, pc.processed) == (5, 7, 3)
        for q, count in ((qa, 5), (qb, 7), (qc, 3)):
            stats = await q.stats()
            assert (stats.done, stats.total) == (count, count)
    assert seen == {"a": [f"{queue_name}-a"] * 5, "b": [f"{queue_name}-b"] * 7, "c": ["c"] * 3}


# ---------------------------------------------------------------------- shutdown


async def test_leaving_the_block_waits_for_running_handlers(queue: pq.Queue) -> None:
    started = anyio.Event()
    finished: list[float] = []

    async def handler(job: pq.Job) -> str:
        started.set()
        await anyio.sleep(0.3)  # the work: shorter than the grace period
        finished.append(anyio.current_time())
        return "finished"

    job_id = await queue.put({"x": 1})
    async with pq.Supervisor(grace=5) as sup:
        pool = await sup.add(queue, handler, concurrency=1)
        with anyio.fail_after(5):
            await started.wait()
        queued = await queue.put({"x": 2})
    left = anyio.current_time()
    # The block was left only after the running handler had finished its work.
    assert finished
    assert left >= finished[0]
    assert pool.stopped
    assert (await info(queue, job_id)).state == pq.JobState.DONE
    # Claiming stopped at once: the job put while the first ran was left for another worker
    # (or, the concurrency being 1, it had no free slot before the shutdown).
    assert (await info(queue, queued)).state == pq.JobState.QUEUED


async def test_leaving_the_block_cancels_after_the_grace_and_hands_leases_back(
    queue: pq.Queue,
) -> None:
    gauge = Gauge()

    async def handler(job: pq.Job) -> None:
        gauge.enter()
        await anyio.sleep_forever()

    ids = await queue.put_many([{"n": i} for i in range(3)])
    with anyio.fail_after(5):
        async with pq.Supervisor(grace=0.2) as sup:
            await sup.add(queue, handler, concurrency=3)
            await gauge.reached(3).wait()
    for job_id in ids:
        found = await info(queue, job_id)
        assert found.state == pq.JobState.QUEUED
        assert found.attempts == 0
        assert [a.outcome for a in found.history] == ["released"]


async def test_an_error_in_the_block_still_shuts_down_gracefully(queue: pq.Queue) -> None:
    started = anyio.Event()

    async def handler(job: pq.Job) -> str:
        started.set()
        await anyio.sleep(0.2)
        return "finished"

    job_id = await queue.put({"x": 1})
    with pytest.raises(KeyError, match="boom"):  # noqa: PT012 - the block is the subject
        async with pq.Supervisor(grace=5) as sup:
            await sup.add(queue, handler, concurrency=1)
            with anyio.fail_after(5):
                await started.wait()
            raise KeyError("boom")
    assert (await info(queue, job_id)).state == pq.JobState.DONE


# ---------------------------------------------------------------------- bad input


def sync_handler(job: pq.Job) -> None:
    return None


class SyncCallable:
    def __call__(self, job: pq.Job) -> None:
        return None


class AsyncCallable:
    async def __call__(self, job: pq.Job) -> str:
        return "called"


@pytest.mark.parametrize(
    "handler",
    [sync_handler, SyncCallable(), lambda job: None, "module:handler", None],
    ids=["def", "sync-callable", "lambda", "string", "none"],
)
async def test_a_handler_that_is_not_a_coroutine_function_is_refused(
    queue: pq.Queue, handler: Any
) -> None:
    async with pq.Supervisor(grace=1) as sup:
        with pytest.raises(TypeError, match="handler") as raised:
            await sup.add(queue, handler)
        assert isinstance(raised.value, pq.PersistQError)
        assert dict(sup.pools) == {}


async def test_an_async_callable_object_is_a_handler(queue: pq.Queue) -> None:
    job_id = await queue.put({"x": 1})
    async with pq.Supervisor(grace=1) as sup:
        await sup.add(queue, AsyncCallable())
        await queue.join(timeout=5)
    assert (await info(queue, job_id)).result == "called"


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": -3}, "concurrency"),
        ({"job_timeout": 0}, "job_timeout"),
        ({"job_timeout": -1.5}, "job_timeout"),
        ({"name": ""}, "name"),
    ],
)
async def test_bad_pool_arguments_are_value_errors(
    queue: pq.Queue, kwargs: dict[str, Any], word: str
) -> None:
    async with pq.Supervisor(grace=1) as sup:
        with pytest.raises(ValueError, match=word) as raised:
            await sup.add(queue, ok, **kwargs)
        assert isinstance(raised.value, pq.PersistQError)
        assert dict(sup.pools) == {}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"concurrency": "4"}, TypeError),
        ({"job_timeout": "30"}, TypeError),
        ({"concurrency": 2.5}, TypeError),
    ],
)
async def test_ill_typed_pool_arguments_are_type_errors(
    queue: pq.Queue, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    async with pq.Supervisor(grace=1) as sup:
        with pytest.raises(error) as raised:
            await sup.add(queue, ok, **kwargs)
        assert isinstance(raised.value, pq.PersistQError)


async def test_duplicate_and_unknown_pool_names(queue: pq.Queue) -> None:
    async with pq.Supervisor(grace=1) as sup:
        await sup.add(queue, ok, name="mailers")
        with pytest.raises(ValueError, match="mailers") as dup:
            await sup.add(queue, ok, name="mailers")
        assert isinstance(dup.value, pq.PersistQError)
        with pytest.raises(ValueError, match="nope") as unknown:
            await sup.resize("nope", 3)
        assert isinstance(unknown.value, pq.PersistQError)
        with pytest.raises(ValueError, match="nope"):
            await sup.remove("nope")
        with pytest.raises(ValueError, match="concurrency"):
            await sup.resize("mailers", 0)
        assert sup.pools["mailers"].concurrency == 1
        assert list(sup.pools) == ["mailers"]


async def test_supervisor_arguments_and_use_outside_the_block(queue: pq.Queue) -> None:
    with pytest.raises(ValueError, match="grace"):
        pq.Supervisor(grace=-1)
    with pytest.raises(ValueError, match="max_restarts"):
        pq.Supervisor(max_restarts=-1)
    with pytest.raises(ValueError, match="restart_period"):
        pq.Supervisor(restart_period=0)
    sup = pq.Supervisor(grace=1)
    with pytest.raises(pq.QueueClosed):
        await sup.add(queue, ok)
    async with sup:
        pass
    with pytest.raises(pq.QueueClosed):
        await sup.add(queue, ok)
    with pytest.raises(pq.QueueClosed):
        async with sup:
            pass


async def test_gc_freeze_moves_the_start_up_heap_out_of_collections() -> None:
    import gc

    assert gc.get_freeze_count() == 0
    try:
        async with pq.Supervisor(gc_freeze=True) as sup:
            assert sup.gc_freeze is True
            assert gc.get_freeze_count() > 1000  # modules, classes, this test's objects
    finally:
        gc.unfreeze()
    async with pq.Supervisor():
        assert gc.get_freeze_count() == 0  # off by default: the process's GC is left alone


def test_gc_freeze_must_be_a_bool() -> None:
    with pytest.raises(pq.ArgumentTypeError, match="gc_freeze"):
        pq.Supervisor(gc_freeze="yes")  # type: ignore[arg-type]


async def test_a_queue_closed_before_its_supervisor_stops_the_pool_without_an_error(
    db_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # `async with Supervisor() as sup, Queue(...) as q:` closes the queue first.
    done = anyio.Event()

    async def handler(job: pq.Job) -> None:
        done.set()

    async with pq.Supervisor(grace=1.0) as sup, pq.Queue(db_path, name="inner") as q:
        await sup.add(q, handler, concurrency=2)
        await q.put({"n": 1})
        await done.wait()
        await q.join(timeout=10)
    assert sup.pools == {}  # left behind by nobody
    async with pq.Queue(db_path, name="inner") as q:
        assert (await q.stats()).done == 1
