"""Alerting inside a running Supervisor: real clock, real restarts, the lease given up at exit."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select

import persistq_async as pq
from persistq_async.errors import DatabaseError
from persistq_async.schema import alert_lease, pool_restarts
from persistq_async.testing import read_connection

from ._support import records

pytestmark = pytest.mark.timeout(60)


async def count(q: pq.Queue, table: Any) -> int:
    async with read_connection(q) as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_a_crashed_claim_loop_is_recorded_and_alerted(
    queue: pq.Queue, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    fired = anyio.Event()
    seen: list[pq.Alert] = []

    async def sink(alert: pq.Alert) -> None:
        seen.append(alert)
        fired.set()

    real_claim = queue.claim
    crashes = {"left": 1}

    async def claim(limit: int, **kw: Any) -> Any:
        if crashes["left"]:
            crashes["left"] -= 1
            raise DatabaseError("the database went away (injected)")
        return await real_claim(limit, **kw)

    monkeypatch.setattr(queue, "claim", claim)

    async def handler(job: pq.Job) -> None:
        return None

    rule = pq.PoolRestartsRule(name="restarts", window=60, pool="mailers")
    alerting = pq.Alerting(rules=(rule,), sinks=(sink,), interval=0.05)
    async with pq.Supervisor(alerts=alerting) as sup:
        await sup.add(queue, handler, name="mailers")
        with anyio.fail_after(10):
            await fired.wait()
        assert sup.pools["mailers"].restarts == 1
        job_id = await queue.put({"after": "restart"})
        with anyio.fail_after(10):
            await queue.join()
        assert (await queue.job(job_id)).state == pq.JobState.DONE  # type: ignore[union-attr]
        assert await count(queue, pool_restarts) == 1
        assert await count(queue, alert_lease) == 1
    # Leaving the block gave the evaluator lease up, so another process takes over at once.
    assert await count(queue, alert_lease) == 0

    (alert,) = seen
    assert (alert.rule, alert.status, alert.value) == ("restarts", "firing", 1.0)
    assert len(records(caplog, "alert_firing")) == 1
    assert len(records(caplog, "alert_lease_taken")) == 1


async def test_queue_lag_fires_in_a_supervisor_with_a_real_clock(
    queue: pq.Queue, queue_name: str
) -> None:
    fired = anyio.Event()
    resolved = anyio.Event()

    async def sink(alert: pq.Alert) -> None:
        (fired if alert.status == "firing" else resolved).set()

    gate = anyio.Event()

    async def handler(job: pq.Job) -> None:
        await gate.wait()

    rule = pq.QueueLagRule(name="lag", queue=queue_name, above=0.2, for_seconds=0.2)
    alerting = pq.Alerting(rules=[rule], sinks=[sink], interval=0.05)
    async with pq.Supervisor(alerts=alerting) as sup:
        await sup.add(queue, handler, concurrency=1)
        await queue.put_many([{"n": 1}, {"n": 2}])  # the second waits behind the first
        with anyio.fail_after(10):
            await fired.wait()
        assert not resolved.is_set()
        gate.set()
        with anyio.fail_after(10):
            await resolved.wait()


async def test_no_worker_rule_reads_the_worker_registry(
    backend_url: str, queue: pq.Queue, queue_name: str
) -> None:
    # The supervisor consumes another queue only: nobody works on ``queue`` until a pool is
    # added for it; the registry (refreshed every 0.1 s here) then lists a live worker.
    fired = anyio.Event()
    resolved = anyio.Event()
    seen: list[pq.Alert] = []

    async def sink(alert: pq.Alert) -> None:
        seen.append(alert)
        (fired if alert.status == "firing" else resolved).set()

    async def handler(job: pq.Job) -> None:
        return None

    rule = pq.NoWorkerRule(name="nobody", queue=queue_name, for_seconds=0.3)
    alerting = pq.Alerting(rules=[rule], sinks=[sink], interval=0.05)
    async with (
        pq.Queue(backend_url, name=f"{queue_name}-other") as other,
        pq.Supervisor(alerts=alerting, registry_interval=0.1) as sup,
    ):
        await sup.add(other, handler)
        with anyio.fail_after(10):
            await fired.wait()
        assert not resolved.is_set()
        await sup.add(queue, handler)
        with anyio.fail_after(10):
            await resolved.wait()
    assert [(a.status, a.value) for a in seen] == [("firing", 0.0), ("resolved", 1.0)]


async def test_removing_the_last_pool_of_a_database_gives_its_lease_up(
    queue: pq.Queue,
) -> None:
    async def handler(job: pq.Job) -> None:
        return None

    alerting = pq.Alerting(rules=[pq.WalSizeRule(name="wal", above=10**12)], interval=0.05)
    async with pq.Supervisor(alerts=alerting) as sup:
        await sup.add(queue, handler, name="only")
        with anyio.fail_after(10):
            while await count(queue, alert_lease) == 0:  # noqa: ASYNC110 - a row in the database
                await anyio.sleep(0.02)
        await sup.remove("only")
        with anyio.fail_after(10):
            while await count(queue, alert_lease) == 1:  # noqa: ASYNC110
                await anyio.sleep(0.02)
