"""What crosses the store's boundary: the rows it reads and writes, as frozen dataclasses."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Row

from .._types import JobState

__all__ = [
    "AttemptRecord",
    "ClaimResult",
    "Delivery",
    "JobRecord",
    "NewJob",
    "Rescued",
    "attempt_row",
    "history",
    "new_lease_token",
    "record_maker",
]


# The fields of JobRecord in the order record_maker unpacks them.
_RECORD_FIELDS = (
    "id",
    "queue",
    "state",
    "payload",
    "priority",
    "attempts",
    "max_attempts",
    "run_at",
    "enqueued_at",
    "created_at",
    "lease_token",
    "lease_expires_at",
    "started_at",
    "dedupe_key",
    "last_error",
    "result",
    "finished_at",
    "tags",
    "headers",
)
# A state's enum member by its stored value: a dict lookup where JobState(value) is a call.
_STATES: dict[str, JobState] = {state.value: state for state in JobState}


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """One job to insert: the payload already encoded.

    A ``run_at`` in the past becomes the time of the insert, unless ``keep_run_at``: a
    schedule's job keeps its tick time however late it is enqueued, so it says which tick it is.
    """

    payload: bytes
    priority: int
    run_at: float
    max_attempts: int
    dedupe_key: str | None
    # tags and headers in their stored form (see persistq_async._jobmeta)
    tags: str | None = None
    headers: str | None = None
    keep_run_at: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """A row of the jobs table."""

    id: int
    queue: str
    state: JobState
    payload: bytes
    priority: int
    attempts: int
    max_attempts: int
    run_at: float
    enqueued_at: float
    created_at: float
    lease_token: str | None
    lease_expires_at: float | None
    started_at: float | None
    dedupe_key: str | None
    last_error: str | None
    result: bytes | None
    finished_at: float | None
    # tags and headers in their stored form (see persistq_async._jobmeta)
    tags: str | None = None
    headers: str | None = None

    @classmethod
    def from_row(cls, row: Row[Any]) -> JobRecord:
        """Build from a row selected or returned with every column of ``jobs``."""
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> JobRecord:
        """Build from every column of ``jobs`` by name."""
        return cls(
            id=m["id"],
            queue=m["queue"],
            state=JobState(m["state"]),
            payload=bytes(m["payload"]),
            priority=m["priority"],
            attempts=m["attempts"],
            max_attempts=m["max_attempts"],
            run_at=m["run_at"],
            enqueued_at=m["enqueued_at"],
            created_at=m["created_at"],
            lease_token=m["lease_token"],
            lease_expires_at=m["lease_expires_at"],
            started_at=m["started_at"],
            dedupe_key=m["dedupe_key"],
            last_error=m["last_error"],
            result=None if m["result"] is None else bytes(m["result"]),
            finished_at=m["finished_at"],
            tags=m["tags"],
            headers=m["headers"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """One delivery of a job; ``outcome`` is None for the delivery running now."""

    attempt: int
    started_at: float
    finished_at: float | None
    outcome: str | None
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """What an ack of one delivery needs to be written together with others."""

    job_id: int
    token: str
    queue: str
    attempt: int
    started_at: float
    ready_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rescued:
    """A job whose expired lease a transaction took back (queued again, or dead)."""

    job_id: int
    queue: str
    attempts: int
    dead: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimResult:
    """What a claim leased, and when the next job could become claimable (epoch seconds)."""

    records: list[JobRecord]
    next_due_at: float | None
    # expired leases the claim's transaction rescued first
    rescued: Sequence[Rescued] = ()


@functools.lru_cache(maxsize=8)
def record_maker(columns: tuple[str, ...]) -> Callable[[Sequence[Any]], JobRecord]:
    """A builder of :class:`JobRecord` from a plain row with every column of ``jobs`` in the
    order ``columns`` names them (the claim's rows): no mapping or named tuple per row."""
    at = {name: n for n, name in enumerate(columns)}
    take = itemgetter(*(at[name] for name in _RECORD_FIELDS))

    def make(row: Sequence[Any]) -> JobRecord:
        (
            id_,
            queue,
            state,
            payload,
            priority,
            attempts,
            max_attempts,
            run_at,
            enqueued_at,
            created_at,
            lease_token,
            lease_expires_at,
            started_at,
            dedupe_key,
            last_error,
            result,
            finished_at,
            tags,
            headers,
        ) = take(row)
        return JobRecord(
            id=id_,
            queue=queue,
            state=_STATES.get(state) or JobState(state),
            payload=payload if type(payload) is bytes else bytes(payload),
            priority=priority,
            attempts=attempts,
            max_attempts=max_attempts,
            run_at=run_at,
            enqueued_at=enqueued_at,
            created_at=created_at,
            lease_token=lease_token,
            lease_expires_at=lease_expires_at,
            started_at=started_at,
            dedupe_key=dedupe_key,
            last_error=last_error,
            result=result if result is None or type(result) is bytes else bytes(result),
            finished_at=finished_at,
            tags=tags,
            headers=headers,
        )

    return make


def attempt_row(
    *,
    job_id: int,
    attempt: int,
    token: str,
    started_at: float | None,
    now: float,
    outcome: str,
    error: str | None,
    ready_at: float | None = None,
) -> dict[str, Any]:
    """The attempt row written when a delivery ends; a delivery with no known start began now.

    ``ready_at`` is when the delivery's job had become claimable (its ``run_at`` at the claim),
    for the wait-time figures of :meth:`Queue.stats`."""
    return {
        "job_id": job_id,
        "attempt": attempt,
        "lease_token": token,
        "started_at": started_at if started_at is not None else now,
        "finished_at": now,
        "outcome": outcome,
        "error": error,
        "ready_at": ready_at,
    }


def history(record: JobRecord, rows: Sequence[Row[Any]]) -> list[AttemptRecord]:
    """A job's attempts from its attempt rows, plus the delivery running now (last)."""
    found = [
        AttemptRecord(
            attempt=row.attempt,
            started_at=row.started_at,
            finished_at=row.finished_at,
            outcome=row.outcome,
            error=row.error,
        )
        for row in rows
    ]
    if record.state == JobState.RUNNING and record.started_at is not None:
        found.append(
            AttemptRecord(
                attempt=record.attempts,
                started_at=record.started_at,
                finished_at=None,
                outcome=None,
                error=None,
            )
        )
    return found


def new_lease_token() -> str:
    """A fresh delivery's lease token: 128 random bits as 32 hex digits (what ``uuid4().hex``
    gives, without building a UUID on every claim)."""
    return os.urandom(16).hex()
