"""The schedule methods of :class:`~persistq_async.Queue`: declare, list, pause, remove.

What schedules are and how ticks fall is in :mod:`persistq_async.schedules`; who fires them is
:mod:`persistq_async.scheduler` (a service of every :class:`~persistq_async.Supervisor`).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._checks import check_int
from .errors import ArgumentError, SerializationError
from .job import to_datetime
from .monitoring import log_event
from .schedules import (
    DEFAULT_CATCH_UP,
    DEFAULT_CATCH_UP_LIMIT,
    DEFAULT_MISFIRE_GRACE,
    ScheduleInfo,
    Timing,
    check_catch_up,
    check_schedule_name,
    check_tags,
)
from .store.schedules import NewSchedule, ScheduleRecord

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._types import Serializer
    from .config import Options
    from .store import JobStore

__all__ = ["ScheduleMethods", "schedule_info"]

logger = logging.getLogger("persistq_async.queue")


def schedule_info(record: ScheduleRecord, serializer: Serializer) -> ScheduleInfo:
    """A stored schedule as users see it, its payload decoded."""
    try:
        payload = serializer.loads(record.payload)
    except Exception as exc:
        raise SerializationError(
            f"schedule {record.name!r}: its payload cannot be decoded: {exc}"
        ) from exc
    created = to_datetime(record.created_at)
    updated = to_datetime(record.updated_at)
    assert created is not None
    assert updated is not None
    return ScheduleInfo(
        name=record.name,
        queue=record.queue,
        cron=record.cron,
        every=record.every,
        timezone=record.timezone,
        payload=payload,
        priority=record.priority,
        max_attempts=record.max_attempts,
        tags=record.tags,
        catch_up=record.catch_up,
        catch_up_limit=record.catch_up_limit,
        misfire_grace=record.misfire_grace,
        paused=record.paused,
        next_run_at=None if record.paused else to_datetime(record.next_run_at),
        last_tick_at=to_datetime(record.last_tick_at),
        created_at=created,
        updated_at=updated,
    )


class ScheduleMethods:
    """Mixed into :class:`~persistq_async.Queue`."""

    if TYPE_CHECKING:
        name: str
        serializer: Serializer
        options: Options

        @property
        def store(self) -> JobStore: ...

    async def schedule(
        self,
        name: str,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        payload: Any = None,
        priority: int = 0,
        max_attempts: int | None = None,
        tags: Iterable[str] | None = None,
        timezone: str = "UTC",
        catch_up: str = DEFAULT_CATCH_UP,
        catch_up_limit: int = DEFAULT_CATCH_UP_LIMIT,
        misfire_grace: float = DEFAULT_MISFIRE_GRACE,
    ) -> ScheduleInfo:
        """Create or update the periodic job ``name`` of this queue (idempotent).

        Every supervisor with a pool on this queue fires its ticks, each tick exactly once,
        as a job whose ``run_at`` is the tick and whose ``dedupe_key`` names schedule and tick.
        Declaring the same schedule again changes nothing; a new timing starts from the next
        tick after now; a paused schedule stays paused.

        :param name: unique within the queue.
        :param cron: five fields (minute hour day month weekday), or six with seconds first.
        :param every: seconds (or a timedelta), at least 1; ticks are multiples of it since the
            epoch, so every process agrees on them. Exactly one of ``cron`` and ``every``.
        :param payload: each tick's job payload.
        :param priority: each job's priority.
        :param max_attempts: each job's; the enqueuing queue's option by default.
        :param tags: stored with the schedule (and given to its jobs once jobs carry tags).
        :param timezone: the IANA zone in which ``cron`` is read; UTC by default.
        :param catch_up: ticks missed while no worker ran: ``"skip"`` none, ``"latest"`` (the
            default) the most recent, ``"all"`` up to ``catch_up_limit`` most recent ones.
        :param misfire_grace: seconds after its time within which a tick is only late (always
            enqueued), not missed.
        :raises ConfigError: a malformed cron expression or an unknown time zone, named.
        :raises ArgumentError: neither or both of cron and every; another bad value.
        :raises SerializationError: the payload cannot be encoded; nothing is written.
        """
        store = self.store
        policy, limit, grace = check_catch_up(catch_up, catch_up_limit, misfire_grace)
        new = NewSchedule(
            queue=self.name,
            name=check_schedule_name(name),
            timing=Timing.parse(cron, every, timezone),
            payload=self._encode_schedule_payload(payload),
            priority=_check_priority(priority),
            max_attempts=None
            if max_attempts is None
            else check_int("max_attempts", max_attempts, minimum=1),
            tags=check_tags(tags),
            catch_up=policy,
            catch_up_limit=limit,
            misfire_grace=grace,
        )
        record = await store.save_schedule(new)
        log_event(
            logger,
            logging.INFO,
            "schedule_saved",
            f"schedule {record.name} saved: {record.timing.spec}",
            queue=self.name,
            schedule=record.name,
        )
        return schedule_info(record, self.serializer)

    def _encode_schedule_payload(self, payload: Any) -> bytes:
        data = self.serializer.dumps(payload)
        if not isinstance(data, bytes):
            raise SerializationError(f"the serializer returned {type(data).__name__}, not bytes")
        return data

    async def schedules(self) -> list[ScheduleInfo]:
        """The schedules of this queue, by name."""
        records = await self.store.schedules(self.name)
        return [schedule_info(record, self.serializer) for record in records]

    async def unschedule(self, name: str) -> bool:
        """Delete the schedule ``name``; jobs it already enqueued stay.

        :returns: False when there was no such schedule.
        """
        deleted = await self.store.delete_schedule(self.name, check_schedule_name(name))
        if deleted:
            log_event(
                logger,
                logging.INFO,
                "schedule_removed",
                f"schedule {name} removed",
                queue=self.name,
                schedule=name,
            )
        return deleted

    async def pause_schedule(self, name: str) -> None:
        """Stop firing the schedule ``name`` until :meth:`resume_schedule`.

        :raises ArgumentError: no such schedule.
        """
        await self._set_paused(name, True)

    async def resume_schedule(self, name: str) -> None:
        """Fire the schedule ``name`` again, from its first tick after now (ticks that fell
        while it was paused are not caught up).

        :raises ArgumentError: no such schedule.
        """
        await self._set_paused(name, False)

    async def _set_paused(self, name: str, paused: bool) -> None:
        name = check_schedule_name(name)
        if not await self.store.pause_schedule(self.name, name, paused):
            raise ArgumentError(f"name: no schedule {name!r} in queue {self.name!r}")
        log_event(
            logger,
            logging.INFO,
            "schedule_paused" if paused else "schedule_resumed",
            f"schedule {name} {'paused' if paused else 'resumed'}",
            queue=self.name,
            schedule=name,
        )


def _check_priority(priority: Any) -> int:
    checked = check_int("priority", priority)
    if not -(2**31) <= checked < 2**31:
        raise ArgumentError(f"priority: must fit in 32 bits, got {checked}")
    return checked
