"""Shared vocabulary: job states, JSON aliases and the protocols users implement."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    from .job import Job

__all__ = [
    "ACTIVE_STATES",
    "FINISHED_STATES",
    "Handler",
    "JSONValue",
    "JobState",
    "Serializer",
]

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None


class JobState(enum.StrEnum):
    """The life cycle of a job; the value is what the database stores."""

    #: Waiting to be claimed (or delayed until ``run_at``). In: put, nack, rescue, requeue.
    #: Out: a claim (to RUNNING), cancel.
    QUEUED = "queued"
    #: Leased by one consumer. In: a claim. Out: ack, nack, fail, lease hand-back, rescue, cancel.
    RUNNING = "running"
    #: Acked. In: ack. Out: requeue, retention cleaning, delete.
    DONE = "done"
    #: Failed for good: fail, reject, or attempts spent. Out: requeue, cleaning, delete.
    DEAD = "dead"
    #: Cancelled by ``Queue.cancel``. Out: requeue, cleaning, delete.
    CANCELLED = "cancelled"


ACTIVE_STATES: frozenset[JobState] = frozenset({JobState.QUEUED, JobState.RUNNING})
FINISHED_STATES: frozenset[JobState] = frozenset({JobState.DONE, JobState.DEAD, JobState.CANCELLED})


class Serializer(Protocol):
    """Encodes payloads and results to bytes for the database, and back."""

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``; raise :class:`~persistq_async.SerializationError` if it cannot be."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode what :meth:`dumps` produced."""
        ...


class Handler(Protocol):
    """A pool's handler: an ``async def`` taking the leased job. Its return value is the result."""

    async def __call__(self, job: Job, /) -> Any:
        """Process one delivery."""
        ...
