"""Schedules: what a periodic job is, when its ticks fall, and which missed ticks run.

A schedule fires on the ticks of a cron expression (five fields, or six with seconds first,
parsed by `cronsim <https://pypi.org/project/cronsim/>`_, in an IANA time zone) or of a fixed
interval (multiples of ``every`` seconds since the epoch, so every process computes the same
ticks). The database stores the next tick due; the scheduler service of every supervisor fires
due ticks, and a unique key (schedule, tick) written in the same transaction as the job makes
each tick one job however many processes race for it (:mod:`persistq_async.scheduler`).

Daylight-saving time follows Debian's cron, as cronsim does: a job at a fixed local time runs
once on the day the clock skips that time (at the first minute after the jump) and once on the
day the clock repeats it (the first occurrence); expressions that fire every hour or more often
simply follow the clock.

Late and missed ticks: a tick found due at most ``misfire_grace`` seconds after its time is
late, and always enqueued. Older ones were missed (no worker ran): ``catch_up="skip"``
enqueues none of them, ``"latest"`` only the most recent, ``"all"`` every one up to the
``catch_up_limit`` most recent.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ._checks import check_float, check_int, check_name
from .errors import ArgumentError, ArgumentTypeError, ConfigError

__all__ = [
    "DEFAULT_CATCH_UP",
    "DEFAULT_CATCH_UP_LIMIT",
    "DEFAULT_MISFIRE_GRACE",
    "MIN_EVERY_SECONDS",
    "CatchUp",
    "ScheduleInfo",
    "TickPlan",
    "Timing",
    "check_tags",
    "plan_ticks",
]

#: Missed ticks that run after a downtime when nothing else is said.
DEFAULT_CATCH_UP = "latest"
#: Most missed ticks ``catch_up="all"`` enqueues (the most recent ones).
DEFAULT_CATCH_UP_LIMIT = 100
#: Seconds after its time within which a tick is late (always enqueued), not missed.
DEFAULT_MISFIRE_GRACE = 10.0
#: The shortest interval: ticks are at most one a second, like cron with a seconds field.
MIN_EVERY_SECONDS = 1.0
#: Longest list of tags a schedule may carry.
MAX_TAGS = 32


class CatchUp(enum.StrEnum):
    """What happens to ticks missed while no worker ran (see the module docstring)."""

    SKIP = "skip"
    LATEST = "latest"
    ALL = "all"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """When a schedule's ticks fall: a cron expression in a time zone, or an interval.

    Build it with :meth:`parse`, which checks everything; ticks are epoch seconds.
    """

    cron: str | None
    every: float | None
    timezone: str

    @classmethod
    def parse(cls, cron: Any, every: Any, timezone: Any) -> Timing:
        """Check and normalise the timing arguments of :meth:`Queue.schedule`.

        :raises ConfigError: a malformed cron expression or an unknown time zone, named.
        :raises ArgumentError: neither or both of ``cron`` and ``every``; ``every`` too short.
        """
        if (cron is None) == (every is None):
            raise ArgumentError("cron and every: give exactly one of them")
        if not isinstance(timezone, str):
            raise ArgumentTypeError(
                f"timezone: expected an IANA time zone name, got {type(timezone).__name__}"
            )
        _zone(timezone)
        if cron is not None:
            if not isinstance(cron, str):
                raise ArgumentTypeError(f"cron: expected a str, got {type(cron).__name__}")
            text = " ".join(cron.split())
            try:
                CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
            except CronSimError as exc:
                raise ConfigError(f"cron: malformed expression {cron!r} ({exc})") from None
            except (ValueError, IndexError, KeyError) as exc:
                raise ConfigError(f"cron: malformed expression {cron!r} ({exc})") from None
            return cls(cron=text, every=None, timezone=timezone)
        if isinstance(every, timedelta):
            seconds = every.total_seconds()
        else:
            seconds = check_float("every", every, positive=True)
        if not math.isfinite(seconds) or seconds < MIN_EVERY_SECONDS:
            raise ArgumentError(f"every: at least {MIN_EVERY_SECONDS:g} second, got {seconds!r}")
        return cls(cron=None, every=seconds, timezone=timezone)

    @property
    def spec(self) -> str:
        """The timing as people read it: ``cron '0 3 * * *' Europe/Paris`` or ``every 60s``."""
        if self.cron is not None:
            return f"cron '{self.cron}' {self.timezone}"
        assert self.every is not None
        return f"every {self.every:g}s"

    def ticks_after(self, after: float) -> Iterator[float]:
        """The ticks strictly after ``after`` (epoch seconds), in order."""
        if self.every is not None:
            k = math.floor(after / self.every) + 1
            while True:
                yield k * self.every
                k += 1
        assert self.cron is not None
        zone = _zone(self.timezone)
        # cronsim works at whole seconds and returns ticks strictly after its start.
        start = datetime.fromtimestamp(math.floor(after), tz=zone)
        for moment in CronSim(self.cron, start):
            yield moment.timestamp()

    def ticks_before(self, before: float) -> Iterator[float]:
        """The ticks strictly before ``before``, latest first."""
        if self.every is not None:
            k = math.ceil(before / self.every) - 1
            while True:
                yield k * self.every
                k -= 1
        assert self.cron is not None
        zone = _zone(self.timezone)
        # Reverse iteration from a whole second yields ticks strictly before it.
        start = datetime.fromtimestamp(math.ceil(before), tz=zone)
        for moment in CronSim(self.cron, start, reverse=True):
            yield moment.timestamp()

    def next_after(self, after: float) -> float | None:
        """The first tick strictly after ``after``; None when the expression never fires."""
        return next(self.ticks_after(after), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class TickPlan:
    """What one firing does: the ticks to enqueue, how many were dropped, the next tick."""

    ticks: list[float]
    skipped: int
    next_run_at: float | None


def plan_ticks(
    timing: Timing,
    *,
    next_run_at: float,
    now: float,
    catch_up: CatchUp,
    catch_up_limit: int,
    misfire_grace: float,
) -> TickPlan:
    """The ticks due from ``next_run_at`` (itself a tick) up to ``now``, after the policy.

    Only the ticks that may be kept are walked, so a per-second schedule after a week of
    downtime costs a few iterations, not 600,000 (this runs inside the write transaction).
    ``skipped`` counts the dropped ticks exactly for intervals, up to :data:`COUNT_CAP` for cron.
    """
    if next_run_at > now:
        return TickPlan(ticks=[], skipped=0, next_run_at=next_run_at)
    cutoff = now - misfire_grace
    keep_missed = {CatchUp.SKIP: 0, CatchUp.LATEST: 1, CatchUp.ALL: catch_up_limit}[catch_up]
    begin = max(next_run_at, cutoff)
    if keep_missed and next_run_at < cutoff:
        kept: list[float] = []
        for tick in timing.ticks_before(cutoff):
            if tick < next_run_at or len(kept) >= keep_missed:
                break
            kept.append(tick)
        begin = kept[-1] if kept else next_run_at
    ticks: list[float] = []
    following: float | None = None
    # ticks_after is strict and cron works in whole seconds: start a second early, filter.
    for tick in timing.ticks_after(begin - 1.0):
        if tick < begin:
            continue
        if tick > now:
            following = tick
            break
        ticks.append(tick)
    skipped = _count_dropped(timing, next_run_at, ticks[0] if ticks else (following or now))
    return TickPlan(ticks=ticks, skipped=skipped, next_run_at=following)


#: Most dropped cron ticks counted for the log (the count is exact below it).
COUNT_CAP = 1000


def _count_dropped(timing: Timing, first_due: float, first_kept: float) -> int:
    """Ticks in [first_due, first_kept)."""
    if first_kept <= first_due:
        return 0
    if timing.every is not None:
        return max(0, math.ceil(first_kept / timing.every) - math.ceil(first_due / timing.every))
    count = 0
    for tick in timing.ticks_after(first_due - 1.0):
        if tick >= first_kept or count >= COUNT_CAP:
            break
        if tick >= first_due:
            count += 1
    return count


def check_tags(tags: Any) -> tuple[str, ...]:
    """Tags as a tuple of non-empty strings.

    :raises ArgumentTypeError: not an iterable of str.
    :raises ArgumentError: an empty tag, or too many.
    """
    if tags is None:
        return ()
    if isinstance(tags, (str, bytes)) or not hasattr(tags, "__iter__"):
        raise ArgumentTypeError(f"tags: expected a list of str, got {type(tags).__name__}")
    found = tuple(tags)
    for tag in found:
        if not isinstance(tag, str):
            raise ArgumentTypeError(f"tags: expected str items, got {type(tag).__name__}")
        if not tag:
            raise ArgumentError("tags: an empty tag")
    if len(found) > MAX_TAGS:
        raise ArgumentError(f"tags: at most {MAX_TAGS}, got {len(found)}")
    return found


def check_catch_up(catch_up: Any, limit: Any, grace: Any) -> tuple[CatchUp, int, float]:
    """Check the catch-up options of :meth:`Queue.schedule`."""
    if isinstance(catch_up, CatchUp):
        policy = catch_up
    elif isinstance(catch_up, str):
        try:
            policy = CatchUp(catch_up)
        except ValueError:
            known = ", ".join(c.value for c in CatchUp)
            raise ArgumentError(f"catch_up: unknown policy {catch_up!r} (known: {known})") from None
    else:
        raise ArgumentTypeError(f"catch_up: expected a str, got {type(catch_up).__name__}")
    return (
        policy,
        check_int("catch_up_limit", limit, minimum=1),
        check_float("misfire_grace", grace, minimum=0.0),
    )


def check_schedule_name(name: Any) -> str:
    """A schedule's name: a non-empty str without control characters."""
    return check_name("name", name)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"timezone: unknown IANA time zone {name!r}") from None


def _to_datetime(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleInfo:
    """A schedule as :meth:`Queue.schedules` reports it. Datetimes are aware UTC."""

    name: str
    queue: str
    cron: str | None
    every: float | None
    timezone: str
    payload: Any
    priority: int
    max_attempts: int | None
    tags: tuple[str, ...]
    catch_up: str
    catch_up_limit: int
    misfire_grace: float
    paused: bool
    next_run_at: datetime | None
    last_tick_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def spec(self) -> str:
        """The timing as people read it: ``cron '0 3 * * *' UTC`` or ``every 60s``."""
        return Timing(cron=self.cron, every=self.every, timezone=self.timezone).spec
