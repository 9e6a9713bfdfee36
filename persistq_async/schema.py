"""Tables, indexes and the schema version, as SQLAlchemy Core.

Timestamps are stored as float seconds since the epoch (UTC). That keeps every comparison the
same on SQLite and PostgreSQL, and lets an injected clock drive lease expiry in tests.
SQLite tables are STRICT, so a wrong type is refused by the database, not stored.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

__all__ = [
    "ACTIVE",
    "APPLICATION_ID",
    "DEDUPE",
    "FINISHED",
    "QUEUED",
    "RUNNING",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "attempts",
    "jobs",
    "meta",
    "metadata",
    "queue_settings",
]

#: Bumped by every migration; a database with a higher version is refused.
SCHEMA_VERSION = 2
#: SQLite's ``PRAGMA application_id`` for our files ("pq01"), so a foreign file is recognised.
APPLICATION_ID = 0x70713031

# SQLite's rowid alias must be INTEGER; STRICT tables accept REAL, not DOUBLE.
_Id = BigInteger().with_variant(Integer(), "sqlite")
_Time: Double[float] = Double().with_variant(sqlite.REAL(), "sqlite")

metadata = MetaData()

meta = Table(
    "persistq_meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    sqlite_strict=True,
)

jobs = Table(
    "persistq_jobs",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("queue", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    # when a queued job becomes claimable
    Column("run_at", _Time, nullable=False),
    # when the job (last) entered the queue: put or requeue
    Column("enqueued_at", _Time, nullable=False),
    Column("created_at", _Time, nullable=False),
    Column("lease_token", Text),
    Column("lease_expires_at", _Time),
    # when the current lease began; its attempt row is written when the delivery ends
    Column("started_at", _Time),
    Column("dedupe_key", Text),
    Column("last_error", Text),
    Column("result", LargeBinary),
    Column("finished_at", _Time),
    # AUTOINCREMENT: ids are never reused after a delete, so an id names one job forever
    sqlite_autoincrement=True,
    sqlite_strict=True,
)

# Literal SQL, not bound parameters: SQLite uses a partial index only when the query's WHERE
# repeats the index's WHERE term for term.
QUEUED = text("state = 'queued'")
RUNNING = text("state = 'running'")
FINISHED = text("state IN ('done', 'dead', 'cancelled')")
ACTIVE = text("state IN ('queued', 'running')")
DEDUPE = text("dedupe_key IS NOT NULL AND state IN ('queued', 'running')")

# The claim walks this index in order and stops after LIMIT rows, whatever the backlog.
Index(
    "persistq_jobs_ready",
    jobs.c.queue,
    jobs.c.priority.desc(),
    jobs.c.id,
    sqlite_where=QUEUED,
    postgresql_where=QUEUED,
)
# The rescuer finds expired leases without scanning finished jobs.
Index(
    "persistq_jobs_leases",
    jobs.c.lease_expires_at,
    sqlite_where=RUNNING,
    postgresql_where=RUNNING,
)
# At most one active job per (queue, dedupe_key); the database enforces it under concurrency.
Index(
    "persistq_jobs_dedupe",
    jobs.c.queue,
    jobs.c.dedupe_key,
    unique=True,
    sqlite_where=DEDUPE,
    postgresql_where=DEDUPE,
)
# Retention cleaning and list_jobs/stats by state.
Index(
    "persistq_jobs_finished",
    jobs.c.finished_at,
    sqlite_where=FINISHED,
    postgresql_where=FINISHED,
)
# The next due time of delayed jobs, for waiters.
Index(
    "persistq_jobs_due",
    jobs.c.queue,
    jobs.c.run_at,
    sqlite_where=QUEUED,
    postgresql_where=QUEUED,
)
Index("persistq_jobs_queue_state", jobs.c.queue, jobs.c.state, jobs.c.id)

attempts = Table(
    "persistq_attempts",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column(
        "job_id",
        _Id,
        ForeignKey("persistq_jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("attempt", Integer, nullable=False),
    Column("lease_token", Text, nullable=False),
    Column("started_at", _Time, nullable=False),
    Column("finished_at", _Time, nullable=False),
    # acked, nacked, failed, expired, released, cancelled
    Column("outcome", Text, nullable=False),
    Column("error", Text),
    sqlite_strict=True,
)
Index("persistq_attempts_job", attempts.c.job_id, attempts.c.attempt)

# Flow control, one row per queue that has any (issue 16): pause, the rate limit and its token
# bucket, the cap on running jobs, the dead-letter queue. A queue without a row has none.
queue_settings = Table(
    "persistq_queue_settings",
    metadata,
    Column("queue", Text, primary_key=True),
    Column("paused", Integer, nullable=False, server_default=text("0")),
    # the rate limit: rate_count per rate_unit ('s', 'm' or 'h'), bucket of rate_burst tokens
    Column("rate_count", Integer),
    Column("rate_unit", Text),
    Column("rate_burst", Integer),
    # the bucket: tokens held at refilled_at (epoch seconds), updated by claims
    Column("tokens", _Time),
    Column("refilled_at", _Time),
    Column("max_running", Integer),
    Column("dead_letter_queue", Text),
    Column("updated_at", _Time, nullable=False),
    sqlite_strict=True,
)

Migration = Callable[[Connection], None]


def _add_queue_settings(conn: Connection) -> None:
    """Version 2: the flow-control settings table."""
    queue_settings.create(conn, checkfirst=True)


#: MIGRATIONS[n] upgrades a database from version n + 1 to n + 2. Version 1 is created whole.
MIGRATIONS: list[Migration] = [_add_queue_settings]
