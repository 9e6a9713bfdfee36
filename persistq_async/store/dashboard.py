"""The web dashboard's reads: every queue's counts at once, attempts per minute, and pages of
jobs newest first with priority and tag filters.

Async functions of an ``AsyncConnection``; :class:`JobStore` wraps each in a thin method. The
lookups by id and the batched bulk actions the dashboard also needs are :mod:`.admin`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement

from .._jobmeta import tag_pattern
from .._types import JobState
from ..schema import NOT_RUNNING, QUEUED, RUNNING, attempts, in_state, jobs, page_id
from .records import JobRecord

__all__ = ["JobPage", "QueueSummary", "Throughput", "job_page", "queue_summaries", "throughput"]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSummary:
    """One queue's counts per state, and its ready jobs (queued and due) with the oldest's
    due time."""

    queue: str
    counts: dict[JobState, int]
    ready: int
    oldest_ready_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Throughput:
    """Attempts that finished per time bucket, by queue and outcome, from ``since`` on.

    ``counts[queue][outcome][i]`` counts the attempts that finished in
    ``[since + i * bucket_seconds, since + (i + 1) * bucket_seconds)``.
    """

    since: float
    bucket_seconds: float
    buckets: int
    counts: dict[str, dict[str, list[int]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobPage:
    """One keyset page of jobs (newest first) and whether there are more on either side."""

    records: list[JobRecord]
    has_older: bool
    has_newer: bool


# ---------------------------------------------------------------------- reads


async def queue_summaries(conn: AsyncConnection, now: float) -> list[QueueSummary]:
    """Every queue that has jobs, with its counts per state and its ready jobs."""
    counts: dict[str, dict[JobState, int]] = {}
    # Two walks: the partial (queue, state, id) index, which leaves running jobs out, and the
    # leases index (with the queue) for those. Each repeats its index's predicate literally.
    listed = (
        select(jobs.c.queue, jobs.c.state, func.count())
        .where(NOT_RUNNING)
        .group_by(jobs.c.queue, jobs.c.state)
    )
    running = (
        select(jobs.c.queue, jobs.c.state, func.count())
        .where(RUNNING)
        .group_by(jobs.c.queue, jobs.c.state)
    )
    for stmt in (listed, running):
        for queue, state, count in await conn.execute(stmt):
            counts.setdefault(queue, dict.fromkeys(JobState, 0))[JobState(state)] = int(count)
    # QUEUED literally, so that SQLite walks the partial index of queued jobs by due time.
    ready_rows = await conn.execute(
        select(jobs.c.queue, func.count(), func.min(jobs.c.run_at))
        .where(QUEUED, jobs.c.run_at <= now)
        .group_by(jobs.c.queue)
    )
    ready = {queue: (int(count), oldest) for queue, count, oldest in ready_rows}
    return [
        QueueSummary(
            queue=queue,
            counts=counts[queue],
            ready=ready.get(queue, (0, None))[0],
            oldest_ready_at=ready.get(queue, (0, None))[1],
        )
        for queue in sorted(counts)
    ]


async def throughput(
    conn: AsyncConnection, since: float, bucket_seconds: float, buckets: int
) -> Throughput:
    """Count finished attempts per bucket, queue and outcome, in one pass over the window.

    One ``SUM(CASE ...)`` column per bucket instead of a computed bucket number: rounding a float
    to an integer differs between SQLite (truncates) and PostgreSQL (rounds).
    """
    edges = [since + i * bucket_seconds for i in range(buckets + 1)]
    columns = [
        func.sum(
            case(
                (
                    (attempts.c.finished_at >= edges[i]) & (attempts.c.finished_at < edges[i + 1]),
                    1,
                ),
                else_=0,
            )
        ).label(f"b{i}")
        for i in range(buckets)
    ]
    stmt = (
        select(jobs.c.queue, attempts.c.outcome, *columns)
        .select_from(attempts.join(jobs, jobs.c.id == attempts.c.job_id))
        .where(attempts.c.finished_at >= since, attempts.c.finished_at < edges[-1])
        .group_by(jobs.c.queue, attempts.c.outcome)
    )
    result = Throughput(since=since, bucket_seconds=bucket_seconds, buckets=buckets)
    for row in await conn.execute(stmt):
        values = [int(v or 0) for v in row[2:]]
        result.counts.setdefault(row[0], {})[row[1]] = values
    return result


async def job_page(
    conn: AsyncConnection,
    *,
    queue: str | None,
    state: JobState | None,
    priority: int | None,
    before_id: int | None,
    after_id: int | None,
    limit: int,
    tags: Sequence[str] = (),
) -> JobPage:
    """Job rows newest first, ``limit`` of them, by keyset on the id: ``before_id`` pages to
    older jobs, ``after_id`` to newer ones. The cost is that of ``limit`` rows, however deep
    the page (the partial index on queue, state and id, or the leases index for running jobs;
    one walk per state, merged, for a queue in every state), never a count or an OFFSET."""
    walks: list[JobState | None]
    walks = [state] if state is not None or queue is None else list(JobState)
    bases = [_filtered(queue, walk, priority, tags) for walk in walks]
    found: list[Any] = []
    for base, key in bases:
        if after_id is not None:
            stmt = base.where(key > after_id).order_by(key.asc())
        else:
            stmt = base if before_id is None else base.where(key < before_id)
            stmt = stmt.order_by(key.desc())
        found.extend(await conn.execute(stmt.limit(limit + 1)))
    rows = sorted(found, key=lambda r: int(r.id), reverse=after_id is None)[: limit + 1]
    more = len(rows) > limit
    rows = rows[:limit]
    if after_id is not None:
        rows.reverse()
    if not rows:
        return JobPage(records=[], has_older=after_id is not None, has_newer=before_id is not None)

    async def exists(older: bool, than: int) -> bool:
        for base, key in bases:
            probe = base.with_only_columns(jobs.c.id).where(key < than if older else key > than)
            if (await conn.execute(probe.limit(1))).first() is not None:
                return True
        return False

    if after_id is not None:
        has_newer, has_older = more, await exists(True, rows[-1].id)
    else:
        has_older = more
        has_newer = before_id is not None and await exists(False, rows[0].id)
    return JobPage(
        records=[JobRecord.from_row(r) for r in rows], has_older=has_older, has_newer=has_newer
    )


def _filtered(
    queue: str | None, state: JobState | None, priority: int | None, tags: Sequence[str]
) -> tuple[Any, ColumnElement[int]]:
    """The walk's select and the id to page on."""
    stmt = select(jobs)
    key: ColumnElement[int] = jobs.c.id
    if queue is not None:
        stmt = stmt.where(jobs.c.queue == queue)
    if state is not None:
        # For one queue, the literal predicate lets SQLite use the state's partial index;
        # across queues the primary key, walked newest first, stops after ``limit`` rows.
        if queue is None:
            stmt = stmt.where(jobs.c.state == state.value)
        else:
            stmt, key = stmt.where(in_state(state)), page_id(state)
    if priority is not None:
        stmt = stmt.where(jobs.c.priority == priority)
    for tag in tags:
        stmt = stmt.where(jobs.c.tags.contains(tag_pattern(tag), autoescape=True))
    return stmt, key
