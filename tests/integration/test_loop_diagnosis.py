"""Issue 13: a blocked event loop is blamed on a handler only when that handler held it.

A handler is named by its own timed steps; a loop held by other code (here: another task of the
same process calling ``time.sleep``) is reported as lag, naming no job.
"""

from __future__ import annotations

import logging
import time

import anyio
import pytest

import persistq_async as pq

from ._support import records

pytestmark = pytest.mark.timeout(60)


async def test_a_handler_calling_blocking_code_is_named(
    queue: pq.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="persistq_async")
    done = anyio.Event()

    async def handler(job: pq.Job) -> None:
        if job.payload["blocks"]:
            time.sleep(0.6)  # noqa: ASYNC251 - the blocking call under test
        else:
            for _ in range(20):
                await anyio.sleep(0.005)
        if job.payload["last"]:
            done.set()

    innocent = await queue.put_many([{"blocks": False, "last": False}] * 5)
    culprit = await queue.put({"blocks": True, "last": False})
    await queue.put({"blocks": False, "last": True})
    async with pq.Supervisor(block_threshold=0.3) as sup:
        await sup.add(queue, handler, concurrency=8)
        with anyio.fail_after(20):
            await done.wait()
            await queue.join()
        assert sup.pools[queue.name].blocked_seconds >= 0.5

    blocking = records(caplog, "job_blocking")
    assert [r.job_id for r in blocking] == [culprit]  # type: ignore[attr-defined]
    assert blocking[0].queue == queue.name  # type: ignore[attr-defined]
    assert blocking[0].blocked_seconds >= 0.5  # type: ignore[attr-defined]
    assert str(culprit) in blocking[0].getMessage()
    assert not set(innocent) & {getattr(r, "job_id", None) for r in caplog.records}
    for lag in records(caplog, "loop_lag"):
        assert not hasattr(lag, "job_id")


async def test_a_loop_blocked_elsewhere_names_no_handler(
    queue: pq.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    # The case: the loop is busy with other work (there: serving HTTP; here another
    # task calling time.sleep) while innocent handlers wait on short sleeps.
    caplog.set_level(logging.WARNING, logger="persistq_async")
    handlers_running = anyio.Event()
    stop = anyio.Event()

    async def innocent(job: pq.Job) -> None:
        handlers_running.set()
        while not stop.is_set():  # noqa: ASYNC110 - the issue's handler: many 1 ms sleeps
            await anyio.sleep(0.001)

    await queue.put_many([{"n": n} for n in range(8)])
    async with pq.Supervisor(block_threshold=0.3, grace=5) as sup:
        await sup.add(queue, innocent, concurrency=8)
        with anyio.fail_after(10):
            await handlers_running.wait()
            while sup.pools[queue.name].active < 8:  # noqa: ASYNC110 - no event to await
                await anyio.sleep(0.01)
        for _ in range(2):
            time.sleep(0.7)  # noqa: ASYNC251 - the busy loop elsewhere
            await anyio.sleep(0.6)  # the watchdog ticks (every 0.25 s) and sees the lag
        assert sup.pools[queue.name].active == 8
        assert sup.pools[queue.name].blocked_seconds == 0.0
        stop.set()
        with anyio.fail_after(10):
            await queue.join()

    assert records(caplog, "job_blocking") == []
    lags = records(caplog, "loop_lag")
    assert len(lags) >= 1
    for lag in lags:
        assert lag.levelno == logging.WARNING
        assert lag.lag_seconds >= 0.3  # type: ignore[attr-defined]
        assert lag.handler_seconds == 0.0  # type: ignore[attr-defined]
        assert not hasattr(lag, "job_id")
        assert "job" not in lag.getMessage()
