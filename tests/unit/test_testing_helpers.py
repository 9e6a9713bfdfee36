"""persistq_async.testing: the helpers users' own tests rely on."""

from __future__ import annotations

import pytest

import persistq_async as pq
from persistq_async.testing import drain, temporary_queue


async def test_temporary_queue_and_drain() -> None:
    async with temporary_queue(name="t", backoff_base=0.0, max_attempts=2) as q:
        ok = await q.put({"n": 1})
        flaky = await q.put({"n": 2})
        rejected = await q.put({"n": 3})

        async def handler(job: pq.Job) -> int:
            if job.payload["n"] == 2 and job.attempts == 1:
                raise RuntimeError("first try fails")
            if job.payload["n"] == 3:
                raise pq.Reject("bad")
            return int(job.payload["n"]) * 10

        results = await drain(q, handler)
        assert results == {ok: 10, flaky: 20}
        info = await q.job(rejected)
        assert info is not None
        assert info.state is pq.JobState.DEAD
        assert info.last_error == "rejected: bad"
        assert (await q.stats()).done == 2
    assert q.closed


async def test_drain_validates() -> None:
    async with temporary_queue() as q:
        with pytest.raises(pq.ArgumentTypeError, match="coroutine"):
            await drain(q, lambda job: None)  # type: ignore[arg-type,return-value]
