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
    and_,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.selectable import ScalarSelect

from ._types import JobState

__all__ = [
    "ACTIVE",
    "APPLICATION_ID",
    "DEDUPE",
    "FINISHED",
    "QUEUED",
    "RUNNING",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "alert_lease",
    "alert_state",
    "attempts",
    "count_in_state",
    "jobs",
    "pool_restarts",
    "workers",
    "meta",
    "metadata",
    "schedules",
    "ticks",
    "page_id",
    "queue_settings",
    "in_state",
]

#: Bumped by every migration; a database with a higher version is refused.
SCHEMA_VERSION = 6
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
    # job metadata (schema 2): tags as "\x1fa\x1fb\x1f" so that a LIKE finds one on both
    # databases without JSON functions; headers as a JSON object of strings
    Column("tags", Text),
    Column("headers", Text),
    # AUTOINCREMENT: ids are never reused after a delete, so an id names one job forever
    sqlite_autoincrement=True,
    sqlite_strict=True,
)

# Literal SQL, not bound parameters: SQLite uses a partial index only when the query's WHERE
# repeats the index's WHERE term for term.
QUEUED = text("state = 'queued'")
RUNNING = text("state = 'running'")
# Not an IN list (schema 6): SQLite evaluates a partial index's predicate on every insert and
# on every update of the state, and an IN list of three or more values builds a temporary
# b-tree for each evaluation; two inequalities cost nothing. It was about 40% of the
# instructions of a raw put, claim and ack. Exact while JobState has these five states (a test
# checks it).
FINISHED = text("state <> 'queued' AND state <> 'running'")
ACTIVE = text("state IN ('queued', 'running')")
DEDUPE = text("dedupe_key IS NOT NULL AND state IN ('queued', 'running')")


def _in_state(state: JobState) -> ColumnElement[bool]:
    if state is JobState.QUEUED:
        return and_(QUEUED)
    if state is JobState.RUNNING:
        return and_(RUNNING)
    return and_(text(f"state = '{state.value}'"), FINISHED)


_IN_STATE = {state: _in_state(state) for state in JobState}


def in_state(state: JobState) -> ColumnElement[bool]:
    """The jobs in ``state``, as literal SQL that repeats the predicate of the partial indexes
    holding them (queued: ``persistq_jobs_ready`` and ``_due``; running: ``_leases``; finished:
    ``_queue_state`` and ``_finished``): SQLite uses a partial index only when the query's WHERE
    repeats its terms, never through a bound parameter."""
    return _IN_STATE[state]


# The unary plus hides the primary key from SQLite's planner: a walk of running jobs in id
# order would otherwise follow the primary key and read every job past the keyset, where the
# leases index holds the few running jobs (and sorting them is cheap). Queued jobs are walked
# through the ready index, one priority at a time (see store/walks.py).
_UNINDEXED_ID: ColumnElement[int] = literal_column("+persistq_jobs.id", type_=jobs.c.id.type)


def page_id(state: JobState | None) -> ColumnElement[int]:
    """The id to compare and order by when walking the jobs in ``state`` (None: every state)
    by id: the column itself, or for running jobs the same value hidden from the planner."""
    return _UNINDEXED_ID if state is JobState.RUNNING else jobs.c.id


def count_in_state(queue: str, state: JobState) -> ScalarSelect[int]:
    """How many jobs of ``queue`` are in ``state``, as a scalar subquery that walks the partial
    index of that state (no index holds every state since schema 6)."""
    return (
        select(func.count())
        .select_from(jobs)
        .where(jobs.c.queue == queue, in_state(state))
        .scalar_subquery()
    )


