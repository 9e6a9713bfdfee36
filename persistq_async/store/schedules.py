"""Periodic jobs in the database: the schedules table, and firing due ticks exactly once.

A firing is one write transaction: it takes the due, unpaused schedules of some queues
(``FOR UPDATE SKIP LOCKED`` where the database has it, so two PostgreSQL workers never hold the
same schedule; SQLite has one writer at a time), plans their ticks
(:func:`~persistq_async.schedules.plan_ticks`), and for each tick writes a row of the ticks
table, whose primary key is (queue, schedule, tick), and the tick's job, then moves the
schedule's ``next_run_at`` past now. A tick row and its job commit together or not at all, and a
tick that has a row is never enqueued again: whichever process fires, however many race, each
tick is one job. The job keeps the tick as its ``run_at`` and names schedule and tick in its
``dedupe_key``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .._jobmeta import encode_tags
from ..schedules import CatchUp, Timing, plan_ticks
from ..schema import schedules, ticks
from . import transactions as tx
from .records import NewJob

__all__ = [
    "FiredTick",
    "NewSchedule",
    "ScheduleRecord",
    "clean_ticks",
    "delete_schedule",
    "dedupe_key",
    "fire",
    "list_schedules",
    "next_due",
    "set_paused",
    "upsert",
]

logger = logging.getLogger(__name__)

#: Due schedules one firing transaction takes at most; the rest wait for the next pass.
FIRE_CHUNK = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class NewSchedule:
    """A schedule as declared: the payload encoded, the timing checked."""

    queue: str
    name: str
    timing: Timing
    payload: bytes
    priority: int
    max_attempts: int | None
    tags: tuple[str, ...]
    catch_up: CatchUp
    catch_up_limit: int
    misfire_grace: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRecord:
    """A row of the schedules table."""

    queue: str
    name: str
    cron: str | None
    every: float | None
    timezone: str
    payload: bytes
    priority: int
    max_attempts: int | None
    tags: tuple[str, ...]
    catch_up: str
    catch_up_limit: int
    misfire_grace: float
    paused: bool
    next_run_at: float | None
    last_tick_at: float | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Row[Any]) -> ScheduleRecord:
        """Build from a row with every column of the schedules table."""
        m = row._mapping
        return cls(
            queue=m["queue"],
            name=m["name"],
            cron=m["cron"],
            every=m["every_seconds"],
            timezone=m["timezone"],
            payload=bytes(m["payload"]),
            priority=m["priority"],
            max_attempts=m["max_attempts"],
            tags=tuple(json.loads(m["tags"])),
            catch_up=m["catch_up"],
            catch_up_limit=m["catch_up_limit"],
            misfire_grace=m["misfire_grace"],
            paused=bool(m["paused"]),
            next_run_at=m["next_run_at"],
            last_tick_at=m["last_tick_at"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
        )

    @property
    def timing(self) -> Timing:
        """The stored timing (checked when it was declared)."""
        return Timing(cron=self.cron, every=self.every, timezone=self.timezone)


@dataclass(frozen=True, slots=True, kw_only=True)
class FiredTick:
    """One tick enqueued by a firing."""

    queue: str
    schedule: str
    tick_at: float
    job_id: int


def dedupe_key(name: str, tick_at: float) -> str:
    """The ``dedupe_key`` of a tick's job: ``schedule:NAME@2026-01-01T00:00:00Z``."""
    moment = datetime.fromtimestamp(tick_at, tz=UTC)
    text = moment.isoformat(timespec="milliseconds" if tick_at % 1 else "seconds")
    return f"schedule:{name}@{text.replace('+00:00', 'Z')}"


def _key(queue: str, name: str) -> Any:
    return (schedules.c.queue == queue) & (schedules.c.name == name)


def _read(conn: Connection, queue: str, name: str) -> ScheduleRecord | None:
    row = conn.execute(select(schedules).where(_key(queue, name))).one_or_none()
    return None if row is None else ScheduleRecord.from_row(row)


# ---------------------------------------------------------------------- declaring


def upsert(conn: Connection, new: NewSchedule, now: float) -> ScheduleRecord:
    """Create the schedule, or update it to ``new``.

    Declaring the same schedule again changes nothing (every worker may declare its schedules
    at start). A changed timing starts afresh from the first tick after now; other changes keep
    the next tick. Pausing is left as it is: a worker that restarts does not resume a schedule
    an operator paused.
    """
    values: dict[str, Any] = {
        "cron": new.timing.cron,
        "every_seconds": new.timing.every,
        "timezone": new.timing.timezone,
        "payload": new.payload,
        "priority": new.priority,
        "max_attempts": new.max_attempts,
        "tags": json.dumps(list(new.tags)),
        "catch_up": new.catch_up.value,
        "catch_up_limit": new.catch_up_limit,
        "misfire_grace": new.misfire_grace,
    }
    current = _read(conn, new.queue, new.name)
    if current is None:
        try:
            # A savepoint: another process may create the same schedule at the same moment
            # (PostgreSQL), and its row then wins; ours becomes an update of it.
            with conn.begin_nested():
                conn.execute(
                    insert(schedules).values(
                        queue=new.queue,
                        name=new.name,
                        paused=0,
                        next_run_at=new.timing.next_after(now),
                        last_tick_at=None,
                        created_at=now,
                        updated_at=now,
                        **values,
                    )
                )
        except IntegrityError:
            current = _read(conn, new.queue, new.name)
        else:
            created = _read(conn, new.queue, new.name)
            assert created is not None
            return created
    assert current is not None
    stored = {
        "cron": current.cron,
        "every_seconds": current.every,
        "timezone": current.timezone,
        "payload": current.payload,
        "priority": current.priority,
        "max_attempts": current.max_attempts,
        "tags": json.dumps(list(current.tags)),
        "catch_up": current.catch_up,
        "catch_up_limit": current.catch_up_limit,
        "misfire_grace": current.misfire_grace,
    }
    if stored == values:
        return current
    changes = dict(values, updated_at=now)
    if current.timing != new.timing:
        changes["next_run_at"] = new.timing.next_after(now)
    conn.execute(update(schedules).where(_key(new.queue, new.name)).values(**changes))
    updated = _read(conn, new.queue, new.name)
    assert updated is not None
    return updated


