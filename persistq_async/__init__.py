"""persistq_async: an asyncio-native persistent job queue on SQLite or PostgreSQL.

>>> import persistq_async as pq
>>> async with pq.Queue("jobs.db", name="emails") as q:   # doctest: +SKIP
...     await q.put({"to": "a@example.org"})
"""

from __future__ import annotations

from ._types import ACTIVE_STATES, FINISHED_STATES, Handler, JobState, Serializer
from .alerts import (
    Alert,
    Alerting,
    AlertRule,
    DeadJobsRule,
    FailureRateRule,
    NoWorkerRule,
    PoolRestartsRule,
    QueueLagRule,
    WalSizeRule,
    WebhookSink,
)
from .config import Options
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    ConfigError,
    DatabaseError,
    DatabaseNotFound,
    JobAlreadyFinished,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobStateError,
    LeaseLost,
    PersistQError,
    QueueClosed,
    Reject,
    Retry,
    SchemaError,
    SerializationError,
    SupervisorError,
)
from .job import Attempt, Job, JobInfo
from .logformat import JSONFormatter
from .monitoring import HealthCheck, HealthReport, PoolInfo, Stats, WorkerInfo
from .pool import Pool
from .queue import Queue
from .schedules import ScheduleInfo
from .serializers import JSONSerializer
from .supervisor import Supervisor

__version__ = "0.1.0"

__all__ = [
    "ACTIVE_STATES",
    "FINISHED_STATES",
    "Alert",
    "AlertRule",
    "Alerting",
    "ArgumentError",
    "ArgumentTypeError",
    "Attempt",
    "ConfigError",
    "DatabaseError",
    "DatabaseNotFound",
    "DeadJobsRule",
    "FailureRateRule",
    "Handler",
    "HealthCheck",
    "HealthReport",
    "JSONFormatter",
    "JSONSerializer",
    "Job",
    "JobAlreadyFinished",
    "JobCancelled",
    "JobFailed",
    "JobInfo",
    "JobNotFound",
    "JobState",
    "JobStateError",
    "LeaseLost",
    "NoWorkerRule",
    "Options",
    "PersistQError",
    "Pool",
    "PoolInfo",
    "PoolRestartsRule",
    "Queue",
    "QueueClosed",
    "QueueLagRule",
    "Reject",
    "Retry",
    "ScheduleInfo",
    "SchemaError",
    "SerializationError",
    "Serializer",
    "Stats",
    "Supervisor",
    "SupervisorError",
    "WalSizeRule",
    "WebhookSink",
    "WorkerInfo",
    "__version__",
]
