"""The web dashboard's reads: every queue's counts at once, attempts per minute, and pages of
jobs newest first with priority and tag filters.

Async functions of an ``AsyncConnection``; :class:`JobStore` wraps each in a thin method. The
lookups by id and the batched bulk actions the dashboard also needs are :mod:`.admin`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .._jobmeta import tag_pattern
from .._types import JobState
from ..schema import FINISHED, QUEUED, attempts, in_state, jobs
from .records import JobRecord
from .walks import keyed, walk

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
    # One walk per index, each repeating its predicate literally: the finished jobs by
    # (queue, state), the queued ones (ready index) and the running ones (leases) by queue.
    finished = (
        select(jobs.c.queue, jobs.c.state, func.count())
        .where(FINISHED)
        .group_by(jobs.c.queue, jobs.c.state)
    )
    active = [
        select(jobs.c.queue, literal(s.value), func.count())
        .where(in_state(s))
        .group_by(jobs.c.queue)
        for s in (JobState.QUEUED, JobState.RUNNING)
    ]
    for stmt in (finished, *active):
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
    the page (the walks of :mod:`.walks` through each state's partial index; one per state,
    merged, for a queue in every state), never a count or an OFFSET."""
    states: list[JobState | None]
    states = [state] if state is not None or queue is None else list(JobState)
    bases = [_filtered(queue, walked, priority, tags) for walked in states]
    found: list[Any] = []
    newest_first = after_id is None
    before = before_id if newest_first else None
    for base, walked in zip(bases, states, strict=True):
        found.extend(
            await _walk(conn, base, queue, walked, after_id, before, newest_first, limit + 1)
        )
    rows = sorted(found, key=lambda r: int(r.id), reverse=newest_first)[: limit + 1]
    more = len(rows) > limit
    rows = rows[:limit]
    if after_id is not None:
        rows.reverse()
    if not rows:
        return JobPage(records=[], has_older=after_id is not None, has_newer=before_id is not None)

    async def exists(older: bool, than: int) -> bool:
        for base, walked in zip(bases, states, strict=True):
            probe = base.with_only_columns(jobs.c.id)
            after, before = (None, than) if older else (than, None)
            if await _walk(conn, probe, queue, walked, after, before, older, 1):
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


async def _walk(
    conn: AsyncConnection,
    stmt: Any,
    queue: str | None,
    state: JobState | None,
    after: int | None,
    before: int | None,
    descending: bool,
    limit: int,
) -> list[Any]:
    if queue is None or state is None:
        # across queues (or every state of every queue) the primary key, newest first
        page = keyed(stmt, None, after=after, before=before, descending=descending, limit=limit)
        return list(await conn.execute(page))
    return await walk(
        conn, stmt, queue, state, after=after, before=before, descending=descending, limit=limit
    )


def _filtered(
    queue: str | None, state: JobState | None, priority: int | None, tags: Sequence[str]
) -> Any:
    stmt = select(jobs)
    if queue is not None:
        stmt = stmt.where(jobs.c.queue == queue)
    if state is not None:
        # For one queue, the literal predicate lets SQLite use the state's partial index;
        # across queues the primary key, walked newest first, stops after ``limit`` rows.
        stmt = stmt.where(jobs.c.state == state.value if queue is None else in_state(state))
    if priority is not None:
        stmt = stmt.where(jobs.c.priority == priority)
    for tag in tags:
        stmt = stmt.where(jobs.c.tags.contains(tag_pattern(tag), autoescape=True))
    return stmt
