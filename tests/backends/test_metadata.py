"""Job metadata: tags and headers on put and put_many, their limits, and finding jobs by tag."""

from __future__ import annotations

from typing import Any

import pytest

import persistq_async as pq
from persistq_async._jobmeta import MAX_HEADERS, MAX_HEADERS_BYTES, MAX_TAG_LENGTH, MAX_TAGS
from persistq_async.errors import ArgumentError, ArgumentTypeError


async def test_tags_and_headers_travel_with_the_job(queue: pq.Queue) -> None:
    job_id = await queue.put(
        {"n": 1}, tags=["billing", "eu", "billing"], headers={"trace": "abc", "ü": "ö"}
    )
    info = await queue.job(job_id)
    assert info is not None
    assert info.tags == ("billing", "eu")  # distinct, in the order given
    assert dict(info.headers) == {"trace": "abc", "ü": "ö"}
    job = await queue.get(timeout=5)
    assert job.id == job_id
    assert job.tags == ("billing", "eu")
    assert dict(job.headers) == {"trace": "abc", "ü": "ö"}
    with pytest.raises(TypeError):
        job.headers["x"] = "y"  # type: ignore[index]
    await job.ack()
    plain = await queue.put({"n": 2})
    info = await queue.job(plain)
    assert info is not None
    assert info.tags == ()
    assert dict(info.headers) == {}


async def test_put_many_gives_every_job_the_same_metadata(queue: pq.Queue) -> None:
    ids = await queue.put_many([{"n": i} for i in range(3)], tags=["batch"], headers={"k": "v"})
    infos = await queue.list_jobs(tags=["batch"])
    assert [i.id for i in infos] == ids
    assert all(dict(i.headers) == {"k": "v"} for i in infos)


async def test_list_jobs_by_tags(queue: pq.Queue) -> None:
    a = await queue.put({"n": "a"}, tags=["red", "big"])
    b = await queue.put({"n": "b"}, tags=["red"])
    c = await queue.put({"n": "c"}, tags=["re", "d"])  # a tag is matched whole
    d = await queue.put({"n": "d"}, tags=["50%_off", "x"])
    e = await queue.put({"n": "e"}, tags=["50Xoff"])  # LIKE wildcards are escaped
    await queue.put({"n": "f"})
    assert [i.id for i in await queue.list_jobs(tags=["red"])] == [a, b]
    assert [i.id for i in await queue.list_jobs(tags=["red", "big"])] == [a]
    assert [i.id for i in await queue.list_jobs(tags=["re"])] == [c]
    assert [i.id for i in await queue.list_jobs(tags=["50%_off"])] == [d]
    assert [i.id for i in await queue.list_jobs(tags=["50Xoff"])] == [e]
    assert await queue.list_jobs(tags=["nothing"]) == []
    assert len(await queue.list_jobs(tags=[])) == 6
    job = await queue.get(timeout=5)
    await job.ack()
    assert [i.id for i in await queue.list_jobs(state="done", tags=["red"])] == [a]
    assert [i.id for i in await queue.list_jobs(state="queued", tags=["red"])] == [b]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tags": "red"}, ArgumentTypeError, "tags: expected a list"),
        ({"tags": [1]}, ArgumentTypeError, "each tag must be a str"),
        ({"tags": [""]}, ArgumentError, "must not be empty"),
        ({"tags": ["x" * (MAX_TAG_LENGTH + 1)]}, ArgumentError, f"at most {MAX_TAG_LENGTH}"),
        ({"tags": ["a\x1fb"]}, ArgumentError, "control characters"),
        ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, ArgumentError, f"at most {MAX_TAGS}"),
        ({"headers": ["k", "v"]}, ArgumentTypeError, "headers: expected a dict"),
        ({"headers": {"k": 1}}, ArgumentTypeError, "must be a str"),
        ({"headers": {1: "v"}}, ArgumentTypeError, "names must be str"),
        ({"headers": {"": "v"}}, ArgumentError, "a name must be"),
        ({"headers": {"k\n": "v"}}, ArgumentError, "a name must be"),
        (
            {"headers": {f"h{i}": "v" for i in range(MAX_HEADERS + 1)}},
            ArgumentError,
            f"at most {MAX_HEADERS} headers",
        ),
        ({"headers": {"big": "x" * MAX_HEADERS_BYTES}}, ArgumentError, "bytes"),
    ],
)
async def test_bad_metadata_is_refused_and_nothing_is_written(
    queue: pq.Queue, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await queue.put({"n": 1}, **kwargs)
    with pytest.raises(error, match=match):
        await queue.put_many([{"n": 1}, {"n": 2}], **kwargs)
    if "tags" in kwargs:
        with pytest.raises(error, match=match):
            await queue.list_jobs(tags=kwargs["tags"])
    assert (await queue.stats()).total == 0


async def test_the_limits_themselves_are_accepted(queue: pq.Queue) -> None:
    tags = [f"{i:0{MAX_TAG_LENGTH}d}" for i in range(MAX_TAGS)]
    headers = {f"h{i}": "" for i in range(MAX_HEADERS - 1)}
    used = sum(len(k) for k in headers)
    headers["last"] = "v" * (MAX_HEADERS_BYTES - used - len("last"))
    job_id = await queue.put({"n": 1}, tags=tags, headers=headers)
    info = await queue.job(job_id)
    assert info is not None
    assert info.tags == tuple(tags)
    assert dict(info.headers) == headers
