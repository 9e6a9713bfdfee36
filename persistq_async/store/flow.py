"""Flow control, inside the claim transaction: pause, rate limits, a cap on running jobs, and
the dead-letter queue.

Each queue that has any of these has one row in ``persistq_queue_settings``; a queue without a
row has none, and its claims pay one primary-key lookup for finding that out.

A claim asks :func:`admit` how many jobs it may take, takes at most that many, and tells
:func:`consumed` how many it took, all in its own transaction:

- paused: none;
- ``max_running``: the cap less the queue's running jobs, counted from their leases (the
  claim's rescue has already returned expired leases, so those no longer count);
- a rate limit: the whole tokens in the queue's bucket, refilled for the time since the last
  claim that took some (see :mod:`persistq_async._rates`).

On SQLite the write lock makes claims take turns; on PostgreSQL a capped or rate-limited claim
locks the queue's settings row (``SELECT ... FOR UPDATE``) before counting or taking tokens, so
two processes cannot both take the last slot or the last token. A queue with neither never
locks the row: its claims run side by side under ``SKIP LOCKED`` as before.

A job that dies (a nack on its last attempt, a fail or ``Reject``, an expired lease on its last
attempt) moves to the queue's ``dead_letter_queue``, if it has one, in the transaction that
recorded its death: it is queued there with its attempts reset and its history kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, or_, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from .._rates import RateLimit
from .._types import JobState
from ..backends import Backend
from ..backends.prepared import Prepared
from ..schema import RUNNING, jobs, queue_settings

__all__ = [
    "FlowSettings",
    "Gate",
    "admit",
    "configure",
    "consumed",
    "dead_letter",
    "dead_letter_all",
    "note_cap",
    "read_settings",
    "retry_at",
    "settled",
]

logger = logging.getLogger(__name__)

_QUEUE = bindparam("p_queue", type_=queue_settings.c.queue.type)
_SETTINGS = select(
    queue_settings.c.paused,
    queue_settings.c.rate_count,
    queue_settings.c.rate_unit,
    queue_settings.c.rate_burst,
    queue_settings.c.tokens,
    queue_settings.c.refilled_at,
    queue_settings.c.max_running,
    queue_settings.c.dead_letter_queue,
).where(queue_settings.c.queue == _QUEUE)
_RUNNING_COUNT = select(func.count()).select_from(jobs).where(jobs.c.queue == _QUEUE, RUNNING)
_TAKE = (
    update(queue_settings)
    .where(queue_settings.c.queue == _QUEUE)
    .values(
        tokens=bindparam("p_tokens", type_=queue_settings.c.tokens.type),
        refilled_at=bindparam("p_now", type_=queue_settings.c.refilled_at.type),
    )
)
# The statements of every claim, run on the driver's cursor (see backends/prepared.py).
_SETTINGS_P = Prepared(_SETTINGS)
_RUNNING_COUNT_P = Prepared(_RUNNING_COUNT)
_TAKE_P = Prepared(_TAKE)
#: The locked select of the settings row, per backend class (None: no lock needed).
_LOCKED_P: dict[type[Backend], Prepared | None] = {}

_DEAD_LETTER_QUEUE = select(queue_settings.c.dead_letter_queue).where(
    queue_settings.c.queue == _QUEUE
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowSettings:
    """A queue's flow-control settings as stored."""

    paused: bool = False
    rate_limit: RateLimit | None = None
    max_running: int | None = None
    dead_letter_queue: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> FlowSettings:
        """From a row of :data:`_SETTINGS` (None: a queue without settings)."""
        if row is None:
            return cls()
        return cls(
            paused=bool(row.paused),
            rate_limit=_rate(row),
            max_running=row.max_running,
            dead_letter_queue=row.dead_letter_queue,
        )


def _rate(row: Any) -> RateLimit | None:
    if row.rate_count is None or row.rate_unit is None or row.rate_burst is None:
        return None
    return RateLimit(count=row.rate_count, unit=row.rate_unit, burst=row.rate_burst)


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate:
    """What a claim may take under its queue's flow control."""

    #: Jobs the claim may take now.
    limit: int
    paused: bool = False
    #: Free slots under ``max_running``; None without a cap.
    room: int | None = None
    #: The rate limit, and the tokens its bucket holds now.
    rate: RateLimit | None = None
    tokens: float = 0.0
    #: The time the bucket's ``tokens`` are counted at: now, or a later time another claim
    #: wrote (its clock ahead of ours, or its ``now`` taken after ours but its lock before).
    refilled_at: float = 0.0


