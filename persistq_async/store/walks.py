"""Walking the jobs of one queue in one state in id order (keyset pages), through the partial
index that holds them.

Since schema 6 no index holds every job of a queue, and none holds the queued jobs in id order:
each index is written only where a query needs it, so that a job's life writes fewer index
entries. The finished jobs are walked through ``persistq_jobs_queue_state`` (queue, state, id);
the running ones, few (the workers' concurrency bounds them), through ``persistq_jobs_leases``
and sorted; the queued ones through the claim's ``persistq_jobs_ready`` index (queue, priority,
id): one walk per priority, each in id order, merged. A queue's queued jobs have few distinct
priorities as a rule; beyond :data:`MAX_PRIORITY_WALKS` of them one walk sorts the queue's
queued jobs instead (correct, and as costly as the backlog is long).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .._types import JobState
from ..schema import QUEUED, jobs, page_id

__all__ = ["MAX_PRIORITY_WALKS", "keyed", "queued_priorities", "walk"]

#: Most distinct priorities of a queue's queued jobs that a walk visits one by one.
MAX_PRIORITY_WALKS = 32


def _priorities_statement() -> Any:
    # The loose index scan of the ready index: the highest priority, then the highest below it,
    # and so on; one index probe per priority, however many jobs each holds.
    queue = bindparam("p_queue", type_=jobs.c.queue.type)
    found = (
        select(func.max(jobs.c.priority).label("priority"))
        .where(jobs.c.queue == queue, QUEUED)
        .cte("priorities", recursive=True)
    )
    below = select(
        select(func.max(jobs.c.priority))
        .where(jobs.c.queue == queue, QUEUED, jobs.c.priority < found.c.priority)
        .scalar_subquery()
    ).where(found.c.priority.is_not(None))
    found = found.union_all(below)
    return (
        select(found.c.priority).where(found.c.priority.is_not(None)).limit(MAX_PRIORITY_WALKS + 1)
    )


_PRIORITIES = _priorities_statement()


async def queued_priorities(conn: AsyncConnection, queue: str) -> list[int] | None:
    """The distinct priorities of the queued jobs of ``queue``, highest first; None when there
    are more than :data:`MAX_PRIORITY_WALKS`."""
    found = [int(p) for p in (await conn.execute(_PRIORITIES, {"p_queue": queue})).scalars()]
    return None if len(found) > MAX_PRIORITY_WALKS else found


def keyed(
    stmt: Any,
    state: JobState | None,
    *,
    after: int | None = None,
    before: int | None = None,
    descending: bool = False,
    limit: int,
) -> Any:
    """``stmt`` (a select from the jobs table) limited to ids between ``after`` and ``before``
    and ordered by id, the first ``limit`` rows."""
    key = page_id(state)
    if after is not None:
        stmt = stmt.where(key > after)
    if before is not None:
        stmt = stmt.where(key < before)
    return stmt.order_by(key.desc() if descending else key).limit(limit)


async def walk(
    conn: AsyncConnection,
    stmt: Any,
    queue: str,
    state: JobState,
    *,
    after: int | None = None,
    before: int | None = None,
    descending: bool = False,
    limit: int,
) -> list[Row[Any]]:
    """The first ``limit`` rows of ``stmt`` (a select from the jobs table, narrowed to ``queue``
    and to ``in_state(state)`` by the caller) in id order, between ``after`` and ``before``."""
    if state is JobState.QUEUED:
        priorities = await queued_priorities(conn, queue)
        if priorities is not None:
            rows: list[Row[Any]] = []
            for priority in priorities:
                narrowed = stmt.where(jobs.c.priority == priority)
                page = keyed(
                    narrowed, state, after=after, before=before, descending=descending, limit=limit
                )
                rows.extend(await conn.execute(page))
            rows.sort(key=lambda r: int(r.id), reverse=descending)
            return rows[:limit]
    page = keyed(stmt, state, after=after, before=before, descending=descending, limit=limit)
    return list(await conn.execute(page))
