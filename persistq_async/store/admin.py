"""Reads and writes across queues and over many jobs: keyset pages, the list of queues, the
queue of a job id, and the batches of bulk requeue and purge.

Every read here follows an index from where it starts, so a page deep in a million jobs costs
what the first page costs (no OFFSET scan):

- a page of one queue in one state walks the partial index of that state in id order (see
  :mod:`.walks`: finished jobs ``persistq_jobs_queue_state``, queued ones the ready index one
  priority at a time, running ones, few, the leases index);
- a page of every queue in every state walks the primary key;
- one queue in every state, or one state in every queue, is that many walks of those indexes,
  merged (there are five states, and a database has few queues);
- the list of queues skips through the finished and the ready index from one name to the
  next (a recursive query: one index probe per queue, however many jobs each holds), plus the
  queues of the running jobs.

The bulk writes act on ids a read chose, in one short transaction per batch, and check each
job's queue and state again inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, func, select, union, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement

from .._jobmeta import tag_pattern
from .._types import FINISHED_STATES, JobState
from ..schema import FINISHED, QUEUED, RUNNING, attempts, in_state, jobs
from .records import AttemptRecord, JobRecord, history
from .walks import keyed, walk

__all__ = [
    "count_matching",
    "delete_ids",
    "find_queue",
    "list_page",
    "queue_names",
    "requeue_ids",
    "select_ids",
]


def _loose_scan(where: Any, name: str) -> Any:
    # The loose index scan: the smallest name, then the smallest name above it, and so on,
    # through a partial index that leads with the queue (its predicate repeated literally).
    names = select(func.min(jobs.c.queue).label("name")).where(where).cte(name, recursive=True)
    following = select(
        select(func.min(jobs.c.queue)).where(where, jobs.c.queue > names.c.name).scalar_subquery()
    ).where(names.c.name.is_not(None))
    names = names.union_all(following)
    return select(names.c.name).where(names.c.name.is_not(None))


def _queue_names_statement() -> Any:
    # No index holds every job (schema 6): the queues of the finished jobs, of the queued ones
    # (the ready index), and of the running ones (few; the leases index alone).
    running = select(jobs.c.queue.label("name")).where(RUNNING)
    found = union(_loose_scan(FINISHED, "finished"), _loose_scan(QUEUED, "queued"), running)
    return found.subquery().select().order_by("name")


_QUEUE_NAMES = _queue_names_statement()


async def queue_names(conn: AsyncConnection) -> list[str]:
    """Every queue name that has jobs, sorted."""
    return [str(name) for name in (await conn.execute(_QUEUE_NAMES)).scalars()]


async def find_queue(conn: AsyncConnection, job_id: int) -> str | None:
    """The queue of the job with this id, or None."""
    found = await conn.execute(select(jobs.c.queue).where(jobs.c.id == job_id))
    queue = found.scalar_one_or_none()
    return None if queue is None else str(queue)


def _filtered(queue: str | None, state: JobState | None, tags: Sequence[str]) -> Any:
    stmt = select(jobs)
    for tag in tags:
        stmt = stmt.where(jobs.c.tags.contains(tag_pattern(tag), autoescape=True))
    if queue is not None:
        stmt = stmt.where(jobs.c.queue == queue)
    if state is not None:
        stmt = stmt.where(in_state(state))
    return stmt


def _page(
    queue: str | None,
    state: JobState | None,
    limit: int,
    after: int | None,
    before: int | None,
    tags: Sequence[str] = (),
) -> Any:
    # One walk of an index (queued jobs: of one priority; see .walks).
    return keyed(
        _filtered(queue, state, tags),
        state,
        after=None if before is not None else after,
        before=before,
        descending=before is not None,
        limit=limit,
    )


async def list_page(
    conn: AsyncConnection,
    queue: str | None,
    state: JobState | None,
    limit: int,
    after: int | None,
    before: int | None,
    tags: Sequence[str] = (),
) -> list[tuple[JobRecord, list[AttemptRecord]]]:
    """Up to ``limit`` jobs, oldest first: of ``queue`` (every queue when None), in ``state``
    (every state when None), having every one of ``tags``, with ids above ``after`` or, given
    ``before``, the last ones below it; with their attempts."""
    if queue is None and state is None:
        rows = list(await conn.execute(_page(None, None, limit, after, before, tags)))
    else:
        if queue is not None:
            pairs = [(queue, s) for s in JobState] if state is None else [(queue, state)]
        else:
            assert state is not None
            pairs = [(name, state) for name in await queue_names(conn)]
        rows = []
        for walk_queue, walk_state in pairs:
            rows.extend(
                await walk(
                    conn,
                    _filtered(walk_queue, walk_state, tags),
                    walk_queue,
                    walk_state,
                    after=None if before is not None else after,
                    before=before,
                    descending=before is not None,
                    limit=limit,
                )
            )
    records = sorted((JobRecord.from_row(r) for r in rows), key=lambda r: r.id)
    records = records[-limit:] if before is not None else records[:limit]
    found: dict[int, list[Row[Any]]] = {r.id: [] for r in records}
    if records:
        result = await conn.execute(
            select(attempts).where(attempts.c.job_id.in_(list(found))).order_by(attempts.c.id)
        )
        for a in result:
            found[a.job_id].append(a)
    return [(r, history(r, found[r.id])) for r in records]


def _matching(queue: str, state: JobState, cutoff: float | None) -> list[ColumnElement[bool]]:
    conditions = [jobs.c.queue == queue, in_state(state)]
    if cutoff is not None:
        # Finished jobs by when they finished; queued and running ones by when they entered.
        when = jobs.c.finished_at if state in FINISHED_STATES else jobs.c.enqueued_at
        conditions.append(when < cutoff)
    return conditions


async def count_matching(
    conn: AsyncConnection, queue: str, state: JobState, cutoff: float | None
) -> int:
    """How many jobs of ``queue`` are in ``state`` (and older than ``cutoff``, epoch seconds)."""
    stmt = select(func.count()).select_from(jobs).where(*_matching(queue, state, cutoff))
    return int((await conn.execute(stmt)).scalar_one())


async def select_ids(
    conn: AsyncConnection,
    queue: str,
    state: JobState,
    cutoff: float | None,
    after: int,
    limit: int,
) -> list[int]:
    """The next ``limit`` ids above ``after`` of the jobs :func:`count_matching` counts."""
    chosen = select(jobs.c.id).where(*_matching(queue, state, cutoff))
    return [int(r.id) for r in await walk(conn, chosen, queue, state, after=after, limit=limit)]


def requeue_ids(conn: Connection, queue: str, state: JobState, ids: list[int], now: float) -> int:
    """In a write transaction: requeue those of ``ids`` still in ``queue`` and ``state`` (a
    finished state), attempts reset; returns how many. A job whose ``dedupe_key`` an active
    job holds is left as it is."""
    values = {
        "state": JobState.QUEUED.value,
        "attempts": 0,
        "run_at": now,
        "enqueued_at": now,
        "finished_at": None,
        "result": None,
    }
    where = _matching(queue, state, None)
    try:
        with conn.begin_nested():
            result = conn.execute(update(jobs).where(jobs.c.id.in_(ids), *where).values(values))
            return int(result.rowcount)
    except IntegrityError:
        pass
    # Some job's dedupe_key is taken (by an active job, or by another of this batch): one by
    # one, so that every other job is still requeued.
    count = 0
    for job_id in ids:
        try:
            with conn.begin_nested():
                result = conn.execute(
                    update(jobs).where(jobs.c.id == job_id, *where).values(values)
                )
                count += int(result.rowcount)
        except IntegrityError:
            continue
    return count


def delete_ids(
    conn: Connection, queue: str, state: JobState, ids: list[int], cutoff: float | None
) -> int:
    """In a write transaction: delete those of ``ids`` that still match (queue, state, age),
    with their attempts; returns how many."""
    gone = list(
        conn.execute(
            delete(jobs)
            .where(jobs.c.id.in_(ids), *_matching(queue, state, cutoff))
            .returning(jobs.c.id)
        ).scalars()
    )
    if gone:
        # The foreign key cascades where it is enforced; this also covers a connection without it.
        conn.execute(delete(attempts).where(attempts.c.job_id.in_(gone)))
    return len(gone)