def admit(
    conn: Connection, backend: Backend, queue: str, requested: int, now: float
) -> Gate | None:
    """How many of ``requested`` jobs the claim may take; None when the queue has no limit.

    Inside the claim transaction, after its rescue and before its claim statement.
    """
    params = {"p_queue": queue}
    row = _SETTINGS_P.one_or_none(conn, params)
    if row is None:
        return None
    if row.paused:
        return Gate(limit=0, paused=True)
    if row.rate_count is None and row.max_running is None:
        return None
    locked = _locked(backend)
    if locked is not None:
        # Read again under the lock: another claim may have taken tokens meanwhile.
        row = locked.one_or_none(conn, params)
        if row is None:
            return None  # deleted meanwhile
        if row.paused:
            return Gate(limit=0, paused=True)
    limit = requested
    room = None
    if row.max_running is not None:
        running = int(_RUNNING_COUNT_P.scalar(conn, params))
        room = max(0, row.max_running - running)
        limit = min(limit, room)
    rate = _rate(row)
    tokens, refilled_at = 0.0, now
    if rate is not None:
        held = float(rate.burst) if row.tokens is None else row.tokens
        last = now if row.refilled_at is None else row.refilled_at
        tokens = rate.refill(held, last, now)
        # Never move the bucket's time back: the time between would be refilled twice.
        refilled_at = max(last, now)
        limit = min(limit, rate.whole(tokens))
    return Gate(limit=limit, room=room, rate=rate, tokens=tokens, refilled_at=refilled_at)


def _locked(backend: Backend) -> Prepared | None:
    kind = type(backend)
    if kind not in _LOCKED_P:
        locked = backend.lock_settings_row(_SETTINGS)
        _LOCKED_P[kind] = None if locked is None else Prepared(locked)
    return _LOCKED_P[kind]


def consumed(conn: Connection, queue: str, gate: Gate | None, taken: int) -> None:
    """Take ``taken`` tokens from a rate-limited queue's bucket (in the claim transaction).

    A claim that took nothing writes nothing: the bucket refills the same from its last
    state whenever it is next read.
    """
    if gate is None or gate.rate is None or taken == 0:
        return
    _TAKE_P.rows(
        conn, {"p_queue": queue, "p_tokens": gate.tokens - taken, "p_now": gate.refilled_at}
    )


def retry_at(
    gate: Gate | None, taken: int, due: float | None, expiry: float | None, now: float
) -> float | None:
    """When a claim that took fewer jobs than it asked for may find more (epoch seconds).

    ``due`` is the queue's earliest ``run_at`` of a queued job, ``expiry`` the earliest lease
    end; None for "only a wake-up can tell" (a put, a resume, a job finishing).
    """
    soonest = min((t for t in (due, expiry) if t is not None), default=None)
    if gate is None:
        return soonest
    if gate.paused:
        return None  # resume() wakes the waiters
    if gate.room is not None and taken >= gate.room:
        # Every slot is taken: a job finishing wakes the waiters; a lease running out frees
        # its slot at the claim that rescues it.
        return expiry
    if gate.rate is not None and taken >= gate.rate.whole(gate.tokens):
        if soonest is None:
            return None  # nothing queued: a put wakes the waiters
        return max(soonest, gate.rate.next_token_at(gate.tokens - taken, now))
    return soonest


def note_cap(capped: set[str], queue: str, gate: Gate | None) -> None:
    """Remember whether ``queue`` had a cap at this claim: in this process, a job of a capped
    queue ending wakes the queue's claimers, as it frees a slot.

    Only in this process: the process whose job ended has a claimer with a free slot of its own,
    which takes the freed one at once. Waking every process's claimers through a notification
    at each outcome was tried on PostgreSQL: with five processes sharing seven slots, all of
    them raced for each slot, and throughput fell by a quarter.
    """
    if gate is not None and gate.room is not None:
        capped.add(queue)
    else:
        capped.discard(queue)


def settled(
    conn: Connection, backend: Backend, queue: str, state: JobState, job_id: int, now: float
) -> None:
    """In the transaction of an outcome (ack, nack, fail) that ended a running delivery: a job
    that died goes to the dead-letter queue."""
    if state == JobState.DEAD:
        dead_letter(conn, backend, queue, [job_id], now)