# The claim walks this index in order and stops after LIMIT rows, whatever the backlog.
Index(
    "persistq_jobs_ready",
    jobs.c.queue,
    jobs.c.priority.desc(),
    jobs.c.id,
    sqlite_where=QUEUED,
    postgresql_where=QUEUED,
)
# The rescuer finds expired leases without scanning finished jobs. Queue and state (the
# latter always 'running' here) make it covering, so the running jobs of one queue are
# counted (flow control's cap, stats) and the queues listed from the index alone (schema 6).
Index(
    "persistq_jobs_leases",
    jobs.c.lease_expires_at,
    jobs.c.queue,
    jobs.c.state,
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
# Retention cleaning: finished jobs by when they finished.
Index(
    "persistq_jobs_finished",
    jobs.c.finished_at,
    sqlite_where=FINISHED,
    postgresql_where=FINISHED,
)
# The next due time of delayed jobs, for waiters; ready counts for stats. The state (always
# 'queued' here) makes it covering for the counts of queued jobs (schema 6): SQLite reads a
# column of a partial index's predicate from the table unless the index holds it.
Index(
    "persistq_jobs_due",
    jobs.c.queue,
    jobs.c.run_at,
    jobs.c.state,
    sqlite_where=QUEUED,
    postgresql_where=QUEUED,
)
# Counts and keyset pages of the finished jobs of one queue in one state; the list of queues.
# Partial (schema 6): the queued and running jobs, which every job passes through, are found
# through the ready and leases indexes instead, so a put and a claim no longer write an entry
# here (a full index cost an insert at the put and a delete and an insert at the claim and at
# the ack; on PostgreSQL, where no claim or ack is a HOT update as state changes, a new entry
# at each).
Index(
    "persistq_jobs_queue_state",
    jobs.c.queue,
    jobs.c.state,
    jobs.c.id,
    sqlite_where=FINISHED,
    postgresql_where=FINISHED,
)

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
    # when the delivery's job became claimable (schema 2): the wait is started_at - ready_at
    Column("ready_at", _Time),
    sqlite_strict=True,
)
Index("persistq_attempts_job", attempts.c.job_id, attempts.c.attempt)
# stats(window=...) reads the attempts finished in the window, whatever the table's size.
Index("persistq_attempts_finished", attempts.c.finished_at)

# The worker registry (schema 2): one row per running Supervisor, refreshed by its heartbeat.
workers = Table(
    "persistq_workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", _Time, nullable=False),
    Column("last_seen", _Time, nullable=False),
    # a JSON list of the supervisor's pools: name, queue, concurrency, active, processed, failed
    Column("pools", Text, nullable=False),
    sqlite_strict=True,
)
Index("persistq_workers_last_seen", workers.c.last_seen)

# ---------------------------------------------------------------------- alerting (version 3)

