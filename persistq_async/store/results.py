"""Reading finished jobs' outcomes for the callers awaiting them (:mod:`persistq_async.results`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .._types import JobState
from ..schema import jobs

__all__ = ["OUTCOME_CHUNK", "Outcome", "outcomes"]

#: Ids one statement asks about; more take several statements.
OUTCOME_CHUNK = 500

_OUTCOMES = select(
    jobs.c.id, jobs.c.state, jobs.c.result, jobs.c.last_error, jobs.c.attempts
).where(
    jobs.c.queue == bindparam("p_queue", type_=jobs.c.queue.type),
    jobs.c.id.in_(bindparam("p_ids", expanding=True)),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """Where an awaited job stands; ``result`` is the stored (encoded) result."""

    state: JobState
    result: bytes | None
    last_error: str | None
    attempts: int


async def outcomes(conn: AsyncConnection, queue: str, ids: Sequence[int]) -> dict[int, Outcome]:
    """The state (and, once finished, result and error) of each job of ``ids`` that exists."""
    found: dict[int, Outcome] = {}
    for start in range(0, len(ids), OUTCOME_CHUNK):
        chunk = list(ids[start : start + OUTCOME_CHUNK])
        rows = await conn.execute(_OUTCOMES, {"p_queue": queue, "p_ids": chunk})
        for row in rows:
            found[row.id] = Outcome(
                state=JobState(row.state),
                result=None if row.result is None else bytes(row.result),
                last_error=row.last_error,
                attempts=row.attempts,
            )
    return found