def dead_letter_all(
    conn: Connection, backend: Backend, dead: Iterable[tuple[str, int]], now: float
) -> None:
    """:func:`dead_letter` for jobs of several queues, given as ``(queue, job id)``."""
    by_queue: dict[str, list[int]] = {}
    for queue, job_id in dead:
        by_queue.setdefault(queue, []).append(job_id)
    for queue, ids in sorted(by_queue.items()):
        dead_letter(conn, backend, queue, ids, now)


def dead_letter(
    conn: Connection, backend: Backend, queue: str, job_ids: Iterable[int], now: float
) -> tuple[str, list[int]] | None:
    """Move jobs that just died to ``queue``'s dead-letter queue, if it has one.

    They are queued there at once, attempts reset, history and last error kept. A job whose
    ``dedupe_key`` an active job of the dead-letter queue already holds stays dead.

    :returns: the dead-letter queue and the ids moved, or None when nothing moved.
    """
    ids = list(job_ids)
    if not ids:
        return None
    target = conn.execute(_DEAD_LETTER_QUEUE, {"p_queue": queue}).scalar_one_or_none()
    if target is None or target == queue:
        return None
    holder = jobs.alias("holder")
    free_key = or_(
        jobs.c.dedupe_key.is_(None),
        ~exists().where(
            and_(
                holder.c.queue == target,
                holder.c.dedupe_key == jobs.c.dedupe_key,
                # literally the dedupe index's predicate, so that SQLite probes it
                text("holder.state IN ('queued', 'running')"),
            )
        ),
    )
    moved = list(
        conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(ids), jobs.c.state == JobState.DEAD.value, free_key)
            .values(
                queue=target,
                state=JobState.QUEUED.value,
                attempts=0,
                run_at=now,
                enqueued_at=now,
                finished_at=None,
            )
            .returning(jobs.c.id)
        ).scalars()
    )
    if not moved:
        return None
    backend.notify_work(conn, target)
    for job_id in moved:
        logger.info(
            "job %d moved to the dead-letter queue %r",
            job_id,
            target,
            extra={
                "action": "job_dead_lettered",
                "job_id": job_id,
                "queue": queue,
                "dead_letter_queue": target,
            },
        )
    return target, moved


def configure(
    conn: Connection, backend: Backend, queue: str, now: float, changes: dict[str, Any]
) -> None:
    """Change some of a queue's settings (in one write transaction).

    ``changes`` holds any of ``paused`` (bool), ``rate_limit`` (a :class:`RateLimit` or None),
    ``max_running`` (int or None), ``dead_letter_queue`` (str or None). A rate limit that
    differs from the stored one starts with a full bucket; the same one keeps its bucket, so a
    process that sets its option at every start grants no extra burst.
    """
    backend.insert_settings_row(conn, queue, now)
    params = {"p_queue": queue}
    locked = backend.lock_settings_row(_SETTINGS)
    row = conn.execute(_SETTINGS if locked is None else locked, params).one()
    values: dict[str, Any] = {"updated_at": now}
    for name, value in changes.items():
        if name == "rate_limit":
            if value is None:
                values.update(
                    rate_count=None, rate_unit=None, rate_burst=None, tokens=None, refilled_at=None
                )
            elif value != _rate(row):
                values.update(
                    rate_count=value.count,
                    rate_unit=value.unit,
                    rate_burst=value.burst,
                    tokens=float(value.burst),
                    refilled_at=now,
                )
        elif name == "paused":
            values["paused"] = 1 if value else 0
        elif name in ("max_running", "dead_letter_queue"):
            values[name] = value
        else:
            raise ValueError(f"unknown flow setting {name!r}")
    conn.execute(
        update(queue_settings).where(queue_settings.c.queue == _QUEUE).values(**values), params
    )
    if changes.get("paused") is False or "rate_limit" in changes or "max_running" in changes:
        backend.notify_work(conn, queue)  # waiters on other machines look again


async def read_settings(conn: AsyncConnection, queue: str) -> FlowSettings:
    """A queue's settings, for stats (defaults when it has none)."""
    row = (await conn.execute(_SETTINGS, {"p_queue": queue})).one_or_none()
    return FlowSettings.from_row(row)
