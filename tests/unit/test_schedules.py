"""Schedule timing without a database: parsing, ticks, daylight-saving days, catch-up plans."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import persistq_async as pq
from persistq_async.schedules import CatchUp, Timing, plan_ticks


def local_ticks(timing: Timing, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """The ticks in [start, end), as local times of ``zone``."""
    out = []
    for tick in timing.ticks_after(start.timestamp() - 1):
        if tick >= end.timestamp():
            break
        if tick >= start.timestamp():
            out.append(datetime.fromtimestamp(tick, tz=ZoneInfo(zone)))
    return out


# ---------------------------------------------------------------------- parsing


@pytest.mark.parametrize("cron", ["61 * * * *", "* * *", "a b c d e", "* * * * * * *", ""])
def test_a_malformed_cron_expression_is_a_config_error_naming_it(cron: str) -> None:
    with pytest.raises(pq.ConfigError, match=r"^cron: malformed expression") as caught:
        Timing.parse(cron, None, "UTC")
    assert repr(cron) in str(caught.value)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Europe/Berlin/x", "../etc/passwd", ""])
def test_an_unknown_time_zone_is_a_config_error_naming_it(zone: str) -> None:
    with pytest.raises(pq.ConfigError, match=r"^timezone: unknown IANA time zone") as caught:
        Timing.parse("0 3 * * *", None, zone)
    assert repr(zone) in str(caught.value)


def test_exactly_one_of_cron_and_every() -> None:
    with pytest.raises(pq.ArgumentError, match="exactly one"):
        Timing.parse(None, None, "UTC")
    with pytest.raises(pq.ArgumentError, match="exactly one"):
        Timing.parse("* * * * *", 60, "UTC")


def test_every_takes_seconds_or_a_timedelta_of_at_least_one_second() -> None:
    assert Timing.parse(None, timedelta(minutes=5), "UTC").every == 300.0
    assert Timing.parse(None, 2, "UTC").every == 2.0
    with pytest.raises(pq.ArgumentError, match="every"):
        Timing.parse(None, 0.5, "UTC")
    with pytest.raises(pq.ArgumentTypeError, match="every"):
        Timing.parse(None, "60", "UTC")


def test_cron_whitespace_is_normalised_and_seconds_come_first() -> None:
    timing = Timing.parse("  */15   * * * * * ", None, "UTC")
    assert timing.cron == "*/15 * * * * *"
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    ticks = timing.ticks_after(start)
    assert [next(ticks) - start for _ in range(3)] == [15.0, 30.0, 45.0]


def test_interval_ticks_are_multiples_of_every_since_the_epoch() -> None:
    timing = Timing.parse(None, 60, "UTC")
    assert timing.next_after(119.5) == 120.0
    assert timing.next_after(120.0) == 180.0
    assert list(zip(range(2), timing.ticks_before(120.0), strict=False)) == [(0, 60.0), (1, 0.0)]


# ---------------------------------------------------------------------- daylight saving


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        # Europe/Berlin skips 02:00-03:00 on 2026-03-29: the 02:30 job runs once, at 03:00.
        ("Europe/Berlin", datetime(2026, 3, 29), ["2026-03-29T03:00:00+02:00"]),
        # ... and repeats 02:00-03:00 on 2026-10-25: it runs once, at the first 02:30.
        ("Europe/Berlin", datetime(2026, 10, 25), ["2026-10-25T02:30:00+02:00"]),
        # America/New_York skips 02:00-03:00 on 2026-03-08.
        ("America/New_York", datetime(2026, 3, 8), ["2026-03-08T03:00:00-04:00"]),
    ],
)
def test_a_fixed_time_job_runs_once_on_a_day_that_skips_or_repeats_it(
    zone: str, day: datetime, expected: list[str]
) -> None:
    timing = Timing.parse("30 2 * * *", None, zone)
    start = day.replace(tzinfo=ZoneInfo(zone))
    ticks = local_ticks(timing, zone, start, start + timedelta(days=1))
    assert [t.isoformat() for t in ticks] == expected


def test_a_fixed_time_in_the_repeated_hour_of_new_york_runs_once() -> None:
    # New York repeats 01:00-02:00 on 2026-11-01.
    zone = "America/New_York"
    timing = Timing.parse("30 1 * * *", None, zone)
    start = datetime(2026, 11, 1, tzinfo=ZoneInfo(zone))
    ticks = local_ticks(timing, zone, start, start + timedelta(days=1))
    assert [t.isoformat() for t in ticks] == ["2026-11-01T01:30:00-04:00"]


def test_an_hourly_job_follows_the_clock_through_both_changes() -> None:
    zone = "Europe/Berlin"
    timing = Timing.parse("30 * * * *", None, zone)
    spring = datetime(2026, 3, 29, tzinfo=ZoneInfo(zone))
    autumn = datetime(2026, 10, 25, tzinfo=ZoneInfo(zone))
    # 23 hours that day, 25 the other: an hourly job runs 23 and 25 times, one an hour.
    assert len(local_ticks(timing, zone, spring, spring + timedelta(days=1))) == 23
    autumn_ticks = local_ticks(timing, zone, autumn, autumn + timedelta(days=1))
    assert len(autumn_ticks) == 25
    gaps = {b.timestamp() - a.timestamp() for a, b in itertools.pairwise(autumn_ticks)}
    assert gaps == {3600.0}


def test_utc_has_no_daylight_saving_surprises() -> None:
    timing = Timing.parse("30 2 * * *", None, "UTC")
    start = datetime(2026, 3, 29, tzinfo=UTC)
    assert len(local_ticks(timing, "UTC", start, start + timedelta(days=3))) == 3


# ---------------------------------------------------------------------- catch-up plans

EVERY_MINUTE = Timing.parse(None, 60, "UTC")
T0 = 1_800_000_000.0  # a multiple of 60


def plan(catch_up: str, *, down_for: float, limit: int = 100, grace: float = 10.0) -> object:
    return plan_ticks(
        EVERY_MINUTE,
        next_run_at=T0,
        now=T0 + down_for,
        catch_up=CatchUp(catch_up),
        catch_up_limit=limit,
        misfire_grace=grace,
    )


def test_nothing_is_due_before_the_next_tick() -> None:
    result = plan_ticks(
        EVERY_MINUTE,
        next_run_at=T0,
        now=T0 - 1,
        catch_up=CatchUp.ALL,
        catch_up_limit=5,
        misfire_grace=10,
    )
    assert result.ticks == []
    assert result.next_run_at == T0


@pytest.mark.parametrize("policy", ["skip", "latest", "all"])
def test_a_late_tick_within_the_grace_is_enqueued_whatever_the_policy(policy: str) -> None:
    result = plan(policy, down_for=5.0)
    assert result.ticks == [T0]  # type: ignore[attr-defined]
    assert result.next_run_at == T0 + 60  # type: ignore[attr-defined]
    assert result.skipped == 0  # type: ignore[attr-defined]


def test_after_a_downtime_skip_enqueues_none_of_the_missed_ticks() -> None:
    result = plan("skip", down_for=3600 + 5)  # an hour and 5 s: 61 ticks fell, one is late
    assert result.ticks == [T0 + 3600]  # type: ignore[attr-defined]
    assert result.skipped == 60  # type: ignore[attr-defined]
    assert result.next_run_at == T0 + 3660  # type: ignore[attr-defined]


def test_after_a_downtime_latest_enqueues_the_most_recent_missed_tick() -> None:
    result = plan("latest", down_for=3600 + 30)  # the tick at +3600 is 30 s old: missed
    assert result.ticks == [T0 + 3600]  # type: ignore[attr-defined]
    assert result.skipped == 60  # type: ignore[attr-defined]


def test_after_a_downtime_all_enqueues_every_missed_tick_up_to_the_bound() -> None:
    result = plan("all", down_for=600 + 30)
    assert result.ticks == [T0 + 60 * k for k in range(11)]  # type: ignore[attr-defined]
    bounded = plan("all", down_for=3600 + 30, limit=5)
    assert bounded.ticks == [T0 + 60 * k for k in range(56, 61)]  # type: ignore[attr-defined]
    assert bounded.skipped == 56  # type: ignore[attr-defined]


def test_a_week_of_missed_per_second_ticks_is_planned_without_walking_them() -> None:
    timing = Timing.parse("* * * * * *", None, "Europe/Berlin")
    now = T0 + 7 * 86400 + 0.5
    result = plan_ticks(
        timing,
        next_run_at=T0,
        now=now,
        catch_up=CatchUp.ALL,
        catch_up_limit=3,
        misfire_grace=2,
    )
    ticks = result.ticks
    # three missed (older than 2 s) and the two late ones within the grace
    assert ticks == [now - 0.5 - k for k in (4, 3, 2, 1, 0)]
    assert result.next_run_at == now + 0.5
