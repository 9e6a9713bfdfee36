"""Awaiting results on each backend: done, dead, cancelled, timeouts, retention, many awaiters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from sqlalchemy import event

import persistq_async as pq
from tests.conftest import FakeClock


async def take(q: pq.Queue) -> pq.Job:
    return await q.get(timeout=5)


@contextmanager
def counted_statements(q: pq.Queue) -> Iterator[list[str]]:
    """Every statement the queue's read engine runs (results, change tokens, ...)."""
    seen: list[str] = []
    engine = q.store.engine.sync_engine

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


async def test_result_returns_what_the_ack_stored(queue: pq.Queue) -> None:
    job_id = await queue.put({"n": 2})
    async with anyio.create_task_group() as tg:
        got: list[Any] = []

        async def wait() -> None:
            got.append(await queue.result(job_id, timeout=5))

        tg.start_soon(wait)
        job = await take(queue)
        await job.ack({"square": 4})
    assert got == [{"square": 4}]
    assert await queue.result(job_id) == {"square": 4}  # finished already: at once


async def test_a_job_acked_without_a_result_gives_none(queue: pq.Queue) -> None:
    job_id = await queue.put(1)
    await (await take(queue)).ack()
    assert await queue.result(job_id, timeout=5) is None


async def test_call_puts_and_returns_the_handlers_result(queue: pq.Queue) -> None:
    async def double(job: pq.Job) -> int:
        return int(job.payload) * 2

    async with pq.Supervisor() as sup:
        await sup.add(queue, double, concurrency=4)
        with anyio.fail_after(10):
            results = []
            for n in range(5):
                results.append(await queue.call(n, timeout=5, priority=1))
    assert results == [0, 2, 4, 6, 8]


async def test_a_dead_job_raises_job_failed_with_its_last_error_and_attempts(
    backend_url: str, queue_name: str
) -> None:
    async with pq.Queue(
        backend_url, name=queue_name, max_attempts=2, backoff_base=0.01, backoff_max=0.02
    ) as q:
        job_id = await q.put("x")
        await (await take(q)).nack(error="first")
        job = await take(q)
        await job.nack(error="smtp down")  # the last attempt: dead
        with pytest.raises(pq.JobFailed) as caught:
            await q.result(job_id, timeout=5)
    assert caught.value.job_id == job_id
    assert caught.value.error == "smtp down"
    assert caught.value.attempts == 2
    assert isinstance(caught.value, pq.PersistQError)


