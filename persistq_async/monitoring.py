"""Stats, and the structured logging the library does.

Every log record the library emits carries ``extra`` fields: ``action`` (one of :data:`ACTIONS`),
and where they apply ``job_id``, ``queue``, ``attempts``, ``pool``, ``error``. The action names are
stable; match on them rather than on messages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ._types import JobState

__all__ = ["ACTIONS", "Stats", "log_event"]

#: The stable action names found in log records' ``action`` field.
ACTIONS = frozenset(
    {
        "schema_created",
        "schema_migrated",
        "job_put",
        "job_claimed",
        "job_acked",
        "job_nacked",
        "job_failed",
        "job_dead",
        "job_released",
        "job_extended",
        "job_rescued",
        "job_cancelled",
        "job_requeued",
        "job_deleted",
        "jobs_purged",
        "jobs_cleaned",
        "job_timeout",
        "job_blocking",
        "pool_started",
        "pool_stopped",
        "pool_resized",
        "pool_restarted",
        "supervisor_gave_up",
        "service_failed",
        "listener_failed",
        "wal_growing",
        "write_retrying",
        "write_abandoned",
        "worker_started",
        "worker_stopping",
        "worker_stopped",
        "job_stopped",
        "outcome_refused",
        "outcome_failed",
        "result_unstorable",
        "hook_failed",
        "write_busy",
        "write_failed",
        "write_retried_alone",
        "rollback_failed",
        "connection_close_failed",
        "housekeeping_failed",
        "release_lost",
        "lease_lost",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """How many jobs of one queue are in each state (delayed jobs count as queued)."""

    queue: str
    queued: int
    running: int
    done: int
    dead: int
    cancelled: int

    @property
    def total(self) -> int:
        """Every job the queue holds."""
        return self.queued + self.running + self.done + self.dead + self.cancelled

    @classmethod
    def from_counts(cls, queue: str, counts: dict[JobState, int]) -> Stats:
        """Build from per-state counts."""
        return cls(
            queue=queue,
            queued=counts.get(JobState.QUEUED, 0),
            running=counts.get(JobState.RUNNING, 0),
            done=counts.get(JobState.DONE, 0),
            dead=counts.get(JobState.DEAD, 0),
            cancelled=counts.get(JobState.CANCELLED, 0),
        )


def log_event(logger: logging.Logger, level: int, action: str, message: str, **fields: Any) -> None:
    """Log ``message`` with ``action`` and ``fields`` as structured ``extra`` attributes."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"action": action, **fields})
