"""Periodic jobs on each backend: declaring, listing, pausing, firing each tick once, catch-up.

Firing is driven by hand here (``Scheduler.tick`` with an injected clock); the supervisor
service and several worker processes are in ``tests/integration/test_scheduler_processes.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import anyio
import pytest
from sqlalchemy import text

import persistq_async as pq
from persistq_async import schema
from persistq_async.scheduler import Scheduler
from persistq_async.testing import read_connection
from tests.conftest import FakeClock

#: A clock start on a whole minute, so interval ticks are easy to name; in the past, like
#: tests.conftest.CLOCK_START, so the cleaning it drives touches no other test's rows.
START = 1_700_000_040.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START + 0.25)


@pytest.fixture
async def sq(backend_url: str, queue_name: str, clock: FakeClock) -> AsyncIterator[pq.Queue]:
    async with pq.Queue(backend_url, name=queue_name, clock=clock, poll_interval=0.05) as q:
        yield q


async def fire(*queues: pq.Queue) -> None:
    await Scheduler(lambda: list(queues)).tick()


async def jobs_of(q: pq.Queue) -> list[pq.JobInfo]:
    return await q.list_jobs(limit=10_000)


async def test_a_schedule_is_stored_listed_and_removed(sq: pq.Queue) -> None:
    info = await sq.schedule(
        "report",
        cron="0 3 * * *",
        payload={"kind": "daily"},
        priority=4,
        max_attempts=2,
        tags=["reports"],
        timezone="Europe/Paris",
        catch_up="all",
        catch_up_limit=7,
    )
    assert info.name == "report"
    assert info.queue == sq.name
    assert info.spec == "cron '0 3 * * *' Europe/Paris"
    assert info.payload == {"kind": "daily"}
    assert (info.priority, info.max_attempts, info.tags) == (4, 2, ("reports",))
    assert (info.catch_up, info.catch_up_limit, info.paused) == ("all", 7, False)
    assert info.next_run_at is not None
    local = info.next_run_at.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) == (3, 0)
    assert info.last_tick_at is None
    assert [s.name for s in await sq.schedules()] == ["report"]
    assert await sq.unschedule("report") is True
    assert await sq.unschedule("report") is False
    assert await sq.schedules() == []


async def test_declaring_the_same_schedule_again_changes_nothing(
    sq: pq.Queue, clock: FakeClock
) -> None:
    first = await sq.schedule("tick", every=60, payload=1)
    clock.advance(30)
    again = await sq.schedule("tick", every=60, payload=1)
    assert again == first
    clock.advance(1)
    changed = await sq.schedule("tick", every=60, payload=2)  # not the timing: same next tick
    assert changed.payload == 2
    assert changed.next_run_at == first.next_run_at
    assert changed.updated_at > first.updated_at
    retimed = await sq.schedule("tick", every=3600, payload=2)
    assert retimed.next_run_at == datetime.fromtimestamp((START // 3600 + 1) * 3600, tz=UTC)


async def test_schedule_names_are_unique_per_queue_not_per_database(
    sq: pq.Queue, backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with pq.Queue(backend_url, name=queue_name + "-other", clock=clock) as other:
        await sq.schedule("same", every=60)
        await other.schedule("same", every=120)
        assert [s.every for s in await sq.schedules()] == [60.0]
        assert [s.every for s in await other.schedules()] == [120.0]
        await other.unschedule("same")
    assert len(await sq.schedules()) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cron": "61 * * * *"}, pq.ConfigError, "cron: malformed expression '61 \\* \\* \\* \\*'"),
        ({"cron": "0 3 * * *", "timezone": "Europe/Atlantis"}, pq.ConfigError, "Europe/Atlantis"),
        ({}, pq.ArgumentError, "exactly one"),
        ({"every": 60, "catch_up": "sometimes"}, pq.ArgumentError, "catch_up"),
        ({"every": 60, "catch_up_limit": 0}, pq.ArgumentError, "catch_up_limit"),
        ({"every": 60, "tags": "one"}, pq.ArgumentTypeError, "tags"),
        ({"every": 60, "payload": {1, 2}}, pq.SerializationError, "."),
        ({"every": 60, "priority": 2**40}, pq.ArgumentError, "priority"),
    ],
)
async def test_a_bad_schedule_is_refused_and_nothing_is_written(
    sq: pq.Queue, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await sq.schedule("bad", **kwargs)  # type: ignore[arg-type]
    assert await sq.schedules() == []


async def test_each_tick_is_one_job_that_keeps_its_tick_as_run_at(
    sq: pq.Queue, clock: FakeClock
) -> None:
    await sq.schedule("tick", every=60, payload={"n": 1}, priority=3)
    await fire(sq)
    assert await jobs_of(sq) == []  # the first tick is after the declaration
    clock.advance(60 + 4)  # 4 s late
    await fire(sq)
    await fire(sq)
    (job,) = await jobs_of(sq)
    assert job.run_at == datetime.fromtimestamp(START + 60, tz=UTC)
    assert job.enqueued_at == datetime.fromtimestamp(START + 64.25, tz=UTC)
    assert job.dedupe_key == "schedule:tick@2023-11-14T22:15:00Z"
    assert (job.payload, job.priority, job.max_attempts) == ({"n": 1}, 3, sq.options.max_attempts)
    (info,) = await sq.schedules()
    assert info.last_tick_at == job.run_at
    assert info.next_run_at == datetime.fromtimestamp(START + 120, tz=UTC)


async def test_two_schedulers_racing_on_one_database_enqueue_each_tick_once(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    queues = [pq.Queue(backend_url, name=queue_name, clock=clock) for _ in range(3)]
    async with queues[0], queues[1], queues[2]:
        await queues[0].schedule("tick", every=1, catch_up="all")
        for _ in range(20):
            clock.advance(1)
            async with anyio.create_task_group() as tg:
                for q in queues:
                    tg.start_soon(fire, q)
        found = await jobs_of(queues[0])
        runs = [j.run_at.timestamp() for j in found]
        assert runs == [START + k for k in range(1, 21)]
        assert len({j.dedupe_key for j in found}) == 20


async def test_a_tick_already_enqueued_is_never_enqueued_again(
    sq: pq.Queue, clock: FakeClock
) -> None:
    await sq.schedule("tick", every=60)
    clock.advance(60)
    await fire(sq)
    # The schedule is deleted and declared again while its clock is behind (another machine):
    # its next tick is one that was already enqueued.
    await sq.unschedule("tick")
    clock.advance(-30)
    await sq.schedule("tick", every=60)
    clock.advance(31)
    await fire(sq)
    assert [j.run_at.timestamp() for j in await jobs_of(sq)] == [START + 60]


async def test_a_paused_schedule_does_not_fire_and_resumes_from_now(
    sq: pq.Queue, clock: FakeClock
) -> None:
    await sq.schedule("tick", every=60, catch_up="all")
    await sq.pause_schedule("tick")
    (info,) = await sq.schedules()
    assert info.paused
    assert info.next_run_at is None
    clock.advance(600)
    await fire(sq)
    assert await jobs_of(sq) == []
    # declaring it again (a worker restarting) leaves it paused
    await sq.schedule("tick", every=60, catch_up="all")
    assert (await sq.schedules())[0].paused
    await sq.resume_schedule("tick")
    clock.advance(60)
    await fire(sq)
    assert [j.run_at.timestamp() for j in await jobs_of(sq)] == [START + 660]
    with pytest.raises(pq.ArgumentError, match="no schedule 'nope'"):
        await sq.pause_schedule("nope")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # down from START to START + 3600 + 5: ticks at +60 ... +3600 fell, +3600 is 5 s late
        ("skip", [3600]),
        ("latest", [3540, 3600]),
        ("all", [3600 - 60 * k for k in range(4, -1, -1)]),
    ],
)
async def test_catch_up_after_a_downtime(
    sq: pq.Queue, clock: FakeClock, policy: str, expected: list[int]
) -> None:
    await sq.schedule("tick", every=60, catch_up=policy, catch_up_limit=4)
    clock.advance(3600 + 5 - 0.25)
    await fire(sq)
    assert [j.run_at.timestamp() - START for j in await jobs_of(sq)] == expected
    (info,) = await sq.schedules()
    assert info.next_run_at == datetime.fromtimestamp(START + 3660, tz=UTC)


async def test_a_daily_job_runs_once_on_the_daylight_saving_days_of_its_zone(
    sq: pq.Queue, clock: FakeClock
) -> None:
    zone = ZoneInfo("Europe/Berlin")
    clock.now = datetime(2026, 3, 28, 12, tzinfo=zone).timestamp()
    await sq.schedule("night", cron="30 2 * * *", timezone="Europe/Berlin")
    for _ in range(2 * 24 * 4):  # two days, every 15 minutes
        clock.advance(900)
        await fire(sq)
    clock.now = datetime(2026, 10, 24, 12, tzinfo=zone).timestamp()
    await sq.schedule("night", cron="30 2 * * *", timezone="Europe/Paris")  # re-timed
    for _ in range(2 * 25 * 4):
        clock.advance(900)
        await fire(sq)
    local = [j.run_at.astimezone(zone).isoformat() for j in await jobs_of(sq)]
    assert local == [
        "2026-03-29T03:00:00+02:00",  # 02:30 did not exist: once, right after the jump
        "2026-03-30T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",  # 02:30 happened twice: once, the first time
        "2026-10-26T02:30:00+01:00",
    ]


async def test_a_schedule_fires_for_the_queue_it_belongs_to_only(
    sq: pq.Queue, backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with pq.Queue(backend_url, name=queue_name + "-b", clock=clock) as other:
        await other.schedule("tick", every=60)
        clock.advance(61)
        await fire(sq)  # a scheduler for sq only
        assert await jobs_of(other) == []
        await fire(other)
        assert len(await jobs_of(other)) == 1
        assert await jobs_of(sq) == []


async def test_tick_rows_past_retention_are_cleaned(
    backend_url: str, queue_name: str, clock: FakeClock
) -> None:
    async with pq.Queue(backend_url, name=queue_name, clock=clock, retention_seconds=100) as q:
        await q.schedule("tick", every=60)
        clock.advance(60)
        await fire(q)
        clock.advance(200)
        assert await q.store.clean_ticks(clock() - 100) >= 1
        async with read_connection(q) as conn:
            left = await conn.execute(
                text("SELECT count(*) FROM persistq_ticks WHERE queue = :q"), {"q": q.name}
            )
            assert left.scalar_one() == 0


async def test_a_version_1_database_is_migrated_and_keeps_its_jobs(v1_url: str) -> None:
    # The first release's database (tests/conftest.py: v1_url) gains the schedules tables.
    async with pq.Queue(v1_url, name="legacy") as q:
        assert [i.payload["n"] for i in await q.list_jobs()] == [1, 2, 3, 4, 5]
        await q.schedule("tick", every=60)
        assert [s.name for s in await q.schedules()] == ["tick"]
        health = await q.health(require_workers=False, max_lag=10**9)
        assert health.schema_version == schema.SCHEMA_VERSION


async def test_a_schedule_s_tags_are_its_jobs_tags(sq: pq.Queue, clock: FakeClock) -> None:
    await sq.schedule("tagged", every=60, payload=1, tags=["reports", "nightly"])
    clock.advance(61)
    await fire(sq)
    (job,) = await jobs_of(sq)
    assert job.tags == ("reports", "nightly")
    assert [j.id for j in await sq.list_jobs(tags=["nightly"])] == [job.id]