def delete_schedule(conn: Connection, queue: str, name: str) -> bool:
    """Delete a schedule; False when there was none. Its tick rows stay (see :func:`fire`)."""
    return bool(conn.execute(delete(schedules).where(_key(queue, name))).rowcount)


def set_paused(conn: Connection, queue: str, name: str, paused: bool, now: float) -> bool:
    """Pause or resume a schedule; False when there is none.

    Resuming starts from the first tick after now: ticks that fell while paused never run.
    """
    current = _read(conn, queue, name)
    if current is None:
        return False
    if current.paused == paused:
        return True
    changes: dict[str, Any] = {"paused": int(paused), "updated_at": now}
    if not paused:
        changes["next_run_at"] = current.timing.next_after(now)
    conn.execute(update(schedules).where(_key(queue, name)).values(**changes))
    return True


# ---------------------------------------------------------------------- firing


def fire(
    conn: Connection,
    ctx: tx.Context,
    max_attempts: Mapping[str, int],
    fired_by: str,
) -> list[FiredTick]:
    """Enqueue the due ticks of the unpaused schedules of the queues in ``max_attempts``.

    :param max_attempts: each queue's ``max_attempts`` option, for schedules that set none.
    :param fired_by: who fires (``pid@host``), recorded with each tick.
    """
    now = ctx.clock()
    due = ctx.backend.lock_claim(
        select(schedules)
        .where(
            schedules.c.queue.in_(sorted(max_attempts)),
            schedules.c.paused == 0,
            schedules.c.next_run_at <= now,
        )
        .order_by(schedules.c.next_run_at)
        .limit(FIRE_CHUNK)
    )
    fired: list[FiredTick] = []
    for record in [ScheduleRecord.from_row(row) for row in conn.execute(due)]:
        assert record.next_run_at is not None
        plan = plan_ticks(
            record.timing,
            next_run_at=record.next_run_at,
            now=now,
            catch_up=CatchUp(record.catch_up),
            catch_up_limit=record.catch_up_limit,
            misfire_grace=record.misfire_grace,
        )
        # A tick that has a row was enqueued already (a schedule deleted and declared again,
        # or clocks that disagree between machines): it is never enqueued twice.
        taken = set()
        if plan.ticks:
            taken = set(
                conn.execute(
                    select(ticks.c.tick_at).where(
                        ticks.c.queue == record.queue,
                        ticks.c.schedule == record.name,
                        ticks.c.tick_at.in_(plan.ticks),
                    )
                ).scalars()
            )
        for tick_at in plan.ticks:
            if tick_at in taken:
                continue
            job = NewJob(
                payload=record.payload,
                priority=record.priority,
                run_at=tick_at,
                max_attempts=record.max_attempts or max_attempts[record.queue],
                dedupe_key=dedupe_key(record.name, tick_at),
                keep_run_at=True,
                tags=encode_tags(record.tags),
            )
            (job_id,) = tx.put(conn, ctx, record.queue, [job])
            conn.execute(
                insert(ticks).values(
                    queue=record.queue,
                    schedule=record.name,
                    tick_at=tick_at,
                    job_id=job_id,
                    fired_by=fired_by,
                    fired_at=now,
                )
            )
            fired.append(
                FiredTick(queue=record.queue, schedule=record.name, tick_at=tick_at, job_id=job_id)
            )
        last = max(plan.ticks) if plan.ticks else record.last_tick_at
        conn.execute(
            update(schedules)
            .where(_key(record.queue, record.name))
            .values(next_run_at=plan.next_run_at, last_tick_at=last)
        )
        if plan.skipped:
            logger.info(
                "schedule %s: %d missed tick(s) not enqueued (catch_up=%s)",
                record.name,
                plan.skipped,
                record.catch_up,
                extra={
                    "action": "schedule_ticks_skipped",
                    "queue": record.queue,
                    "schedule": record.name,
                    "count": plan.skipped,
                },
            )
    return fired


def clean_ticks(conn: Connection, older_than: float) -> int:
    """Delete tick rows fired before ``older_than``; their jobs are past retention too."""
    return int(conn.execute(delete(ticks).where(ticks.c.fired_at < older_than)).rowcount)


# ---------------------------------------------------------------------- reads


async def list_schedules(conn: AsyncConnection, queue: str | None) -> list[ScheduleRecord]:
    """The schedules of ``queue`` (every queue's when None), by queue and name."""
    stmt = select(schedules).order_by(schedules.c.queue, schedules.c.name)
    if queue is not None:
        stmt = stmt.where(schedules.c.queue == queue)
    return [ScheduleRecord.from_row(row) for row in await conn.execute(stmt)]


async def next_due(conn: AsyncConnection, queues: Sequence[str]) -> float | None:
    """The earliest next tick of the unpaused schedules of ``queues``."""
    stmt = select(func.min(schedules.c.next_run_at)).where(
        schedules.c.queue.in_(list(queues)), schedules.c.paused == 0
    )
    value = (await conn.execute(stmt)).scalar_one_or_none()
    return None if value is None else float(value)
