"""Argument validation, serialization errors, queue names as data, isolation, QueueClosed."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

import persistq_async as pq

# (keyword arguments to put, the argument the message must name)
TYPE_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"priority": "high"}, "priority"),
    ({"priority": 1.5}, "priority"),
    ({"priority": True}, "priority"),
    ({"priority": None}, "priority"),
    ({"delay": "5"}, "delay"),
    ({"delay": True}, "delay"),
    ({"run_at": "2030-01-01T00:00:00Z"}, "run_at"),
    ({"run_at": 1_700_000_000}, "run_at"),
    ({"max_attempts": 2.0}, "max_attempts"),
    ({"max_attempts": "3"}, "max_attempts"),
    ({"dedupe_key": 42}, "dedupe_key"),
    ({"connection": "sqlite:///x.db"}, "connection"),
]

VALUE_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"delay": -1}, "delay"),
    ({"delay": timedelta(seconds=-1)}, "delay"),
    ({"delay": math.nan}, "delay"),
    ({"delay": math.inf}, "delay"),
    ({"delay": 1, "run_at": datetime(2030, 1, 1, tzinfo=UTC)}, "run_at"),
    ({"run_at": datetime(2030, 1, 1)}, "run_at"),  # naive
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": -5}, "max_attempts"),
    ({"dedupe_key": ""}, "dedupe_key"),
]

BAD_PAYLOADS: list[Any] = [
    object(),
    {1, 2},
    math.nan,
    math.inf,
    -math.inf,
    {1: "int key"},
    {("a",): "tuple key"},
    {"nested": [1, {"deeper": float("nan")}]},
    [b"bytes"],
    Decimal("1.5"),
    datetime(2030, 1, 1, tzinfo=UTC),
]


@pytest.mark.parametrize(("kwargs", "name"), TYPE_ERRORS, ids=lambda v: repr(v))
async def test_ill_typed_arguments_raise_a_type_error(
    queue: pq.Queue, kwargs: dict[str, Any], name: str
) -> None:
    for call in (queue.put("x", **kwargs), queue.put_many(["x", "y"], **kwargs)):
        with pytest.raises(pq.PersistQError) as info:
            await call
        assert isinstance(info.value, TypeError)
        assert name in str(info.value)
    assert (await queue.stats()).total == 0


@pytest.mark.parametrize(("kwargs", "name"), VALUE_ERRORS, ids=lambda v: repr(v))
async def test_bad_argument_values_raise_a_value_error(
    queue: pq.Queue, kwargs: dict[str, Any], name: str
) -> None:
    for call in (queue.put("x", **kwargs), queue.put_many(["x", "y"], **kwargs)):
        with pytest.raises(pq.PersistQError) as info:
            await call
        assert isinstance(info.value, ValueError)
        assert name in str(info.value)
    assert (await queue.stats()).total == 0


@pytest.mark.parametrize("payload", BAD_PAYLOADS, ids=repr)
async def test_non_json_payloads_raise_serialization_error(queue: pq.Queue, payload: Any) -> None:
    with pytest.raises(pq.SerializationError) as info:
        await queue.put(payload)
    assert isinstance(info.value, pq.PersistQError)
    assert "payload" in str(info.value)
    with pytest.raises(pq.SerializationError):
        await queue.put_many(["fine", payload])
    assert (await queue.stats()).total == 0


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda q: q.get(timeout=-1), "timeout"),
        (lambda q: q.get(timeout="1"), "timeout"),
        (lambda q: q.join(timeout=-1), "timeout"),
        (lambda q: q.job("1"), "job_id"),
        (lambda q: q.cancel(1.0), "job_id"),
        (lambda q: q.requeue(None), "job_id"),
        (lambda q: q.delete("x"), "job_id"),
        (lambda q: q.claim(0), "limit"),
    ],
)
async def test_other_argument_errors_name_the_argument(
    queue: pq.Queue, call: Any, name: str
) -> None:
    with pytest.raises(pq.PersistQError) as info:
        await call(queue)
    assert isinstance(info.value, (TypeError, ValueError))
    assert name in str(info.value)


async def test_job_method_argument_errors(queue: pq.Queue) -> None:
    job_id = await queue.put("x")
    job = await queue.get_nowait()
    assert job is not None
    with pytest.raises(ValueError, match="delay"):
        await job.nack(delay=-1)
    with pytest.raises(TypeError, match="delay"):
        await job.nack(delay="soon")
    with pytest.raises(ValueError, match="seconds"):
        await job.extend(0)
    with pytest.raises(ValueError, match="seconds"):
        await job.extend(-3)
    with pytest.raises(TypeError, match="seconds"):
        await job.extend(None)
    info = await queue.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.RUNNING
    await job.ack()


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("", ValueError),
        ("   ", ValueError),
        ("a\x00b", ValueError),
        ("x" * 201, ValueError),
        (None, TypeError),
        (5, TypeError),
    ],
    ids=repr,
)
def test_bad_queue_names_are_refused(backend_url: str, name: Any, kind: type[Exception]) -> None:
    with pytest.raises(pq.PersistQError) as info:
        pq.Queue(backend_url, name=name)
    assert isinstance(info.value, kind)
    assert "name" in str(info.value)


def test_unknown_or_ill_typed_options_raise_config_error(backend_url: str) -> None:
    with pytest.raises(pq.ConfigError, match="lease_secs"):
        pq.Queue(backend_url, lease_secs=3)
    with pytest.raises(pq.ConfigError, match="lease_seconds"):
        pq.Queue(backend_url, lease_seconds="long")
    with pytest.raises(pq.ConfigError, match="durability"):
        pq.Queue(backend_url, durability="sometimes")


@pytest.mark.parametrize(
    "name",
    [
        "'; DROP TABLE persistq_jobs; --",
        'q" OR 1=1 --',
        "100% _wild_ [card]",
        "back\\slash; SELECT * FROM persistq_meta",
        "émoji ☃ \U0001f600",
    ],
)
async def test_queue_names_with_sql_metacharacters_are_just_data(
    backend_url: str, queue_name: str, name: str
) -> None:
    unique = f"{name}-{queue_name}"
    async with (
        pq.Queue(backend_url, name=unique) as q,
        pq.Queue(backend_url, name=queue_name) as plain,
    ):
        bystander = await plain.put("bystander")
        job_id = await q.put({"n": 1}, dedupe_key=name)
        assert await q.put({"n": 2}, dedupe_key=name) == job_id
        job = await q.get_nowait()
        assert job is not None
        assert job.queue == unique
        await job.ack()
        [info] = await q.list_jobs(state="done")
        assert info.queue == unique
        assert info.id == job_id
        assert await q.purge("done") == 1
        assert (await q.stats()).total == 0
        assert [j.id for j in await plain.list_jobs()] == [bystander]


async def test_two_named_queues_in_one_database_are_isolated(
    backend_url: str, queue_name: str
) -> None:
    async with (
        pq.Queue(backend_url, name=queue_name + "-a") as a,
        pq.Queue(backend_url, name=queue_name + "-b") as b,
    ):
        a_ids = await a.put_many(["a1", "a2"])
        b_ids = await b.put_many(["b1"])
        job = await b.get_nowait()
        assert job is not None
        assert job.payload == "b1"
        assert await b.get_nowait() is None
        await job.ack()
        assert [j.id for j in await a.list_jobs()] == a_ids
        assert [j.id for j in await b.list_jobs()] == b_ids
        assert (await a.stats()).queued == 2
        assert (await b.stats()).done == 1
        assert await a.purge("done") == 0
        assert await b.cancel(b_ids[0]) is False
        with pytest.raises(pq.JobNotFound):
            await b.cancel(a_ids[0])


async def test_using_an_unopened_queue_raises_queue_closed(backend_url: str) -> None:
    q = pq.Queue(backend_url, name="unopened")
    with pytest.raises(pq.QueueClosed):
        await q.put("x")
    with pytest.raises(pq.QueueClosed):
        await q.get_nowait()
    with pytest.raises(pq.QueueClosed):
        await q.stats()
    assert not q.closed


async def test_using_a_closed_queue_raises_queue_closed(backend_url: str, queue_name: str) -> None:
    q = pq.Queue(backend_url, name=queue_name)
    async with q:
        await q.put("x")
        job = await q.get_nowait()
        assert job is not None
    assert q.closed
    calls = [
        lambda: q.put("x"),
        lambda: q.put_many(["x"]),
        lambda: q.get(timeout=1),
        lambda: q.get_nowait(),
        lambda: q.join(),
        lambda: q.stats(),
        lambda: q.job(1),
        lambda: q.list_jobs(),
        lambda: q.requeue(1),
        lambda: q.cancel(1),
        lambda: q.delete(1),
        lambda: q.purge("done"),
        lambda: q.clean(),
        lambda: job.ack(),
    ]
    for call in calls:
        with pytest.raises(pq.QueueClosed) as info:
            await call()
        assert isinstance(info.value, pq.PersistQError)
    await q.aclose()  # idempotent
    with pytest.raises(pq.QueueClosed):
        async with q:
            pass
    # async iteration simply ends on a closed queue
    assert [j async for j in q] == []


async def test_closing_keeps_committed_work(backend_url: str, queue_name: str) -> None:
    async with pq.Queue(backend_url, name=queue_name) as q:
        ids = await q.put_many(range(3))
        job = await q.get_nowait()
        assert job is not None
        await job.ack()
    async with pq.Queue(backend_url, name=queue_name) as q:
        s = await q.stats()
        assert (s.queued, s.running, s.done) == (2, 0, 1)
        assert [j.id for j in await q.list_jobs()] == ids


async def test_a_queue_opened_in_one_task_closes_in_another(
    backend_url: str, queue_name: str
) -> None:
    import asyncio

    # pytest-asyncio sets up and tears down an async-generator fixture in different tasks;
    # users' fixtures must be able to do the same.
    q = pq.Queue(backend_url, name=queue_name)
    await asyncio.ensure_future(q.__aenter__())
    try:
        job_id = await q.put("x")
    finally:
        await asyncio.ensure_future(q.aclose())
    assert q.closed
    async with pq.Queue(backend_url, name=queue_name) as again:
        info = await again.job(job_id)
        assert info is not None
        assert info.payload == "x"
