"""The synchronous bodies of every write on the job path, one function per operation.

Each takes a SQLAlchemy ``Connection`` inside a transaction the writer began (see
:mod:`.writer`), and the :class:`Context` of its store: the backend, the clock, the database's
description. The writer runs them, alone or batched with others; the ops that may run batched
as one statement (:class:`PutOp`, :class:`AckOp`) are defined here too, with typed data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from .._types import FINISHED_STATES, JobState
from ..backends import Backend
from ..backends.prepared import Prepared
from ..errors import JobNotFound, JobStateError, LeaseLost
from ..schema import ACTIVE, FINISHED, RUNNING, attempts, in_state, jobs
from . import flow
from . import statements as st
from .acks import leases, write_acks
from .records import (
    ClaimResult,
    Delivery,
    NewJob,
    Rescued,
    attempt_row,
    new_lease_token,
    record_maker,
)
from .writer import BulkOp

__all__ = [
    "AckOp",
    "Context",
    "Delivery",
    "PutOp",
    "ack",
    "cancel",
    "claim",
    "clean",
    "delete_job",
    "extend",
    "fail",
    "nack",
    "purge",
    "put",
    "release",
    "requeue",
    "rescue",
]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What every transaction body needs of its store."""

    backend: Backend
    clock: Clock
    where: str
    claim_statement: Prepared
    #: Queues whose last claim here found a ``max_running`` cap: a job of theirs ending frees
    #: a slot, so its outcome wakes this process's claimers (see :func:`.flow.note_cap`).
    capped: set[str] = field(default_factory=set)


# ---------------------------------------------------------------------- puts


_QUEUED = JobState.QUEUED.value  # the enum's value property costs a call per row


def _job_row(queue: str, job: NewJob, now: float) -> dict[str, Any]:
    run_at = job.run_at
    return {
        "queue": queue,
        "state": _QUEUED,
        "payload": job.payload,
        "priority": job.priority,
        "attempts": 0,
        "max_attempts": job.max_attempts,
        "run_at": run_at if job.keep_run_at or run_at > now else now,
        "enqueued_at": now,
        "created_at": now,
        "dedupe_key": job.dedupe_key,
        "tags": job.tags,
        "headers": job.headers,
    }


def put(conn: Connection, ctx: Context, queue: str, new: Sequence[NewJob]) -> list[int]:
    """Insert jobs; their ids, or for a held ``dedupe_key`` the holder's id."""
    now = ctx.clock()
    rows = [_job_row(queue, job, now) for job in new]
    if any(row["dedupe_key"] is not None for row in rows):
        ctx.backend.notify_work(conn, queue)
        return [_put_deduplicated(conn, ctx, row) for row in rows]
    return ctx.backend.insert_jobs(conn, rows)  # which notifies


def _put_deduplicated(conn: Connection, ctx: Context, row: dict[str, Any]) -> int:
    if row["dedupe_key"] is None:
        return ctx.backend.insert_jobs(conn, [row])[0]
    job_id = ctx.backend.insert_deduplicated(conn, row)
    if job_id is None:
        job_id = conn.execute(
            select(jobs.c.id).where(
                jobs.c.queue == row["queue"], jobs.c.dedupe_key == row["dedupe_key"], ACTIVE
            )
        ).scalar_one()
    return int(job_id)