async def test_a_failed_job_raises_job_failed(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    async with anyio.create_task_group() as tg:
        errors: list[BaseException] = []

        async def wait() -> None:
            try:
                await queue.result(job_id, timeout=5)
            except pq.JobFailed as exc:
                errors.append(exc)

        tg.start_soon(wait)
        await (await take(queue)).fail(error="bad address")
    assert [(e.error, e.attempts) for e in errors] == [("bad address", 1)]  # type: ignore[attr-defined]


async def test_a_cancelled_job_raises_job_cancelled(queue: pq.Queue) -> None:
    queued = await queue.put("q")
    running = await queue.put("r")
    job = await take(queue)
    assert job.id == queued
    async with anyio.create_task_group() as tg:
        errors: list[BaseException] = []

        async def wait(job_id: int) -> None:
            try:
                await queue.result(job_id, timeout=5)
            except pq.JobCancelled as exc:
                errors.append(exc)

        tg.start_soon(wait, queued)
        tg.start_soon(wait, running)
        await anyio.sleep(0.05)
        await queue.cancel(queued)
        await queue.cancel(running)
    assert sorted(e.job_id for e in errors) == [queued, running]  # type: ignore[attr-defined]


async def test_a_timeout_raises_timeout_error_and_the_job_goes_on(queue: pq.Queue) -> None:
    job_id = await queue.put("slow")
    with anyio.fail_after(5), pytest.raises(TimeoutError, match=f"job {job_id}"):
        await queue.result(job_id, timeout=0.2)
    with pytest.raises(TimeoutError):
        await queue.call("also slow", timeout=0.1)
    assert (await queue.stats()).queued == 2


async def test_an_unknown_or_foreign_job_raises_job_not_found(
    queue: pq.Queue, backend_url: str
) -> None:
    with pytest.raises(pq.JobNotFound):
        await queue.result(10**9, timeout=1)
    async with pq.Queue(backend_url, name=queue.name + "-x") as other:
        foreign = await other.put(1)
    with pytest.raises(pq.JobNotFound):
        await queue.result(foreign, timeout=1)
    with pytest.raises(pq.ArgumentTypeError):
        await queue.result("1", timeout=1)  # type: ignore[arg-type]


async def test_a_result_is_kept_for_retention_seconds_then_not_found(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with pq.Queue(backend_url, name=queue_name, clock=clock, retention_seconds=60) as q:
        job_id = await q.put(1)
        await (await take(q)).ack("kept")
        clock.advance(59)
        await q.clean()
        assert await q.result(job_id, timeout=1) == "kept"
        clock.advance(2)
        await q.clean()
        with pytest.raises(pq.JobNotFound):
            await q.result(job_id, timeout=1)


async def test_a_job_deleted_while_awaited_raises_job_not_found(queue: pq.Queue) -> None:
    job_id = await queue.put(1)
    async with anyio.create_task_group() as tg:
        errors: list[BaseException] = []

        async def wait() -> None:
            try:
                await queue.result(job_id, timeout=5)
            except pq.JobNotFound as exc:
                errors.append(exc)

        tg.start_soon(wait)
        await anyio.sleep(0.05)
        await queue.delete(job_id)
    assert len(errors) == 1


async def test_cancelled_result_calls_leave_nothing_behind(queue: pq.Queue) -> None:
    ids = await queue.put_many(range(20))
    with anyio.move_on_after(0.3):
        async with anyio.create_task_group() as tg:
            for job_id in ids:
                tg.start_soon(queue.result, job_id)
    waiters = queue._result_waiters
    assert waiters is not None
    assert waiters.waiting == 0
    assert not waiters.listening
    # and the next call works, and is woken as usual
    async with anyio.create_task_group() as tg:
        got: list[Any] = []

        async def wait() -> None:
            got.append(await queue.result(ids[0], timeout=5))

        tg.start_soon(wait)
        job = await take(queue)
        await job.ack("after")
    assert got == ["after"]
    assert waiters.waiting == 0


async def test_the_reader_leaving_hands_over_to_another_awaiter(queue: pq.Queue) -> None:
    first, second = await queue.put_many([1, 2])
    got: list[Any] = []
    async with anyio.create_task_group() as tg:
        reader_scope = anyio.CancelScope()

        async def reader() -> None:
            with reader_scope:
                await queue.result(first)

        async def other() -> None:
            got.append(await queue.result(second, timeout=5))

        tg.start_soon(reader)
        await anyio.sleep(0.05)
        tg.start_soon(other)
        await anyio.sleep(0.05)
        reader_scope.cancel()  # the first awaiter was reading for both
        await anyio.sleep(0.05)
        await (await take(queue)).ack("one")
        job = await take(queue)
        await job.ack("two")
    assert got == ["two"]


async def test_a_thousand_awaiters_share_one_reader(
    backend_url: str, queue_name: str, is_sqlite: bool
) -> None:
    poll = 0.05
    async with pq.Queue(backend_url, name=queue_name, poll_interval=poll) as q:
        ids = await q.put_many(range(1000))
        results: dict[int, Any] = {}

        async def wait(job_id: int) -> None:
            results[job_id] = await q.result(job_id, timeout=60)

        async with anyio.create_task_group() as tg:
            for job_id in ids:
                tg.start_soon(wait, job_id)
            waiters = q._result_waiters
            with anyio.fail_after(30):
                while waiters is None or waiters.waiting < len(ids):
                    await anyio.sleep(0.05)
                    waiters = q._result_waiters
            await anyio.sleep(0.3)  # every one registered, and read once since
            window = 1.0
            with counted_statements(q) as seen:
                await anyio.sleep(window)
            intervals = window / poll
            # One reader: on PostgreSQL a read of the 1,000 ids (two statements of 500) per
            # poll_interval; on SQLite only the change token, as nothing changed. 1,000
            # awaiters polling on their own would be 1,000 statements per interval.
            reads = [s for s in seen if "persistq_jobs" in s]
            if is_sqlite:
                assert len(reads) <= 2  # at most one read (two statements) settling late
                assert len(seen) <= 4 * intervals + 4
            else:
                assert len(reads) <= 2 * (intervals + 2)
            assert len(seen) < 5 * intervals + 10
            # Finishing the jobs wakes every awaiter, each with its own result.
            for _ in range(10):
                jobs, _ = await q.claim(100)
                async with anyio.create_task_group() as acks:
                    for job in jobs:
                        acks.start_soon(job.ack, job.payload * 10)
        assert results == {job_id: n * 10 for n, job_id in enumerate(ids)}
        assert q._result_waiters is not None
        assert q._result_waiters.waiting == 0


async def test_a_result_over_max_result_bytes_fails_the_job_and_result_says_why(
    backend_url: str, queue_name: str
) -> None:
    async with pq.Queue(backend_url, name=queue_name, max_result_bytes=64) as q:

        async def big(job: pq.Job) -> str:
            return "x" * 1000

        async with pq.Supervisor(grace=1) as sup:
            await sup.add(q, big, concurrency=1)
            with pytest.raises(pq.JobFailed, match="max_result_bytes=64") as info:
                await q.call({"n": 1}, timeout=20)
        assert info.value.attempts == 1  # failed at once, not retried
