"""The scheduler as a Supervisor service, in one process, on each backend."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio
import pytest

import persistq_async as pq
from tests.conftest import FakeClock

from ._support import records

pytestmark = pytest.mark.timeout(60)


async def test_a_schedule_declared_while_a_supervisor_runs_is_fired_by_it(
    backend_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    got: list[pq.Job] = []
    two = anyio.Event()

    async def handler(job: pq.Job) -> None:
        got.append(job)
        if len(got) == 2:
            two.set()

    async with pq.Queue(backend_url, name=queue_name, poll_interval=0.05) as q:
        async with pq.Supervisor() as sup:
            await sup.add(q, handler)
            await q.schedule("beat", every=1, payload="beat")
            with anyio.fail_after(10):
                await two.wait()
        ticks = [job.run_at for job in got[:2]]
        assert ticks[1].timestamp() - ticks[0].timestamp() == 1.0
        assert all(t.microsecond == 0 for t in ticks)
        assert [job.dedupe_key for job in got[:2]] == [
            f"schedule:beat@{t.isoformat().replace('+00:00', 'Z')}" for t in ticks
        ]
    fired = records(caplog, "schedule_fired")
    assert len(fired) >= 2
    assert fired[0].schedule == "beat"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("policy", "expected"), [("skip", 0), ("latest", 1), ("all", 5)])
async def test_a_supervisor_started_after_a_downtime_catches_up_by_the_policy(
    backend_url: str, queue_name: str, clock: FakeClock, policy: str, expected: int
) -> None:
    async def handler(job: pq.Job) -> None:
        pass

    clock.now = 1_700_000_040.0  # a whole minute
    async with pq.Queue(backend_url, name=queue_name, clock=clock, poll_interval=0.05) as q:
        await q.schedule("minute", every=60, catch_up=policy, catch_up_limit=5)
        clock.advance(3600 + 30)  # an hour with no worker: 60 ticks missed
        # Read before the supervisor starts: its scheduler may fire at once, before any read
        # made after it started.
        before = (await q.schedules())[0].next_run_at
        async with pq.Supervisor() as sup:
            await sup.add(q, handler)
            with anyio.fail_after(10):  # the firing moves next_run_at, whatever the policy
                while (await q.schedules())[0].next_run_at == before:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            await q.join(timeout=10)
        done = await q.list_jobs()
        assert len(done) == expected
        runs = sorted(j.run_at for j in done)
        last = datetime.fromtimestamp(1_700_000_040.0 + 3600, tz=UTC)
        if expected:
            assert runs[-1] == last
            assert [r.timestamp() for r in runs] == [
                last.timestamp() - 60 * k for k in range(expected - 1, -1, -1)
            ]
        (info,) = await q.schedules()
        assert info.next_run_at == datetime.fromtimestamp(last.timestamp() + 60, tz=UTC)