class PutOp(BulkOp[list[int]]):
    """A put whose jobs may go in with other callers' puts as one multi-row ``INSERT``."""

    __slots__ = ("ctx", "new", "queue")

    def __init__(
        self,
        ctx: Context,
        queue: str,
        new: Sequence[NewJob],
        on_commit: Callable[[list[int]], None],
    ) -> None:
        super().__init__(lambda conn: put(conn, ctx, queue, new), on_commit, kind="put")
        self.single_statement = len(new) == 1
        self.ctx = ctx
        self.queue = queue
        self.new = new

    @classmethod
    def run_together(cls, conn: Connection, ops: list[PutOp]) -> bool:
        """One statement is atomic: if it fails, nothing of it was written, and False sends the
        puts one by one so that each gets its own outcome."""
        ctx = ops[0].ctx
        now = ctx.clock()
        rows = [_job_row(op.queue, job, now) for op in ops for job in op.new]
        if len(rows) > ctx.backend.grouped_put_rows():
            return False
        try:
            ids = ctx.backend.insert_jobs(conn, rows)
        except DBAPIError as exc:
            if ctx.backend.is_busy(exc):
                raise
            logger.debug(
                "a bulk put failed; the puts run one by one",
                exc_info=True,
                extra={"action": "write_retried_alone"},
            )
            return False
        first = 0
        for op in ops:
            op.result = ids[first : first + len(op.new)]
            first += len(op.new)
        return True

    @classmethod
    async def run_native(cls, driver: Any, ops: list[PutOp]) -> list[PutOp] | None:
        """Every row of the group as one native ``INSERT``; its error is every put's."""
        ctx, now = ops[0].ctx, ops[0].ctx.clock()
        rows = [_job_row(op.queue, job, now) for op in ops for job in op.new]
        if not ctx.backend.native_writes() or len(rows) > ctx.backend.grouped_put_rows():
            return None
        ids = iter(await ctx.backend.native_insert_jobs(driver, rows))
        for op in ops:
            op.result = [next(ids) for _ in op.new]
        return []


# ---------------------------------------------------------------------- claims


def claim(
    conn: Connection, ctx: Context, queue: str, limit: int, lease_seconds: float
) -> ClaimResult:
    """Rescue expired leases, then lease up to ``limit`` ready jobs of ``queue``."""
    now = ctx.clock()
    rescued: list[Rescued] = []
    rescue(conn, ctx, now, rescued)
    params = {
        "p_queue": queue,
        "p_now": now,
        "p_limit": limit,
        "p_token": new_lease_token(),
        "p_expires": now + lease_seconds,
    }
    gate = flow.admit(conn, ctx.backend, queue, limit, now)
    flow.note_cap(ctx.capped, queue, gate)
    records = []
    if gate is None or gate.limit > 0:
        params["p_limit"] = limit if gate is None else gate.limit
        statement = ctx.claim_statement
        make = record_maker(statement.columns)
        records = [make(row) for row in statement.tuples(conn, params)]
        records.sort(key=lambda r: (-r.priority, r.id))
        flow.consumed(conn, queue, gate, len(records))
    next_due = None
    if len(records) < limit and not (gate is not None and gate.paused):
        due, expiry = st.NEXT_DUE_P.one_or_none(conn, {"p_queue": queue})
        next_due = flow.retry_at(gate, len(records), due, expiry, now)
    return ClaimResult(records=records, next_due_at=next_due, rescued=rescued)


def rescue(conn: Connection, ctx: Context, now: float, found: list[Rescued] | None = None) -> int:
    """Move jobs whose lease expired back to queued (dead when their attempts are spent);
    each job rescued is appended to ``found`` (for the observers, after the commit)."""
    rows = st.EXPIRED_P.rows(conn, {"p_now": now})
    if not rows:
        return 0
    # Re-check the expiry: on PostgreSQL another process may have rescued and re-leased a
    # job since the select, and its fresh lease must not be revoked.
    rescued = set(
        conn.execute(
            update(jobs)
            .where(jobs.c.id.in_([r.id for r in rows]), RUNNING, jobs.c.lease_expires_at <= now)
            .values(
                state=st.RETRY_OR_DEAD,
                finished_at=case((st.SPENT, now), else_=None),
                run_at=now,
                last_error=st.EXPIRED_ERROR,
                **st.CLEARED,
            )
            .returning(jobs.c.id)
        ).scalars()
    )
    rows = [r for r in rows if r.id in rescued]
    if not rows:
        return 0
    for queue in sorted({r.queue for r in rows}):
        ctx.backend.notify_work(conn, queue)
    st.INSERT_ATTEMPT_P.run_many(
        conn,
        [
            attempt_row(
                job_id=r.id,
                attempt=r.attempts,
                token=r.lease_token,
                started_at=r.started_at,
                now=now,
                outcome="expired",
                error=st.EXPIRED_ERROR,
                ready_at=r.run_at,
            )
            for r in rows
        ],
    )
    flow.dead_letter_all(
        conn, ctx.backend, [(r.queue, r.id) for r in rows if r.attempts >= r.max_attempts], now
    )
    if found is not None:
        found.extend(
            Rescued(
                job_id=r.id, queue=r.queue, attempts=r.attempts, dead=r.attempts >= r.max_attempts
            )
            for r in rows
        )
    for r in rows:
        dead = r.attempts >= r.max_attempts
        logger.info(
            "lease of job %d expired; job is %s",
            r.id,
            "dead" if dead else "queued again",
            extra={
                "action": "job_dead" if dead else "job_rescued",
                "job_id": r.id,
                "queue": r.queue,
                "attempts": r.attempts,
            },
        )
    return len(rows)


