"""put and put_many: ids, payloads, priority, FIFO, delay/run_at, max_attempts, dedupe_key."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

import persistq_async as pq
from tests.conftest import CLOCK_START, FakeClock

PAYLOADS = [
    None,
    True,
    0,
    -(2**53),
    1.5,
    "",
    "héllo ☃ \U0001f600",
    "'; DROP TABLE persistq_jobs; --",
    [],
    {},
    [1, "two", 3.0, None, [True, {"deep": [{"x": -1e-300}]}]],
    {"to": "a@example.org", "n": 1, "tags": ["a", "b"], "nested": {"k": None}},
]


async def test_concurrent_puts_each_get_the_id_of_their_own_job(queue: pq.Queue) -> None:
    # Puts that meet in one write batch are inserted together (SQLite): each must still get
    # the id of the row that holds its own payload and options.
    got: dict[int, int] = {}

    async def put(i: int) -> None:
        got[i] = await queue.put({"n": i}, priority=i % 5, max_attempts=1 + i % 3)

    async with anyio.create_task_group() as tg:
        for i in range(150):
            tg.start_soon(put, i)
    assert len(set(got.values())) == 150
    for i, job_id in got.items():
        info = await queue.job(job_id)
        assert info is not None
        assert (info.payload, info.priority, info.max_attempts) == ({"n": i}, i % 5, 1 + i % 3)


async def test_a_put_that_fails_among_concurrent_ones_fails_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite only: batched puts are the SQLite writer's, and the trigger is SQLite's syntax.
    path = tmp_path / "jobs.db"
    outcomes: dict[int, int | Exception] = {}
    async with pq.Queue(path, name="q") as queue:
        with sqlite3.connect(path) as conn:
            conn.execute(
                "CREATE TRIGGER no_sevens BEFORE INSERT ON persistq_jobs WHEN NEW.priority = 7 "
                "BEGIN SELECT RAISE(ABORT, 'no sevens here'); END"
            )

        async def put(i: int) -> None:
            try:
                outcomes[i] = await queue.put({"n": i}, priority=i)
            except pq.PersistQError as exc:
                outcomes[i] = exc

        with caplog.at_level(logging.DEBUG, logger="persistq_async.store"):
            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(put, i)
        assert "a bulk put failed" in caplog.text  # the batch was tried as one insert first
        failed = outcomes.pop(7)
        assert isinstance(failed, pq.PersistQError)
        assert "no sevens here" in str(failed)
        for i, job_id in outcomes.items():
            assert isinstance(job_id, int), (i, job_id)
            info = await queue.job(job_id)
            assert info is not None
            assert (info.payload, info.priority) == ({"n": i}, i)
        assert (await queue.stats()).queued == 9


async def test_put_returns_distinct_increasing_ids(queue: pq.Queue) -> None:
    ids = [await queue.put(i) for i in range(5)]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


@pytest.mark.parametrize("payload", PAYLOADS, ids=repr)
async def test_payload_round_trips(queue: pq.Queue, payload: object) -> None:
    job_id = await queue.put(payload)
    job = await queue.get_nowait()
    assert job is not None
    assert job.id == job_id
    assert job.payload == payload
    assert type(job.payload) is type(payload)
    info = await queue.job(job_id)
    assert info is not None
    assert info.payload == payload


async def test_tuple_payload_comes_back_as_list(queue: pq.Queue) -> None:
    await queue.put((1, 2))
    job = await queue.get_nowait()
    assert job is not None
    assert job.payload == [1, 2]


async def test_put_many_returns_ids_in_payload_order(queue: pq.Queue) -> None:
    ids = await queue.put_many([{"n": n} for n in range(10)])
    assert len(ids) == 10
    assert ids == sorted(ids)
    for n, job_id in enumerate(ids):
        info = await queue.job(job_id)
        assert info is not None
        assert info.payload == {"n": n}
        assert info.state is pq.JobState.QUEUED


async def test_put_many_takes_a_generator(queue: pq.Queue) -> None:
    ids = await queue.put_many(n for n in range(3))
    assert [(await queue.job(i)).payload for i in ids] == [0, 1, 2]  # type: ignore[union-attr]


async def test_put_many_of_nothing_writes_nothing(queue: pq.Queue) -> None:
    assert await queue.put_many([]) == []
    assert (await queue.stats()).total == 0


async def test_put_many_applies_options_to_every_job(queue: pq.Queue) -> None:
    ids = await queue.put_many(["a", "b"], priority=7, max_attempts=2)
    for job_id in ids:
        info = await queue.job(job_id)
        assert info is not None
        assert (info.priority, info.max_attempts) == (7, 2)


async def test_put_many_is_all_or_nothing(queue: pq.Queue) -> None:
    await queue.put("before")
    with pytest.raises(pq.SerializationError):
        await queue.put_many([{"n": 1}, {"n": 2}, {"bad": object()}, {"n": 4}])
    s = await queue.stats()
    assert s.total == 1
    assert [j.payload for j in await queue.list_jobs()] == ["before"]


async def test_put_many_rejects_non_iterables(queue: pq.Queue) -> None:
    for bad in (42, "abc", b"abc", {"a": 1}):
        with pytest.raises(pq.PersistQError) as info:
            await queue.put_many(bad)  # type: ignore[arg-type]
        assert isinstance(info.value, TypeError)
        assert "payloads" in str(info.value)
    assert (await queue.stats()).total == 0


async def test_higher_priority_first_then_fifo(queue: pq.Queue) -> None:
    order = [("low-1", 0), ("high-1", 5), ("low-2", 0), ("mid-1", 1), ("high-2", 5), ("neg", -3)]
    for payload, priority in order:
        await queue.put(payload, priority=priority)
    got = []
    while (job := await queue.get_nowait()) is not None:
        got.append(job.payload)
        await job.ack()
    assert got == ["high-1", "high-2", "mid-1", "low-1", "low-2", "neg"]


async def test_fifo_holds_across_put_many_and_put(queue: pq.Queue) -> None:
    await queue.put_many([1, 2, 3])
    await queue.put(4)
    await queue.put_many([5, 6])
    got = []
    while (job := await queue.get_nowait()) is not None:
        got.append(job.payload)
        await job.ack()
    assert got == [1, 2, 3, 4, 5, 6]


async def test_priority_bounds(queue: pq.Queue) -> None:
    await queue.put("min", priority=-(2**31))
    await queue.put("max", priority=2**31 - 1)
    first = await queue.get_nowait()
    assert first is not None
    assert first.payload == "max"
    assert first.priority == 2**31 - 1
    for bad in (2**31, -(2**31) - 1):
        with pytest.raises(ValueError, match="priority"):
            await queue.put("x", priority=bad)


async def test_delay_hides_a_job_until_due(cq: pq.Queue, clock: FakeClock) -> None:
    job_id = await cq.put("later", delay=30)
    await cq.put("now")
    job = await cq.get_nowait()
    assert job is not None
    assert job.payload == "now"
    await job.ack()
    assert await cq.get_nowait() is None
    clock.advance(29.9)
    assert await cq.get_nowait() is None
    clock.advance(0.1)
    job = await cq.get_nowait()
    assert job is not None
    assert job.id == job_id


async def test_delay_as_timedelta(cq: pq.Queue, clock: FakeClock) -> None:
    job_id = await cq.put("x", delay=timedelta(minutes=1))
    info = await cq.job(job_id)
    assert info is not None
    assert info.run_at == datetime.fromtimestamp(CLOCK_START + 60, tz=UTC)
    clock.advance(59)
    assert await cq.get_nowait() is None
    clock.advance(1)
    assert await cq.get_nowait() is not None


async def test_run_at_hides_a_job_until_then(cq: pq.Queue, clock: FakeClock) -> None:
    when = datetime.fromtimestamp(CLOCK_START + 100, tz=UTC).astimezone(
        # any aware zone is fine; the instant counts
        timezone_plus_two()
    )
    job_id = await cq.put("x", run_at=when)
    assert await cq.get_nowait() is None
    clock.advance(100)
    job = await cq.get_nowait()
    assert job is not None
    assert job.id == job_id


async def test_run_at_in_the_past_runs_at_once(cq: pq.Queue) -> None:
    await cq.put("x", run_at=datetime(2000, 1, 1, tzinfo=UTC))
    job = await cq.get_nowait()
    assert job is not None
    assert job.payload == "x"


async def test_short_real_delay_is_waited_for(queue: pq.Queue) -> None:
    before_put = anyio.current_time()
    await queue.put("soon", delay=0.2)
    assert await queue.get_nowait() is None
    with anyio.fail_after(3):
        job = await queue.get(timeout=3)
    assert job.payload == "soon"
    # Measured from before the put, so a slow machine cannot make the delay look shorter.
    assert anyio.current_time() - before_put >= 0.2


async def test_max_attempts_defaults_to_the_option(backend_url: str, queue_name: str) -> None:
    async with pq.Queue(backend_url, name=queue_name) as q:
        info = await q.job(await q.put("x"))
        assert info is not None
        assert info.max_attempts == 5
    async with pq.Queue(backend_url, name=queue_name, max_attempts=2) as q:
        info = await q.job(await q.put("y"))
        assert info is not None
        assert info.max_attempts == 2
        info = await q.job(await q.put("z", max_attempts=9))
        assert info is not None
        assert info.max_attempts == 9


async def test_new_job_fields(cq: pq.Queue) -> None:
    job_id = await cq.put({"a": 1}, priority=3, max_attempts=4, dedupe_key="k")
    info = await cq.job(job_id)
    assert info is not None
    start = datetime.fromtimestamp(CLOCK_START, tz=UTC)
    assert info.id == job_id
    assert info.queue == cq.name
    assert info.state is pq.JobState.QUEUED
    assert (info.priority, info.attempts, info.max_attempts) == (3, 0, 4)
    assert info.enqueued_at == info.created_at == info.run_at == start
    assert info.lease_expires_at is None
    assert info.finished_at is None
    assert info.last_error is None
    assert info.result is None
    assert info.dedupe_key == "k"
    assert info.history == []


# --- dedupe_key ----------------------------------------------------------------------------------


async def test_dedupe_key_returns_the_queued_job(queue: pq.Queue) -> None:
    first = await queue.put({"v": 1}, dedupe_key="user-42")
    second = await queue.put({"v": 2}, dedupe_key="user-42")
    assert second == first
    assert (await queue.stats()).queued == 1
    info = await queue.job(first)
    assert info is not None
    assert info.payload == {"v": 1}


async def test_dedupe_key_returns_the_running_job(queue: pq.Queue) -> None:
    first = await queue.put("a", dedupe_key="k")
    job = await queue.get_nowait()
    assert job is not None
    assert job.id == first
    assert await queue.put("b", dedupe_key="k") == first
    assert (await queue.stats()).total == 1


@pytest.mark.parametrize("finish", ["ack", "fail", "cancel"])
async def test_dedupe_key_is_free_again_once_finished(queue: pq.Queue, finish: str) -> None:
    first = await queue.put("a", dedupe_key="k")
    if finish == "cancel":
        assert await queue.cancel(first)
    else:
        job = await queue.get_nowait()
        assert job is not None
        await (job.ack() if finish == "ack" else job.fail(error="x"))
    second = await queue.put("b", dedupe_key="k")
    assert second != first
    assert (await queue.stats()).queued == 1


async def test_dedupe_key_other_key_or_no_key_adds_jobs(queue: pq.Queue) -> None:
    a = await queue.put("a", dedupe_key="k1")
    b = await queue.put("b", dedupe_key="k2")
    c = await queue.put("c")
    d = await queue.put("d")
    assert len({a, b, c, d}) == 4


async def test_dedupe_key_is_per_queue(backend_url: str, queue_name: str) -> None:
    async with (
        pq.Queue(backend_url, name=queue_name) as q1,
        pq.Queue(backend_url, name=queue_name + "-other") as q2,
    ):
        a = await q1.put("a", dedupe_key="k")
        b = await q2.put("b", dedupe_key="k")
        assert a != b
        assert (await q1.stats()).queued == 1
        assert (await q2.stats()).queued == 1


async def test_dedupe_key_in_put_many(queue: pq.Queue) -> None:
    existing = await queue.put("first", dedupe_key="k")
    ids = await queue.put_many(["x", "y"], dedupe_key="k")
    assert ids == [existing, existing]
    assert (await queue.stats()).total == 1


def timezone_plus_two():  # type: ignore[no-untyped-def]
    from datetime import timezone

    return timezone(timedelta(hours=2))
