"""The store's operations beyond the job path, as a base class of :class:`.JobStore`: across
queues and in bulk (:mod:`.admin`), monitoring and the worker registry (:mod:`.metrics`), awaited
results (:mod:`.results`) and schedules (:mod:`.schedules`). Each is a thin method over a read or
a write of the store, like the job path's own in :mod:`.jobstore`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from .._types import JobState
from ..backends import Backend
from . import admin
from . import metrics as mx
from . import results as res
from . import schedules as sch
from . import transactions as tx
from .records import AttemptRecord, JobRecord
from .wakeups import Wakeups

__all__ = ["StoreOperations"]

T = TypeVar("T")


class StoreOperations:
    """The operations beyond the job path; :class:`.JobStore` provides what they stand on."""

    if TYPE_CHECKING:
        backend: Backend
        clock: Callable[[], float]
        wakeups: Wakeups
        _ctx: tx.Context

        async def read(self, fn: Callable[[AsyncConnection], Awaitable[T]], action: str) -> T: ...

        async def write(
            self,
            fn: Callable[[Connection], T],
            *,
            on_commit: Callable[[T], None] | None = None,
            kind: str = "write",
        ) -> T: ...

        def _woken(self, queue: str, *, work: bool) -> Callable[[Any], None]: ...

    # ------------------------------------------------------------------ across queues, in bulk

    async def find_queue(self, job_id: int) -> str | None:
        """The queue of the job with this id (in any queue), or None."""
        return await self.read(lambda conn: admin.find_queue(conn, job_id), "finding a job")

    async def list_page(
        self,
        queue: str | None,
        state: JobState | None,
        limit: int,
        after: int | None,
        before: int | None,
        tags: Sequence[str] = (),
    ) -> list[tuple[JobRecord, list[AttemptRecord]]]:
        """A keyset page of jobs, oldest first (see :func:`.admin.list_page`)."""
        return await self.read(
            lambda conn: admin.list_page(conn, queue, state, limit, after, before, tags),
            "listing jobs",
        )

    async def count_matching(self, queue: str, state: JobState, cutoff: float | None) -> int:
        """Jobs of ``queue`` in ``state``, older than ``cutoff`` when given (epoch seconds)."""
        return await self.read(
            lambda conn: admin.count_matching(conn, queue, state, cutoff), "counting jobs"
        )

    async def select_ids(
        self, queue: str, state: JobState, cutoff: float | None, after: int, limit: int
    ) -> list[int]:
        """The next ``limit`` ids above ``after`` that :meth:`count_matching` counts."""
        return await self.read(
            lambda conn: admin.select_ids(conn, queue, state, cutoff, after, limit),
            "choosing jobs",
        )

    async def requeue_ids(
        self, queue: str, state: JobState, ids: list[int], cutoff: float | None
    ) -> int:
        """One write: requeue those of ``ids`` still in ``queue`` and ``state``; how many.
        (``cutoff`` is not used: it makes the signature :meth:`delete_ids`'s.)"""

        def run(conn: Connection) -> int:
            count = admin.requeue_ids(conn, queue, state, ids, self.clock())
            if count:
                self.backend.notify_work(conn, queue)
            return count

        return await self.write(run, on_commit=self._woken(queue, work=True))

    async def delete_ids(
        self, queue: str, state: JobState, ids: list[int], cutoff: float | None
    ) -> int:
        """One write: delete those of ``ids`` still in ``queue``, ``state`` and older than
        ``cutoff``; how many."""
        return await self.write(
            lambda conn: admin.delete_ids(conn, queue, state, ids, cutoff),
            on_commit=self._woken(queue, work=False),
        )

    # ------------------------------------------------------------------ monitoring (.metrics)

    async def read_stats(self, queue: str, window: float) -> mx.StatsRecord:
        """Counts, ready jobs and the last ``window`` seconds of deliveries of ``queue``."""
        now = self.clock()
        return await self.read(
            lambda conn: mx.read_stats(conn, queue, now, window), "reading stats"
        )

    async def read_oldest_ready(self, queue: str) -> float | None:
        """When the oldest ready job of ``queue`` became claimable (epoch seconds), or None."""
        now = self.clock()
        return await self.read(
            lambda conn: mx.read_oldest_ready(conn, queue, now), "reading the lag"
        )

    async def read_schema_version(self) -> int | None:
        """The schema version the database records (a round trip, for health checks)."""
        return await self.read(mx.read_schema_version, "reading the schema version")

    async def read_workers(self) -> list[mx.WorkerRecord]:
        """The worker registry's rows."""
        return await self.read(mx.read_workers, "listing workers")

    async def register_worker(self, record: mx.WorkerRecord, prune_before: float) -> int:
        """Record a worker (pruning stale rows); how many rows were pruned."""
        return await self.write(lambda conn: mx.register_worker(conn, record, prune_before))

    async def refresh_worker(self, record: mx.WorkerRecord, prune_before: float) -> bool:
        """Refresh a worker's heartbeat and pools; True if it had to register again."""
        # Written like a lease extension (no fsync of its own): a heartbeat lost to a power
        # cut only makes the worker look older until the next one.
        return await self.write(
            lambda conn: mx.refresh_worker(conn, record, prune_before), kind="extend"
        )

    async def unregister_worker(self, worker_id: str) -> int:
        """Remove a worker's row (clean shutdown)."""
        return await self.write(lambda conn: mx.unregister_worker(conn, [worker_id]))

    async def outcomes(self, queue: str, ids: list[int]) -> dict[int, res.Outcome]:
        """Where each of ``ids`` stands (those that exist), for result awaiters."""
        return await self.read(lambda conn: res.outcomes(conn, queue, ids), "reading results")

    # ------------------------------------------------------------------ schedules

    async def save_schedule(self, new: sch.NewSchedule) -> sch.ScheduleRecord:
        """Create or update a schedule (idempotent); returns it as stored."""
        return await self.write(
            lambda conn: sch.upsert(conn, new, self.clock()),
            on_commit=lambda _: self.wakeups.notify_schedules(),
        )

    async def delete_schedule(self, queue: str, name: str) -> bool:
        """Delete a schedule; False when there was none."""
        return await self.write(lambda conn: sch.delete_schedule(conn, queue, name))

    async def pause_schedule(self, queue: str, name: str, paused: bool) -> bool:
        """Pause or resume a schedule; False when there is none."""
        return await self.write(
            lambda conn: sch.set_paused(conn, queue, name, paused, self.clock()),
            on_commit=lambda _: self.wakeups.notify_schedules(),
        )

    async def schedules(self, queue: str | None) -> list[sch.ScheduleRecord]:
        """The schedules of ``queue``, or of every queue."""
        return await self.read(lambda conn: sch.list_schedules(conn, queue), "reading schedules")

    async def next_schedule_due(self, queues: list[str]) -> float | None:
        """The earliest next tick of the unpaused schedules of ``queues`` (epoch seconds)."""
        return await self.read(lambda conn: sch.next_due(conn, queues), "reading schedules")

    async def fire_schedules(
        self, max_attempts: dict[str, int], fired_by: str
    ) -> list[sch.FiredTick]:
        """Enqueue the due ticks of the schedules of the queues in ``max_attempts``."""

        def committed(fired: list[sch.FiredTick]) -> None:
            for queue in sorted({tick.queue for tick in fired}):
                self.wakeups.notify(queue, work=True)

        return await self.write(
            lambda conn: sch.fire(conn, self._ctx, max_attempts, fired_by),
            on_commit=committed,
        )

    async def clean_ticks(self, older_than: float) -> int:
        """Delete tick rows older than ``older_than`` (epoch seconds)."""
        return await self.write(lambda conn: sch.clean_ticks(conn, older_than))
