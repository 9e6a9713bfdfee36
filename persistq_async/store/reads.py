"""The store's reads: async functions of a connection that the engine's pool hands out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .._jobmeta import tag_pattern
from .._types import JobState
from ..schema import ACTIVE, attempts, jobs
from .records import AttemptRecord, JobRecord, history

__all__ = ["active_count", "counts", "list_jobs", "queue_names", "read_job"]

JobWithHistory = tuple[JobRecord, list[AttemptRecord]]


async def counts(conn: AsyncConnection, queue: str) -> dict[JobState, int]:
    """The number of jobs of ``queue`` in each state."""
    rows = await conn.execute(
        select(jobs.c.state, func.count()).where(jobs.c.queue == queue).group_by(jobs.c.state)
    )
    found = dict.fromkeys(JobState, 0)
    for state, count in rows:
        found[JobState(state)] = count
    return found


async def active_count(conn: AsyncConnection, queue: str) -> int:
    """Queued (delayed included) plus running jobs of ``queue``."""
    stmt = select(func.count()).select_from(jobs).where(jobs.c.queue == queue, ACTIVE)
    return int((await conn.execute(stmt)).scalar_one())


async def read_job(conn: AsyncConnection, job_id: int, queue: str) -> JobWithHistory | None:
    """One job and its attempts (the running one last), or None."""
    row = (
        await conn.execute(select(jobs).where(jobs.c.id == job_id, jobs.c.queue == queue))
    ).one_or_none()
    if row is None:
        return None
    record = JobRecord.from_row(row)
    found = await conn.execute(
        select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.id)
    )
    return record, history(record, list(found))


async def list_jobs(
    conn: AsyncConnection,
    queue: str,
    state: JobState | None,
    limit: int,
    offset: int,
    tags: Sequence[str] = (),
) -> list[JobWithHistory]:
    """Jobs of ``queue`` (in ``state``, having every one of ``tags``), oldest first, with their
    attempts."""
    stmt = select(jobs).where(jobs.c.queue == queue)
    if state is not None:
        stmt = stmt.where(jobs.c.state == state.value)
    for tag in tags:
        stmt = stmt.where(jobs.c.tags.contains(tag_pattern(tag), autoescape=True))
    result = await conn.execute(stmt.order_by(jobs.c.id).limit(limit).offset(offset))
    records = [JobRecord.from_row(r) for r in result]
    found: dict[int, list[Row[Any]]] = {r.id: [] for r in records}
    if records:
        rows = await conn.execute(
            select(attempts).where(attempts.c.job_id.in_(list(found))).order_by(attempts.c.id)
        )
        for a in rows:
            found[a.job_id].append(a)
    return [(r, history(r, found[r.id])) for r in records]


async def queue_names(conn: AsyncConnection) -> list[str]:
    """Every queue name that has jobs."""
    rows = await conn.execute(select(jobs.c.queue).distinct().order_by(jobs.c.queue))
    return list(rows.scalars())
