"""Stats, and the structured logging the library does.

Every log record the library emits carries ``extra`` fields: ``action`` (one of :data:`ACTIONS`),
and where they apply ``job_id``, ``queue``, ``attempts``, ``pool``, ``error``. The action names are
stable; match on them rather than on messages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._types import JobState

__all__ = [
    "ACTIONS",
    "DEFAULT_STATS_WINDOW",
    "HealthCheck",
    "HealthReport",
    "PoolInfo",
    "Stats",
    "WorkerInfo",
    "log_event",
    "percentile",
]

#: Seconds of attempt history :meth:`Queue.stats` summarises by default.
DEFAULT_STATS_WINDOW = 60.0

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
        "jobs_requeued",
        "jobs_cleaned",
        "job_timeout",
        "job_blocking",
        "loop_lag",
        "alert_firing",
        "alert_resolved",
        "alert_sink_failed",
        "alert_lease_taken",
        "alert_lease_lost",
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
        "queue_paused",
        "queue_resumed",
        "queue_flow_set",
        "job_dead_lettered",
        "on_dead_failed",
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
        "observer_failed",
        "dashboard_unavailable",
        "dashboard_failed",
        "worker_registered",
        "worker_unregistered",
        "workers_pruned",
        "monitor_serving",
        "monitor_failed",
        "schedule_saved",
        "schedule_removed",
        "schedule_paused",
        "schedule_resumed",
        "schedule_fired",
        "schedule_ticks_skipped",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """One queue as the database sees it, the same from every process.

    The counts are of jobs now (``queued`` = ``ready`` + ``scheduled``, delayed jobs being
    scheduled). The rest summarises the deliveries that finished in the last
    ``window_seconds``: ``finished`` counts them per outcome (``acked``, ``nacked``, ``failed``,
    ``expired``, ``released``, ``cancelled``), ``throughput`` is the jobs completed (acked,
    failed, or dead after their last attempt) per second, ``retries`` the deliveries that ended
    with the job queued again (nacked or expired with attempts left). Percentiles are over at
    most the :data:`~persistq_async.store.metrics.MAX_SAMPLE` most recent deliveries of the
    window; run time is from claim to outcome, wait time from the moment the job became
    claimable to its claim. They are None when the window holds no delivery.
    """

    queue: str
    queued: int
    running: int
    done: int
    dead: int
    cancelled: int
    ready: int = 0
    scheduled: int = 0
    oldest_ready_age: float | None = None
    window_seconds: float = 0.0
    finished: Mapping[str, int] = field(default_factory=dict)
    throughput: float = 0.0
    retries: int = 0
    run_time_p50: float | None = None
    run_time_p95: float | None = None
    run_time_p99: float | None = None
    wait_time_p50: float | None = None
    wait_time_p95: float | None = None
    wait_time_p99: float | None = None
    #: Whether the queue is paused (:meth:`Queue.pause`): puts are taken, nothing is claimed.
    paused: bool = False
    #: The queue's rate limit (``"100/s"``), or None.
    rate_limit: str | None = None
    #: The most jobs of the queue running at once across every worker, or None.
    max_running: int | None = None

    @property
    def total(self) -> int:
        """Every job the queue holds."""
        return self.queued + self.running + self.done + self.dead + self.cancelled

    @property
    def lag(self) -> float | None:
        """Seconds the oldest ready job has waited to be claimed (None when none is ready)."""
        return self.oldest_ready_age

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


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of ``ordered`` (sorted ascending); None when empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolInfo:
    """One pool of a registered worker, as its supervisor last reported it."""

    name: str
    queue: str
    concurrency: int
    active: int
    processed: int
    failed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A :class:`~persistq_async.Supervisor` in the worker registry.

    ``alive`` is False when its heartbeat (``last_seen``) is older than the timeout the listing
    was asked with: the process crashed or hangs; its row is pruned later.
    """

    id: str
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime
    alive: bool
    pools: tuple[PoolInfo, ...] = ()

    @property
    def queues(self) -> frozenset[str]:
        """The queues its pools consume."""
        return frozenset(p.queue for p in self.pools)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    """One check of a :class:`HealthReport`: ``status`` is "ok", "degraded" or "failing"."""

    name: str
    status: str
    detail: str
    value: float | int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    """What :meth:`Queue.health` found. ``status`` is the worst of the checks'.

    ``ok`` is True unless something is failing (the database does not answer, or its schema
    is not this library's): a degraded queue (lagging, no live worker, a large WAL) still
    works, and a readiness probe should not take its workers out for it.
    """

    queue: str
    status: str
    checks: tuple[HealthCheck, ...]
    database_reachable: bool
    round_trip_seconds: float | None
    schema_version: int | None
    lag_seconds: float | None
    live_workers: int | None
    wal_bytes: int | None

    @property
    def ok(self) -> bool:
        """Whether the queue can be used (status "ok" or "degraded")."""
        return self.status != "failing"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (the ``/readyz`` body)."""
        return {
            "queue": self.queue,
            "status": self.status,
            "ok": self.ok,
            "checks": [
                {"name": c.name, "status": c.status, "detail": c.detail, "value": c.value}
                for c in self.checks
            ],
        }
