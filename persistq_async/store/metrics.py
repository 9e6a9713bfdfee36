"""The SQL of monitoring: windowed stats from the attempt history, the worker registry, health.

Reads are async functions of an ``AsyncConnection``; registry writes are synchronous functions
of a ``Connection`` that the store's writer runs (one transaction each).

Stats stay cheap on a large table: the counts use the partial ``(queue, state, id)`` index
(running jobs the leases index), ready jobs and the oldest of them the partial
``(queue, run_at)`` index of queued jobs, and the window the index on
``attempts.finished_at``, so a call reads index entries of the queue, not the rows of all
time. Percentiles are computed on at most :data:`MAX_SAMPLE` of the window's most recent
deliveries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from .._types import JobState
from ..schema import QUEUED, attempts, count_in_state, jobs, meta, workers

__all__ = [
    "MAX_SAMPLE",
    "MAX_WORKER_ROWS",
    "StatsRecord",
    "WorkerRecord",
    "read_schema_version",
    "read_stats",
    "read_workers",
    "refresh_worker",
    "register_worker",
    "unregister_worker",
]

#: Most deliveries of the window the percentiles are computed on (the most recent ones).
MAX_SAMPLE = 10_000
#: Most rows the worker registry keeps: registering prunes the stalest beyond it, so a crash
#: loop of short-lived workers cannot grow the table without bound.
MAX_WORKER_ROWS = 1_000

# Deliveries that ran a handler (or were meant to): their run time means something.
_RAN = ("acked", "nacked", "failed")


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsRecord:
    """What :func:`read_stats` found, before it is summarised."""

    now: float
    counts: dict[str, int]
    ready: int
    oldest_ready_at: float | None
    # (outcome, on the job's last attempt, count) for the window
    outcomes: list[tuple[str, bool, int]]
    run_times: list[float]
    wait_times: list[float]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    """A row of the worker registry."""

    id: str
    host: str
    pid: int
    started_at: float
    last_seen: float
    pools: list[dict[str, Any]]


async def read_stats(conn: AsyncConnection, queue: str, now: float, window: float) -> StatsRecord:
    """The counts, ready jobs and the window's deliveries of ``queue``."""
    # One count per state rather than a GROUP BY: each walks its (queue, state) range of that
    # state's partial index without reading the state of every row.
    row = (await conn.execute(select(*(count_in_state(queue, s) for s in JobState)))).one()
    counts = {state.value: int(n) for state, n in zip(JobState, row, strict=True)}
    ready_row = (
        await conn.execute(
            select(func.count(), func.min(jobs.c.run_at)).where(
                jobs.c.queue == queue, QUEUED, jobs.c.run_at <= now
            )
        )
    ).one()
    since = now - window
    in_window = and_(
        attempts.c.finished_at > since,
        attempts.c.finished_at <= now,
        jobs.c.queue == queue,
    )
    joined = attempts.join(jobs, jobs.c.id == attempts.c.job_id)
    last = case((attempts.c.attempt >= jobs.c.max_attempts, 1), else_=0).label("last")
    outcome_rows = await conn.execute(
        select(attempts.c.outcome, last, func.count())
        .select_from(joined)
        .where(in_window)
        .group_by(attempts.c.outcome, last)
    )
    outcomes = [(str(o), bool(is_last), int(n)) for o, is_last, n in outcome_rows]
    sample = await conn.execute(
        select(attempts.c.started_at, attempts.c.finished_at, attempts.c.ready_at)
        .select_from(joined)
        .where(in_window, attempts.c.outcome.in_(_RAN))
        .order_by(attempts.c.finished_at.desc())
        .limit(MAX_SAMPLE)
    )
    run_times: list[float] = []
    wait_times: list[float] = []
    for started, finished, ready in sample:
        run_times.append(max(0.0, finished - started))
        if ready is not None:
            wait_times.append(max(0.0, started - ready))
    return StatsRecord(
        now=now,
        counts=counts,
        ready=int(ready_row[0]),
        oldest_ready_at=ready_row[1],
        outcomes=outcomes,
        run_times=sorted(run_times),
        wait_times=sorted(wait_times),
    )


async def read_oldest_ready(conn: AsyncConnection, queue: str, now: float) -> float | None:
    """When the oldest ready job of ``queue`` became claimable (None if none is ready)."""
    result = await conn.execute(
        select(func.min(jobs.c.run_at)).where(jobs.c.queue == queue, QUEUED, jobs.c.run_at <= now)
    )
    value = result.scalar_one_or_none()
    return None if value is None else float(value)


async def read_schema_version(conn: AsyncConnection) -> int | None:
    """The schema version the database records (None if unreadable)."""
    raw = (
        await conn.execute(select(meta.c.value).where(meta.c.key == "schema_version"))
    ).scalar_one_or_none()
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


async def read_workers(conn: AsyncConnection) -> list[WorkerRecord]:
    """Every row of the worker registry, oldest first."""
    rows = await conn.execute(select(workers).order_by(workers.c.started_at, workers.c.id))
    found = []
    for row in rows:
        try:
            pools = json.loads(row.pools)
        except ValueError:
            pools = []
        found.append(
            WorkerRecord(
                id=row.id,
                host=row.host,
                pid=row.pid,
                started_at=row.started_at,
                last_seen=row.last_seen,
                pools=pools if isinstance(pools, list) else [],
            )
        )
    return found


def _values(record: WorkerRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "host": record.host,
        "pid": record.pid,
        "started_at": record.started_at,
        "last_seen": record.last_seen,
        "pools": json.dumps(record.pools, separators=(",", ":")),
    }


def register_worker(conn: Connection, record: WorkerRecord, prune_before: float) -> int:
    """Insert (or replace) ``record``, then prune: rows not seen since ``prune_before``, and
    the stalest beyond :data:`MAX_WORKER_ROWS`. Returns how many rows were pruned."""
    conn.execute(delete(workers).where(workers.c.id == record.id))
    conn.execute(insert(workers).values(**_values(record)))
    pruned = conn.execute(delete(workers).where(workers.c.last_seen < prune_before)).rowcount
    # The heartbeat of the first row past the cap, walking the last_seen index from the newest:
    # that row and every older one go (ties too, so the table may end a little under the cap).
    cutoff = conn.execute(
        select(workers.c.last_seen)
        .order_by(workers.c.last_seen.desc())
        .limit(1)
        .offset(MAX_WORKER_ROWS)
    ).scalar_one_or_none()
    if cutoff is not None:
        pruned += conn.execute(delete(workers).where(workers.c.last_seen <= cutoff)).rowcount
    return int(pruned)


def refresh_worker(conn: Connection, record: WorkerRecord, prune_before: float) -> bool:
    """Update the heartbeat and pools of ``record``; registers it again (pruning) when its row
    is gone (pruned while the process was paused). Returns whether it had to register again."""
    updated = conn.execute(
        update(workers)
        .where(workers.c.id == record.id)
        .values(last_seen=record.last_seen, pools=_values(record)["pools"])
    ).rowcount
    if updated:
        return False
    register_worker(conn, record, prune_before)
    return True


def unregister_worker(conn: Connection, worker_ids: Sequence[str]) -> int:
    """Delete the rows of ``worker_ids``; returns how many there were."""
    return int(conn.execute(delete(workers).where(workers.c.id.in_(list(worker_ids)))).rowcount)
