"""The alerting's SQL: the evaluator lease, the rules' saved states, restarts, and the rules' reads.

The lease decides which one process of all those sharing a database evaluates the alert rules.
It is taken with a conditional update (the holder renews; anyone takes an expired lease) or,
when no row exists yet, an insert, in a write transaction; on PostgreSQL two processes racing
to insert meet the primary key, and the loser's savepoint rolls back.

A rule's state is saved in the same transaction that renews the lease (:func:`save_states`), so
an evaluator that lost its lease can neither write states nor send the notifications that go
with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .._types import JobState
from ..schema import QUEUED, alert_lease, alert_state, attempts, in_state, jobs, pool_restarts

if TYPE_CHECKING:
    from .jobstore import JobStore

__all__ = [
    "AlertStore",
    "SavedState",
    "acquire",
    "count_dead_since",
    "count_restarts_since",
    "load_states",
    "oldest_ready_run_at",
    "outcomes_since",
    "prune_restarts",
    "record_restarts",
    "release_lease",
    "save_states",
    "take_lease",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedState:
    """A rule that is pending or firing, as saved in the database (epoch seconds)."""

    rule: str
    state: str
    active_since: float
    fired_at: float | None
    clear_since: float | None
    value: float | None


# ---------------------------------------------------------------------- writes (writer thread)


def take_lease(conn: Connection, name: str, owner: str, now: float, seconds: float) -> bool:
    """Renew the lease ``name`` for ``owner``, or take it when it expired or never existed.

    :returns: whether ``owner`` holds the lease until ``now + seconds``.
    """
    taken = conn.execute(
        update(alert_lease)
        .where(
            alert_lease.c.name == name,
            (alert_lease.c.owner == owner) | (alert_lease.c.expires_at <= now),
        )
        .values(owner=owner, expires_at=now + seconds)
    )
    if taken.rowcount:
        return True
    exists = conn.execute(select(alert_lease.c.name).where(alert_lease.c.name == name)).first()
    if exists is not None:
        return False  # held by another process, and not expired
    try:
        with conn.begin_nested():
            conn.execute(
                insert(alert_lease).values(name=name, owner=owner, expires_at=now + seconds)
            )
    except IntegrityError:
        return False  # another process inserted it first
    return True


def acquire(
    conn: Connection, name: str, owner: str, now: float, seconds: float
) -> list[SavedState] | None:
    """:func:`take_lease`, and when it is held, the saved states; None when it is not held."""
    return load_states(conn) if take_lease(conn, name, owner, now, seconds) else None


def release_lease(conn: Connection, name: str, owner: str) -> None:
    """Give the lease up (clean shutdown), so another process takes over at its next tick."""
    conn.execute(
        delete(alert_lease).where(alert_lease.c.name == name, alert_lease.c.owner == owner)
    )


def load_states(conn: Connection) -> list[SavedState]:
    """Every saved rule state (what a new lease holder starts from)."""
    rows = conn.execute(select(alert_state))
    return [
        SavedState(
            rule=r.rule,
            state=r.state,
            active_since=r.active_since,
            fired_at=r.fired_at,
            clear_since=r.clear_since,
            value=r.value,
        )
        for r in rows
    ]


def save_states(
    conn: Connection,
    *,
    name: str,
    owner: str,
    now: float,
    seconds: float,
    states: Sequence[SavedState],
    cleared: Sequence[str],
) -> bool:
    """Renew the lease and, only if it is still ``owner``'s, write ``states`` and delete the
    rows of the rules in ``cleared`` (back to inactive).

    :returns: whether the lease was held (when not, nothing was written).
    """
    renewed = conn.execute(
        update(alert_lease)
        .where(alert_lease.c.name == name, alert_lease.c.owner == owner)
        .values(expires_at=now + seconds)
    )
    if not renewed.rowcount:
        return False
    touched = [s.rule for s in states] + list(cleared)
    if touched:
        conn.execute(delete(alert_state).where(alert_state.c.rule.in_(touched)))
    if states:
        conn.execute(
            insert(alert_state),
            [
                {
                    "rule": s.rule,
                    "state": s.state,
                    "active_since": s.active_since,
                    "fired_at": s.fired_at,
                    "clear_since": s.clear_since,
                    "value": s.value,
                    "updated_at": now,
                }
                for s in states
            ],
        )
    return True


def record_restarts(conn: Connection, restarts: Sequence[tuple[str, str, float, str]]) -> None:
    """Insert claim-loop restarts: (queue, pool, restarted_at, error) each."""
    if restarts:
        conn.execute(
            insert(pool_restarts),
            [
                {"queue": q, "pool": p, "restarted_at": at, "error": error[:1000]}
                for q, p, at, error in restarts
            ],
        )


def prune_restarts(conn: Connection, older_than: float) -> int:
    """Delete restarts recorded before ``older_than``; returns how many."""
    return conn.execute(
        delete(pool_restarts).where(pool_restarts.c.restarted_at < older_than)
    ).rowcount


# ---------------------------------------------------------------------- reads


async def oldest_ready_run_at(conn: AsyncConnection, queue: str, now: float) -> float | None:
    """Since when the oldest job of ``queue`` that is ready now has been ready (its ``run_at``);
    None when none is ready. Reads the due index (queue, run_at) of queued jobs."""
    stmt = select(func.min(jobs.c.run_at)).where(
        jobs.c.queue == queue, QUEUED, jobs.c.run_at <= now
    )
    value = (await conn.execute(stmt)).scalar_one_or_none()
    return None if value is None else float(value)


async def count_dead_since(conn: AsyncConnection, queue: str, since: float) -> int:
    """Jobs of ``queue`` that became dead at or after ``since`` (and are still dead)."""
    stmt = (
        select(func.count())
        .select_from(jobs)
        .where(
            jobs.c.queue == queue,
            in_state(JobState.DEAD),
            jobs.c.finished_at >= since,
        )
    )
    return int((await conn.execute(stmt)).scalar_one())


async def outcomes_since(conn: AsyncConnection, queue: str, since: float) -> dict[str, int]:
    """How many deliveries of ``queue``'s jobs ended at or after ``since``, per outcome."""
    stmt = (
        select(attempts.c.outcome, func.count())
        .select_from(attempts.join(jobs, jobs.c.id == attempts.c.job_id))
        .where(attempts.c.finished_at >= since, jobs.c.queue == queue)
        .group_by(attempts.c.outcome)
    )
    return {outcome: int(count) for outcome, count in await conn.execute(stmt)}


