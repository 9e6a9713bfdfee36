"""The store's reads: async functions of a connection that the engine's pool hands out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .._jobmeta import tag_pattern
from .._types import JobState
from ..schema import attempts, count_in_state, in_state, jobs
from .records import AttemptRecord, JobRecord, history
from .walks import walk

__all__ = ["active_count", "counts", "list_jobs", "read_job"]

JobWithHistory = tuple[JobRecord, list[AttemptRecord]]


async def counts(conn: AsyncConnection, queue: str) -> dict[JobState, int]:
    """The number of jobs of ``queue`` in each state."""
    row = (await conn.execute(select(*(count_in_state(queue, s) for s in JobState)))).one()
    return {state: int(n) for state, n in zip(JobState, row, strict=True)}


async def active_count(conn: AsyncConnection, queue: str) -> int:
    """Queued (delayed included) plus running jobs of ``queue``."""
    stmt = select(count_in_state(queue, JobState.QUEUED) + count_in_state(queue, JobState.RUNNING))
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
    attempts.

    Without a state, one walk per state (each its own partial index, in id order), merged."""
    rows: list[Row[Any]] = []
    for state_walked in JobState if state is None else (state,):
        stmt = select(jobs).where(jobs.c.queue == queue, in_state(state_walked))
        for tag in tags:
            stmt = stmt.where(jobs.c.tags.contains(tag_pattern(tag), autoescape=True))
        rows.extend(await walk(conn, stmt, queue, state_walked, limit=offset + limit))
    records = sorted((JobRecord.from_row(r) for r in rows), key=lambda r: r.id)
    records = records[offset : offset + limit]
    found: dict[int, list[Row[Any]]] = {r.id: [] for r in records}
    if records:
        history_rows = await conn.execute(
            select(attempts).where(attempts.c.job_id.in_(list(found))).order_by(attempts.c.id)
        )
        for a in history_rows:
            found[a.job_id].append(a)
    return [(r, history(r, found[r.id])) for r in records]