# Which process evaluates the alert rules of this database: one row per lease name, held by
# ``owner`` until ``expires_at``; taken over by another process once it has expired.
alert_lease = Table(
    "persistq_alert_lease",
    metadata,
    Column("name", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("expires_at", _Time, nullable=False),
    sqlite_strict=True,
)

# The rules that are pending or firing now (an inactive rule has no row), so an evaluator that
# takes over neither fires again what is firing nor forgets how long a condition has held.
alert_state = Table(
    "persistq_alert_state",
    metadata,
    Column("rule", Text, primary_key=True),
    # pending or firing
    Column("state", Text, nullable=False),
    Column("active_since", _Time, nullable=False),
    Column("fired_at", _Time),
    # while firing: since when the condition has been false (keep_firing_seconds)
    Column("clear_since", _Time),
    Column("value", _Time),
    Column("updated_at", _Time, nullable=False),
    sqlite_strict=True,
)

# Claim-loop restarts of every process, so one evaluator sees them all; pruned by age.
pool_restarts = Table(
    "persistq_pool_restarts",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("queue", Text, nullable=False),
    Column("pool", Text, nullable=False),
    Column("restarted_at", _Time, nullable=False),
    Column("error", Text),
    sqlite_strict=True,
)
Index("persistq_pool_restarts_at", pool_restarts.c.restarted_at)
# (The failure-rate rule counts the attempts that ended within its window through the
# persistq_attempts_finished index of version 2.)


def _add_alerting(conn: Connection) -> None:
    """Version 2 -> 3: the alerting tables."""
    for table in (alert_lease, alert_state, pool_restarts):
        table.create(conn)


# ---------------------------------------------------------------------- schedules (version 4)

# Periodic jobs (issue 15). One row per (queue, name); the scheduler fires ticks due by
# next_run_at, and a tick row, committed with its job, makes each tick one job.
schedules = Table(
    "persistq_schedules",
    metadata,
    Column("queue", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    # exactly one of cron (in timezone) and every_seconds
    Column("cron", Text),
    Column("every_seconds", _Time),
    Column("timezone", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("priority", Integer, nullable=False),
    # None: the enqueuing queue's max_attempts option
    Column("max_attempts", Integer),
    # a JSON list of str
    Column("tags", Text, nullable=False),
    Column("catch_up", Text, nullable=False),
    Column("catch_up_limit", Integer, nullable=False),
    Column("misfire_grace", _Time, nullable=False),
    # 0 or 1 (STRICT tables have no BOOLEAN)
    Column("paused", Integer, nullable=False),
    # the next tick to fire; None when the expression never fires again
    Column("next_run_at", _Time),
    Column("last_tick_at", _Time),
    Column("created_at", _Time, nullable=False),
    Column("updated_at", _Time, nullable=False),
    sqlite_strict=True,
)
# The scheduler looks for due, unpaused schedules of its queues.
Index("persistq_schedules_due", schedules.c.next_run_at)

ticks = Table(
    "persistq_ticks",
    metadata,
    # The primary key is the exactly-once fact: one row, so one job, per schedule and tick.
    Column("queue", Text, primary_key=True),
    Column("schedule", Text, primary_key=True),
    Column("tick_at", _Time, primary_key=True),
    Column("job_id", _Id, nullable=False),
    # "pid@host" of the process that fired it (diagnostics, and the kill test)
    Column("fired_by", Text, nullable=False),
    Column("fired_at", _Time, nullable=False),
    sqlite_strict=True,
)
# Retention: ticks are deleted with the age of finished jobs.
Index("persistq_ticks_fired", ticks.c.fired_at)

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


def _add_column(conn: Connection, table: Table, name: str) -> None:
    column = table.c[name]
    kind = column.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}")


def _metrics_v2(conn: Connection) -> None:
    """Job tags and headers, the attempts' ready time and finish index, the worker registry."""
    _add_column(conn, jobs, "tags")
    _add_column(conn, jobs, "headers")
    _add_column(conn, attempts, "ready_at")
    for index in attempts.indexes:
        if index.name == "persistq_attempts_finished":
            index.create(conn)
    workers.create(conn)


def _add_schedules(conn: Connection) -> None:
    """Version 3 to 4: the schedules and ticks tables (periodic jobs)."""
    for table in (schedules, ticks):
        table.create(conn, checkfirst=True)  # with its indexes


def _add_queue_settings(conn: Connection) -> None:
    """Version 4 to 5: the flow-control settings table."""
    queue_settings.create(conn, checkfirst=True)


_NARROWED = (
    "persistq_jobs_queue_state",
    "persistq_jobs_leases",
    "persistq_jobs_due",
    "persistq_jobs_finished",
)


def _narrow_indexes(conn: Connection) -> None:
    """Version 5 to 6: the (queue, state, id) index holds finished jobs only; the leases and
    due indexes carry the state (and the leases index the queue) to cover the counts; the
    finished jobs' predicate is no longer an IN list."""
    for index in jobs.indexes:
        if index.name in _NARROWED:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
            index.create(conn)


#: MIGRATIONS[n] upgrades a database from version n + 1 to n + 2. Version 1 is created whole.
MIGRATIONS: list[Migration] = [
    _metrics_v2,
    _add_alerting,
    _add_schedules,
    _add_queue_settings,
    _narrow_indexes,
]
