"""The inspection and operations of :class:`~persistq_async.Queue`: read a job or a page of jobs,
requeue, cancel and delete one; look across queues (find a job by id in any queue, list the
queues) and act on many jobs (purge and requeue in batches).

A bulk operation chooses its jobs with a read (which holds no write lock while it walks the
index), then acts on them in write transactions of at most :data:`BULK_BATCH` jobs, each of which
checks every job's state again: the lock is never held for long, and a job that moved meanwhile
is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._checks import check_int, check_seconds
from ._jobmeta import check_tags
from ._types import FINISHED_STATES, JobState, Serializer
from .errors import ArgumentError, ArgumentTypeError
from .job import JobInfo
from .metrics import EventKind, JobEvent, hub
from .monitoring import log_event

if TYPE_CHECKING:
    from .store import JobStore

__all__ = ["BULK_BATCH", "MAX_LIST_LIMIT", "QueueAdmin", "check_state"]

logger = logging.getLogger("persistq_async.queue")

#: Jobs one write transaction of a bulk operation (:meth:`QueueAdmin.requeue_many`,
#: :meth:`QueueAdmin.purge`) touches: the write lock is never held for more than this many rows.
BULK_BATCH = 500
#: Most jobs :meth:`QueueAdmin.list_jobs` returns at once.
MAX_LIST_LIMIT = 10_000


def check_state(state: Any) -> JobState:
    """A :class:`JobState` from itself or its (case-insensitive) name.

    :raises ArgumentError: an unknown state name.
    :raises ArgumentTypeError: neither a JobState nor a str.
    """
    if isinstance(state, JobState):
        return state
    if isinstance(state, str):
        try:
            return JobState(state.lower())
        except ValueError:
            known = ", ".join(s.value for s in JobState)
            raise ArgumentError(f"state: unknown state {state!r} (known: {known})") from None
    raise ArgumentTypeError(f"state: expected a JobState or str, got {type(state).__name__}")


class QueueAdmin:
    """The inspection, single-job, cross-queue and bulk methods of :class:`~persistq_async.Queue`
    (its base class)."""

    name: str
    serializer: Serializer

    @property
    def store(self) -> JobStore:
        """The job store (defined by Queue)."""
        raise NotImplementedError

    async def find_job(self, job_id: int) -> JobInfo | None:
        """The job with this id in any queue of the database (an id names one job), with its
        history; None if there is none. Its ``queue`` says which queue holds it."""
        store = self.store
        job_id = check_int("job_id", job_id)
        queue = await store.find_queue(job_id)
        if queue is None:
            return None
        found = await store.read_job(job_id, queue)
        if found is None:  # deleted between the two reads
            return None
        return JobInfo.from_record(found[0], found[1], self.serializer)

    async def queue_names(self) -> list[str]:
        """The name of every queue of the database that holds jobs, sorted."""
        return await self.store.queue_names()

    async def purge(
        self,
        state: JobState | str,
        *,
        older_than: float | timedelta | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Delete every job of this queue in ``state``; returns how many.

        It works in batches of :data:`BULK_BATCH` jobs, one short write transaction each, so
        the queue's other writes go on meanwhile.

        :param older_than: only jobs finished (queued or running ones: enqueued) more than
            this many seconds ago.
        :param on_progress: called after each batch with (jobs looked at, jobs to look at).
        """
        store = self.store
        chosen = check_state(state)
        cutoff = None
        if older_than is not None:
            cutoff = store.clock() - check_seconds("older_than", older_than)
        count = await self._bulk(chosen, cutoff, on_progress, store.delete_ids)
        log_event(
            logger,
            logging.INFO,
            "jobs_purged",
            "jobs purged",
            count=count,
            queue=self.name,
            state=chosen.value,
        )
        return count

    async def requeue_many(
        self,
        state: JobState | str = JobState.DEAD,
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Requeue every job of this queue in ``state`` (dead by default; done or cancelled),
        as :meth:`requeue` does one; returns how many. A job whose ``dedupe_key`` an active job
        holds is left as it is. Works in batches, as :meth:`purge` does.

        :param on_progress: called after each batch with (jobs looked at, jobs to look at).
        :raises ArgumentError: ``state`` is queued or running.
        """
        store = self.store
        chosen = check_state(state)
        if chosen not in FINISHED_STATES:
            raise ArgumentError(
                f"state: only done, dead or cancelled jobs can be requeued, not {chosen.value}"
            )
        count = await self._bulk(chosen, None, on_progress, store.requeue_ids)
        log_event(
            logger,
            logging.INFO,
            "jobs_requeued",
            "jobs requeued",
            count=count,
            queue=self.name,
            state=chosen.value,
        )
        return count

    async def _bulk(
        self,
        state: JobState,
        cutoff: float | None,
        on_progress: Callable[[int, int], None] | None,
        act: Callable[[str, JobState, list[int], float | None], Awaitable[int]],
    ) -> int:
        # Ids are chosen by a read (no write lock held while it walks the index), then each
        # batch is one write transaction that checks every job's state again.
        store = self.store
        total = await store.count_matching(self.name, state, cutoff)
        seen = count = 0
        after = 0
        while True:
            # The reads and writes below are shielded (each completes whole): a cancellation
            # takes effect here, between two batches.
            await anyio.lowlevel.checkpoint()
            ids = await store.select_ids(self.name, state, cutoff, after, BULK_BATCH)
            if not ids:
                break
            count += await act(self.name, state, ids, cutoff)
            seen += len(ids)
            after = ids[-1]
            if on_progress is not None:
                on_progress(seen, max(total, seen))
            if len(ids) < BULK_BATCH:
                break
        return count

    async def job(self, job_id: int) -> JobInfo | None:
        """The job with this id in this queue, with its history; None if there is none."""
        store = self.store
        found = await store.read_job(check_int("job_id", job_id), self.name)
        if found is None:
            return None
        return JobInfo.from_record(found[0], found[1], self.serializer)

    async def list_jobs(
        self,
        *,
        state: JobState | str | None = None,
        limit: int = 100,
        offset: int = 0,
        after_id: int | None = None,
        before_id: int | None = None,
        every_queue: bool = False,
        tags: Sequence[str] | None = None,
    ) -> list[JobInfo]:
        """Jobs of this queue (of every queue with ``every_queue``), oldest first, optionally
        in one state and having every one of ``tags``.

        Page by id (keyset): ``after_id`` the last id of the page before, or ``before_id`` the
        first id of the page after (then the ``limit`` jobs just before it). Such a page is read
        along an index from that id, as fast deep in a million jobs as at the start; ``offset``
        skips rows one by one and is kept for small queues.

        :raises ArgumentError: ``offset`` with a keyset, or both ``after_id`` and ``before_id``.
        """
        store = self.store
        chosen = None if state is None else check_state(state)
        wanted = check_tags(tags)
        limit = check_int("limit", limit, minimum=1)
        if limit > MAX_LIST_LIMIT:
            raise ArgumentError(f"limit: at most {MAX_LIST_LIMIT}, got {limit}")
        offset = check_int("offset", offset, minimum=0)
        after = None if after_id is None else check_int("after_id", after_id, minimum=0)
        before = None if before_id is None else check_int("before_id", before_id, minimum=0)
        if after is not None and before is not None:
            raise ArgumentError("after_id and before_id: give one or the other, not both")
        if offset and (after is not None or before is not None):
            raise ArgumentError("offset: not with after_id or before_id (keyset pages)")
        queue = None if every_queue else self.name
        if offset:
            if queue is None:
                raise ArgumentError("offset: not with every_queue; page with after_id")
            found = await store.list_jobs(queue, chosen, limit, offset, tags=wanted)
        else:
            found = await store.list_page(queue, chosen, limit, after, before, tags=wanted)
        return [JobInfo.from_record(r, h, self.serializer) for r, h in found]

    async def requeue(self, job_id: int) -> None:
        """Put a dead, cancelled or done job back in the queue, attempts reset, history kept.

        :raises JobNotFound: no such job in this queue.
        :raises JobStateError: the job is queued or running.
        """
        await self.store.requeue(check_int("job_id", job_id), self.name)
        log_event(
            logger, logging.INFO, "job_requeued", "job requeued", job_id=job_id, queue=self.name
        )

    async def cancel(self, job_id: int) -> bool:
        """Cancel a queued or running job; its lease is revoked.

        :returns: False when the job had already finished.
        :raises JobNotFound: no such job in this queue.
        """
        cancelled = await self.store.cancel(check_int("job_id", job_id), self.name)
        if cancelled:
            if hub.observed:
                hub.emit(JobEvent(kind=EventKind.JOB_CANCELLED, queue=self.name, job_id=job_id))
            log_event(
                logger,
                logging.INFO,
                "job_cancelled",
                "job cancelled",
                job_id=job_id,
                queue=self.name,
            )
        return cancelled

    async def delete(self, job_id: int) -> None:
        """Delete a job and its history.

        :raises JobNotFound: no such job in this queue.
        """
        await self.store.delete(check_int("job_id", job_id), self.name)
        log_event(
            logger, logging.INFO, "job_deleted", "job deleted", job_id=job_id, queue=self.name
        )