# ---------------------------------------------------------------------- outcomes


def _settle(
    conn: Connection,
    ctx: Context,
    statement: Prepared,
    params: dict[str, Any],
    outcome: str,
    error: str | None,
) -> Any:
    """Apply an outcome to a running job fenced by its token; None if already applied."""
    job_id, token, now = params["p_job_id"], params["p_token"], params["p_now"]
    row = statement.one_or_none(conn, params)
    if row is not None:
        # RETURNING reports the new run_at; a nack moves it, so its caller says what it was.
        ready_at = params.get("p_ready_at", row.run_at)
        st.INSERT_ATTEMPT_P.rows(
            conn,
            attempt_row(
                job_id=job_id,
                attempt=row.attempts,
                token=token,
                started_at=row.started_at,
                now=now,
                outcome=outcome,
                error=error,
                ready_at=ready_at,
            ),
        )
        flow.settled(conn, ctx.backend, str(row.queue), JobState(row.state), job_id, now)
        return row
    # Not running under this token: either this very outcome was applied already (a retry
    # after a cancelled call), or the lease is gone. Nothing was written either way.
    previous = st.ATTEMPT_OUTCOMES_P.rows(conn, {"p_job_id": job_id, "p_token": token})
    outcomes = {r[0] for r in previous}
    if outcome in outcomes:
        return None
    current = st.JOB_STATE_P.scalar(conn, {"p_job_id": job_id})
    if current is None:
        reason = "the job was deleted"
    elif current == JobState.CANCELLED or "cancelled" in outcomes:
        reason = "the job was cancelled"
    elif "expired" in outcomes:
        reason = "the lease expired and the job was rescued"
    elif "released" in outcomes:
        reason = "the lease was handed back"
    elif current == JobState.RUNNING:
        reason = "the lease expired and another consumer took the job"
    else:
        reason = f"the job is {current} now"
    raise LeaseLost(f"job {job_id}: lease lost ({reason}); the outcome was not applied")


def ack(
    conn: Connection, ctx: Context, job_id: int, token: str, result: bytes | None
) -> str | None:
    """Mark a delivery done; the job's queue, or None when this ack was applied before."""
    params = {"p_job_id": job_id, "p_token": token, "p_now": ctx.clock(), "p_result": result}
    row = _settle(conn, ctx, st.ACK_P, params, "acked", None)
    return None if row is None else str(row.queue)


