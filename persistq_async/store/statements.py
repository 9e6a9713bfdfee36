"""The prebuilt Core statements of the job path, and the store's fixed sizes.

Built once: SQLAlchemy then reuses their cache keys and compiled SQL on every call. Parameters
are named ``p_*`` so that a statement's inputs stand out from its columns.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from sqlalchemy import (
    Integer,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    select,
    tuple_,
    update,
)

from .._types import JobState
from ..backends.prepared import MAX_IN, Prepared
from ..schema import QUEUED, RUNNING, attempts, jobs

if TYPE_CHECKING:
    from ..backends import Backend

#: Rows the retention cleaner deletes per transaction.
CLEAN_CHUNK = 1000
#: Expired leases the rescuer handles per transaction.
RESCUE_CHUNK = 500
#: The error recorded on a delivery whose lease ran out.
EXPIRED_ERROR = "lease expired (the consumer crashed, hung or lost the database)"

# run_at: when the delivery's job became claimable (before a nack moves it; see tx.nack)
SETTLED_COLUMNS = (jobs.c.queue, jobs.c.state, jobs.c.attempts, jobs.c.started_at, jobs.c.run_at)
_FENCE = (
    jobs.c.id == bindparam("p_job_id", type_=jobs.c.id.type),
    jobs.c.lease_token == bindparam("p_token", type_=jobs.c.lease_token.type),
    RUNNING,
)
# started_at stays: RETURNING reports new values, and the attempt row needs the start.
CLEARED = {"lease_token": None, "lease_expires_at": None}
SPENT = jobs.c.attempts >= jobs.c.max_attempts
# Attempts spent means dead, else queued: the one rule for a delivery that ended badly.
RETRY_OR_DEAD = case((SPENT, JobState.DEAD.value), else_=JobState.QUEUED.value)

# One ack, with RETURNING: it must explain a miss (acks of a batch: ack_all below).
ACK = (
    update(jobs)
    .where(*_FENCE)
    .values(
        state=JobState.DONE.value,
        result=bindparam("p_result", type_=jobs.c.result.type),
        finished_at=bindparam("p_now", type_=jobs.c.run_at.type),
        **CLEARED,
    )
    .returning(*SETTLED_COLUMNS)
)
# The running jobs among some ids, with their lease tokens (the check before bulk acks).
LEASES = select(jobs.c.id, jobs.c.lease_token).where(
    jobs.c.id.in_(bindparam("p_ids", expanding=True)), RUNNING
)
NACK = (
    update(jobs)
    .where(*_FENCE)
    .values(
        state=RETRY_OR_DEAD,
        finished_at=case((SPENT, bindparam("p_now", type_=jobs.c.run_at.type)), else_=None),
        run_at=bindparam("p_run_at", type_=jobs.c.run_at.type),
        last_error=bindparam("p_error", type_=jobs.c.last_error.type),
        **CLEARED,
    )
    .returning(*SETTLED_COLUMNS)
)
FAIL = (
    update(jobs)
    .where(*_FENCE)
    .values(
        state=JobState.DEAD.value,
        finished_at=bindparam("p_now", type_=jobs.c.run_at.type),
        last_error=bindparam("p_error", type_=jobs.c.last_error.type),
        **CLEARED,
    )
    .returning(*SETTLED_COLUMNS)
)
RELEASE = (
    update(jobs)
    .where(*_FENCE)
    .values(state=JobState.QUEUED.value, attempts=jobs.c.attempts - 1, **CLEARED)
    .returning(*SETTLED_COLUMNS)
)
EXTEND = (
    update(jobs)
    .where(*_FENCE)
    .values(lease_expires_at=bindparam("p_expires", type_=jobs.c.run_at.type))
    .returning(jobs.c.id)
)
INSERT_ATTEMPT = insert(attempts)
ATTEMPT_OUTCOMES = select(attempts.c.outcome).where(
    attempts.c.job_id == bindparam("p_job_id", type_=jobs.c.id.type),
    attempts.c.lease_token == bindparam("p_token", type_=jobs.c.lease_token.type),
)
EXPIRED = (
    select(
        jobs.c.id,
        jobs.c.queue,
        jobs.c.attempts,
        jobs.c.max_attempts,
        jobs.c.lease_token,
        jobs.c.started_at,
        jobs.c.run_at,
    )
    .where(RUNNING, jobs.c.lease_expires_at <= bindparam("p_now", type_=jobs.c.run_at.type))
    .limit(RESCUE_CHUNK)
)
NEXT_DUE = select(
    select(func.min(jobs.c.run_at))
    .where(jobs.c.queue == bindparam("p_queue", type_=jobs.c.queue.type), QUEUED)
    .scalar_subquery(),
    select(func.min(jobs.c.lease_expires_at)).where(RUNNING).scalar_subquery(),
)
JOB_STATE = select(jobs.c.state).where(jobs.c.id == bindparam("p_job_id", type_=jobs.c.id.type))

# The hot ones, run on the driver's cursor (see .prepared); LEASES compiled per length of its
# IN list.
LEASES_P = Prepared(LEASES, expanding="p_ids")
ACK_P = Prepared(ACK)
NACK_P = Prepared(NACK)
FAIL_P = Prepared(FAIL)
RELEASE_P = Prepared(RELEASE)
EXTEND_P = Prepared(EXTEND)
INSERT_ATTEMPT_P = Prepared(
    INSERT_ATTEMPT.values({c: bindparam(c.key, type_=c.type) for c in attempts.c if c.key != "id"})
)
ATTEMPT_OUTCOMES_P = Prepared(ATTEMPT_OUTCOMES)
EXPIRED_P = Prepared(EXPIRED)
NEXT_DUE_P = Prepared(NEXT_DUE)
JOB_STATE_P = Prepared(JOB_STATE)
_ATTEMPT_COLUMNS = tuple(c for c in attempts.c if c.key != "id")
#: The columns an attempt row gives (see records.attempt_row), in the table's order.
ATTEMPT_KEYS = tuple(c.key for c in _ATTEMPT_COLUMNS)


@functools.lru_cache(maxsize=16)
def ack_all(length: int) -> Prepared:
    """Mark ``length`` running jobs done, each fenced by its own lease token, as one statement:
    the ids are ``p_id_1`` ... and the tokens ``p_token_1`` ...; ``p_result`` and ``p_now``.

    SQLite runs one ``UPDATE ... WHERE id IN (...)`` at about half the cost per row of the same
    update once per row (executemany); the id list finds the rows by primary key, the pairs
    check each row's token. Built per power of two (:func:`padded_length`): a list padded
    with its first job names that job twice, which an ``IN`` ignores."""
    ids = [bindparam(f"p_id_{n}", type_=jobs.c.id.type) for n in range(1, length + 1)]
    tokens = [
        bindparam(f"p_token_{n}", type_=jobs.c.lease_token.type) for n in range(1, length + 1)
    ]
    pairs = [tuple_(job_id, token) for job_id, token in zip(ids, tokens, strict=True)]
    return Prepared(
        update(jobs)
        .where(jobs.c.id.in_(ids), tuple_(jobs.c.id, jobs.c.lease_token).in_(pairs), RUNNING)
        .values(
            state=JobState.DONE.value,
            result=bindparam("p_result", type_=jobs.c.result.type),
            finished_at=bindparam("p_now", type_=jobs.c.run_at.type),
            **CLEARED,
        )
    )


@functools.lru_cache(maxsize=64)
def insert_attempts(length: int) -> Prepared:
    """Insert ``length`` attempt rows as one multi-row ``INSERT``; row ``n``'s values are named
    ``<column>_<n>`` (from 0)."""
    return Prepared(
        insert(attempts).values(
            [
                {
                    c: bindparam(name, type_=c.type)
                    for c, name in zip(_ATTEMPT_COLUMNS, attempt_names(n), strict=True)
                }
                for n in range(length)
            ]
        )
    )


@functools.lru_cache(maxsize=MAX_IN)
def attempt_names(n: int) -> tuple[str, ...]:
    """The parameter names of row ``n`` (from 0) of :func:`insert_attempts`, in the order of
    :data:`ATTEMPT_KEYS`."""
    return tuple(f"{key}_{n}" for key in ATTEMPT_KEYS)


def padded_length(length: int) -> int:
    """The power of two at or above ``length``: the sizes :func:`ack_all` is built in."""
    return 1 << (length - 1).bit_length()


def claim_statement(backend: Backend) -> Prepared:
    """Lease up to ``p_limit`` ready jobs of ``p_queue``, highest priority first, FIFO within."""
    ready = backend.lock_claim(
        select(jobs.c.id)
        .where(
            jobs.c.queue == bindparam("p_queue", type_=jobs.c.queue.type),
            QUEUED,
            # The unary plus keeps SQLite from choosing the run_at index and sorting every due
            # row: walking the ready index in priority order stops after LIMIT rows.
            literal_column("+persistq_jobs.run_at", type_=jobs.c.run_at.type)
            <= bindparam("p_now", type_=jobs.c.run_at.type),
        )
        .order_by(jobs.c.priority.desc(), jobs.c.id)
        .limit(bindparam("p_limit", type_=Integer()))
    )
    return Prepared(
        update(jobs)
        .where(jobs.c.id.in_(ready.scalar_subquery()))
        .values(
            state=JobState.RUNNING.value,
            attempts=jobs.c.attempts + 1,
            lease_token=bindparam("p_token", type_=jobs.c.lease_token.type),
            lease_expires_at=bindparam("p_expires", type_=jobs.c.run_at.type),
            started_at=bindparam("p_now", type_=jobs.c.run_at.type),
        )
        .returning(*jobs.c)
    )