async def count_restarts_since(
    conn: AsyncConnection, since: float, pool: str | None, queue: str | None
) -> int:
    """Claim-loop restarts recorded at or after ``since`` (of one pool or queue, if given)."""
    stmt = (
        select(func.count()).select_from(pool_restarts).where(pool_restarts.c.restarted_at >= since)
    )
    if pool is not None:
        stmt = stmt.where(pool_restarts.c.pool == pool)
    if queue is not None:
        stmt = stmt.where(pool_restarts.c.queue == queue)
    return int((await conn.execute(stmt)).scalar_one())


# ---------------------------------------------------------------------- the async face


class AlertStore:
    """The alerting's operations on one open :class:`JobStore` (its writer and its reads)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def acquire(self, name: str, owner: str, seconds: float) -> list[SavedState] | None:
        """Take or renew the lease; the saved states when held, else None."""
        store = self.store
        return await store.write(lambda conn: acquire(conn, name, owner, store.clock(), seconds))

    async def save_states(
        self,
        name: str,
        owner: str,
        seconds: float,
        states: Sequence[SavedState],
        cleared: Sequence[str],
    ) -> bool:
        """Renew the lease and write the states, if still held; whether it was."""
        store = self.store
        return await store.write(
            lambda conn: save_states(
                conn,
                name=name,
                owner=owner,
                now=store.clock(),
                seconds=seconds,
                states=states,
                cleared=cleared,
            )
        )

    async def release(self, name: str, owner: str) -> None:
        """Give the lease up."""
        await self.store.write(lambda conn: release_lease(conn, name, owner))

    async def record_restarts(self, restarts: Sequence[tuple[str, str, float, str]]) -> None:
        """Record claim-loop restarts (queue, pool, restarted_at, error)."""
        await self.store.write(lambda conn: record_restarts(conn, restarts))

    async def prune_restarts(self, older_than: float) -> int:
        """Delete restarts recorded before ``older_than``."""
        return await self.store.write(lambda conn: prune_restarts(conn, older_than))

    async def oldest_ready_run_at(self, queue: str, now: float) -> float | None:
        """See :func:`oldest_ready_run_at`."""
        return await self.store.read(
            lambda conn: oldest_ready_run_at(conn, queue, now), "reading queue lag"
        )

    async def count_dead_since(self, queue: str, since: float) -> int:
        """See :func:`count_dead_since`."""
        return await self.store.read(
            lambda conn: count_dead_since(conn, queue, since), "counting dead jobs"
        )

    async def outcomes_since(self, queue: str, since: float) -> dict[str, int]:
        """See :func:`outcomes_since`."""
        return await self.store.read(
            lambda conn: outcomes_since(conn, queue, since), "counting outcomes"
        )

    async def count_restarts_since(
        self, since: float, pool: str | None = None, queue: str | None = None
    ) -> int:
        """See :func:`count_restarts_since`."""
        return await self.store.read(
            lambda conn: count_restarts_since(conn, since, pool, queue), "counting restarts"
        )