class AckOp(BulkOp[str | None]):
    """An ack that may be written with the other acks of its batch: one select of their
    leases, one update, one insert of their attempt rows."""

    __slots__ = ("ctx", "delivery", "result_data")

    def __init__(
        self,
        ctx: Context,
        delivery: Delivery,
        result: bytes | None,
        on_commit: Callable[[str | None], None],
    ) -> None:
        super().__init__(
            lambda conn: ack(conn, ctx, delivery.job_id, delivery.token, result),
            on_commit,
            kind="ack",
        )
        self.ctx = ctx
        self.delivery = delivery
        self.result_data = result

    @classmethod
    def run_together(cls, conn: Connection, ops: list[AckOp]) -> bool:
        """One select, one update and one insert (per :data:`MAX_IN` acks); False (nothing
        written) when any of them is not plainly running under its token, so they go one by one
        and report why."""
        ids = [op.delivery.job_id for op in ops]
        if len(set(ids)) != len(ids):
            return False  # the same job twice: the second must report the first's outcome
        # The write lock is held from here to the commit: what this select sees, the updates
        # find. Checking first costs one statement where a savepoint around them cost two.
        leased = leases(conn, ids)
        if any(leased.get(op.delivery.job_id) != op.delivery.token for op in ops):
            return False
        ctx = ops[0].ctx
        now = ctx.clock()
        write_acks(conn, ctx.where, [(op.delivery, op.result_data) for op in ops], now)
        for op in ops:
            op.result = op.delivery.queue
        return True

    @classmethod
    async def run_native(cls, driver: Any, ops: list[AckOp]) -> list[AckOp] | None:
        """One native statement; the acks it did not apply go the usual way, which says why."""
        backend = ops[0].ctx.backend  # native_writes() holds: the writer asked it
        if len({op.delivery.job_id for op in ops}) != len(ops):
            return ops  # the same job twice: the second must report the first's outcome
        acks = [(op.delivery.job_id, op.delivery.token, op.result_data) for op in ops]
        applied = await backend.native_ack(driver, acks, ops[0].ctx.clock())
        for op in ops:
            op.result = op.delivery.queue if op.delivery.job_id in applied else None
        return [op for op in ops if op.delivery.job_id not in applied]


def nack(
    conn: Connection,
    ctx: Context,
    job_id: int,
    token: str,
    run_at: float,
    error: str | None,
    ready_at: float | None = None,
) -> tuple[JobState, str | None]:
    """Retry a delivery at ``run_at`` (dead when its attempts are spent); the new state, and
    the queue to wake when the job is queued again by this call. ``ready_at`` is when the
    delivery's job had become claimable (the nack moves ``run_at``, so the job row forgets)."""
    now = ctx.clock()
    params = {
        "p_job_id": job_id,
        "p_token": token,
        "p_now": now,
        "p_run_at": max(run_at, now),
        "p_error": error,
        "p_ready_at": ready_at,
    }
    row = _settle(conn, ctx, st.NACK_P, params, "nacked", error)
    if row is None:
        current = st.JOB_STATE_P.scalar(conn, {"p_job_id": job_id})
        return JobState(current or JobState.DEAD), None
    if row.state == JobState.QUEUED:
        ctx.backend.notify_work(conn, str(row.queue))
    return JobState(row.state), str(row.queue)


def fail(conn: Connection, ctx: Context, job_id: int, token: str, error: str | None) -> str | None:
    """Make the job dead now, whatever its attempts; its queue, or None if applied before."""
    params = {"p_job_id": job_id, "p_token": token, "p_now": ctx.clock(), "p_error": error}
    row = _settle(conn, ctx, st.FAIL_P, params, "failed", error)
    return None if row is None else str(row.queue)


def release(conn: Connection, ctx: Context, job_id: int, token: str, queue: str) -> bool:
    """Hand a lease back without counting the attempt; False when it was already gone."""
    now = ctx.clock()
    row = st.RELEASE_P.one_or_none(conn, {"p_job_id": job_id, "p_token": token})
    if row is None:
        return False  # already gone: handing back is idempotent
    ctx.backend.notify_work(conn, queue)
    st.INSERT_ATTEMPT_P.rows(
        conn,
        attempt_row(
            job_id=job_id,
            attempt=row.attempts + 1,
            token=token,
            started_at=row.started_at,
            now=now,
            outcome="released",
            error=None,
            ready_at=row.run_at,
        ),
    )
    return True


def extend(conn: Connection, ctx: Context, job_id: int, token: str, seconds: float) -> float:
    """Make the lease end ``seconds`` from now; the new expiry."""
    expires = ctx.clock() + seconds
    params = {"p_job_id": job_id, "p_token": token, "p_expires": expires}
    if st.EXTEND_P.one_or_none(conn, params) is None:
        raise LeaseLost(f"job {job_id}: lease lost; it cannot be extended")
    return expires


# ---------------------------------------------------------------------- CRUD


def _state_of(conn: Connection, job_id: int, queue: str) -> Any:
    row = conn.execute(
        select(
            jobs.c.state, jobs.c.lease_token, jobs.c.started_at, jobs.c.attempts, jobs.c.run_at
        ).where(jobs.c.id == job_id, jobs.c.queue == queue)
    ).one_or_none()
    if row is None:
        raise JobNotFound(f"no job {job_id} in queue {queue!r}")
    return row


def cancel(conn: Connection, ctx: Context, job_id: int, queue: str) -> bool:
    """Cancel a queued or running job; False when it had already finished."""
    now = ctx.clock()
    row = _state_of(conn, job_id, queue)
    if JobState(row.state) in FINISHED_STATES:
        return False
    conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id)
        .values(state=JobState.CANCELLED.value, finished_at=now, **st.CLEARED)
    )
    if row.state == JobState.RUNNING:
        conn.execute(
            st.INSERT_ATTEMPT,
            attempt_row(
                job_id=job_id,
                attempt=row.attempts,
                token=row.lease_token,
                started_at=row.started_at,
                now=now,
                outcome="cancelled",
                error="cancelled",
                ready_at=row.run_at,
            ),
        )
    return True


def requeue(conn: Connection, ctx: Context, job_id: int, queue: str) -> None:
    """Put a done, dead or cancelled job back in the queue with its attempts reset."""
    now = ctx.clock()
    row = _state_of(conn, job_id, queue)
    if JobState(row.state) not in FINISHED_STATES:
        raise JobStateError(
            f"job {job_id} is {row.state}; only done, dead or cancelled jobs can be requeued"
        )
    try:
        with conn.begin_nested():
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=JobState.QUEUED.value,
                    attempts=0,
                    run_at=now,
                    enqueued_at=now,
                    finished_at=None,
                    result=None,
                )
            )
    except IntegrityError as exc:
        raise JobStateError(
            f"job {job_id}: another active job holds its dedupe_key; not requeued"
        ) from exc
    ctx.backend.notify_work(conn, queue)


def delete_job(conn: Connection, job_id: int, queue: str) -> None:
    """Delete a job and its history."""
    _state_of(conn, job_id, queue)
    conn.execute(delete(attempts).where(attempts.c.job_id == job_id))
    conn.execute(delete(jobs).where(jobs.c.id == job_id))


def purge(conn: Connection, queue: str, state: JobState) -> int:
    """Delete every job of ``queue`` in ``state``; how many."""
    chosen = select(jobs.c.id).where(jobs.c.queue == queue, in_state(state))
    conn.execute(delete(attempts).where(attempts.c.job_id.in_(chosen)))
    result = conn.execute(delete(jobs).where(jobs.c.queue == queue, in_state(state)))
    return int(result.rowcount)


def clean(conn: Connection, ctx: Context, older_than: float) -> int:
    """Delete up to :data:`~.statements.CLEAN_CHUNK` finished jobs (every queue) that finished
    before ``older_than``; 0 when another process is cleaning right now."""
    if not ctx.backend.try_lock_maintenance(conn):
        return 0
    ids = list(
        conn.execute(
            select(jobs.c.id).where(FINISHED, jobs.c.finished_at < older_than).limit(st.CLEAN_CHUNK)
        ).scalars()
    )
    if ids:
        conn.execute(delete(attempts).where(attempts.c.job_id.in_(ids)))
        conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
    return len(ids)
