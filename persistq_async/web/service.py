"""What the dashboard shows and does, as JSON-ready dicts.

The pages and the JSON API both go through :class:`Dashboard`. It holds one
:class:`~persistq_async.Queue` on the database, opened on first use with ``create=False`` (a
dashboard never creates a database), and reaches the other queues of the database through
:meth:`Queue.sibling`, which shares its connections. Lookups, actions and bulk actions are the
Queue's public methods; the reads only a dashboard makes (every queue's counts in one query,
attempts per minute, pages newest first with a priority filter) are the store's
(:mod:`persistq_async.store.dashboard`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from .._types import JobState, Serializer
from ..errors import ArgumentError, JobNotFound, JobStateError, SerializationError
from ..job import JobInfo
from ..queue import Queue
from ..store import dashboard

if TYPE_CHECKING:
    from ..store import AttemptRecord, JobRecord, JobStore

__all__ = ["JOB_ACTIONS", "MAX_BULK_IDS", "MAX_PAGE", "Dashboard", "PageQuery"]

#: The actions on one job or a selection of jobs.
JOB_ACTIONS = ("requeue", "cancel", "delete")
#: Most jobs one page lists.
MAX_PAGE = 500
#: Most ids one bulk request names.
MAX_BULK_IDS = 1000
#: Characters of a payload shown in a list before it is cut.
PREVIEW_CHARS = 160
#: The throughput chart: one bucket a minute over the last hour.
THROUGHPUT_BUCKETS = 60
THROUGHPUT_BUCKET_SECONDS = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PageQuery:
    """A keyset page of jobs: filters, and the cursor (``before_id`` older, ``after_id`` newer)."""

    queue: str | None = None
    state: JobState | None = None
    priority: int | None = None
    job_id: int | None = None
    before_id: int | None = None
    after_id: int | None = None
    limit: int = 50
    #: Jobs having every one of these tags.
    tags: tuple[str, ...] = ()


def iso(timestamp: float | datetime | None) -> str | None:
    """An aware UTC ISO 8601 string, or None."""
    if timestamp is None:
        return None
    if isinstance(timestamp, datetime):
        return timestamp.astimezone(UTC).isoformat()
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


def to_json_value(value: Any) -> Any:
    """``value`` if JSON can carry it, else its ``repr`` (a custom serializer's objects)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def preview(value: Any) -> str:
    """A one-line JSON rendering of a payload, cut to :data:`PREVIEW_CHARS`."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=repr)
    except ValueError:
        text = repr(value)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


class Dashboard:
    """The dashboard's access to one database.

    :param url: a file path or SQLAlchemy URL, as for :class:`~persistq_async.Queue`; None for
        the configured one. A database that is not there is refused, never created.
    :param serializer: decodes payloads and results; JSON by default.
    :param options: queue options (``busy_timeout``, ``poll_interval``...).
    :raises ConfigError: a bad option.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None,
        *,
        serializer: Serializer | None = None,
        **options: Any,
    ) -> None:
        self._home = Queue(url, name="default", serializer=serializer, create=False, **options)
        self.serializer: Serializer = self._home.serializer
        self._opened = False
        self._lock = anyio.Lock()

    @property
    def where(self) -> str:
        """The database, for people (password hidden)."""
        return self._home.url.render_as_string(hide_password=True)

    async def open(self) -> Queue:
        """Open the database once (later calls return the open queue).

        :raises DatabaseNotFound: no database there (nothing is created).
        :raises DatabaseError: the database cannot be opened.
        """
        async with self._lock:
            if not self._opened:
                await self._home.__aenter__()
                self._opened = True
            return self._home

    async def aclose(self) -> None:
        """Close the database connections. Idempotent."""
        async with self._lock:
            await self._home.aclose()

    async def queue(self, name: str) -> Queue:
        """The queue ``name`` of the database, on the shared connections."""
        return (await self.open()).sibling(name)

    async def _store(self) -> JobStore:
        return (await self.open()).store

    # ------------------------------------------------------------------ reads

    async def overview(self) -> dict[str, Any]:
        """Every queue with its counts per state, ready and scheduled jobs, and lag."""
        store = await self._store()
        now = store.clock()
        queues: list[dict[str, Any]] = []
        summaries = await store.read(
            functools.partial(dashboard.queue_summaries, now=now), "reading the queues"
        )
        for s in summaries:
            counts = {state.value: s.counts.get(state, 0) for state in JobState}
            queued = counts[JobState.QUEUED.value]
            queues.append(
                {
                    "name": s.queue,
                    **counts,
                    "ready": s.ready,
                    "scheduled": queued - s.ready,
                    "total": sum(counts.values()),
                    "lag_seconds": None
                    if s.oldest_ready_at is None
                    else max(0.0, now - s.oldest_ready_at),
                }
            )
        for row in queues:
            row["paused"] = (await store.flow_settings(row["name"])).paused
        totals: dict[str, int] = {
            key: sum(int(q[key]) for q in queues)
            for key in (*(s.value for s in JobState), "ready", "scheduled", "total")
        }
        return {"now": iso(now), "queues": queues, "totals": totals}

    async def queue_names(self) -> list[str]:
        """The names of every queue that has jobs."""
        return await (await self.open()).queue_names()

    async def throughput(self) -> dict[str, Any]:
        """Finished attempts per minute over the last hour, per queue and outcome, and in all."""
        store = await self._store()
        width = THROUGHPUT_BUCKET_SECONDS
        # Buckets on whole minutes, the last one being the current (partial) minute.
        end = (store.clock() // width + 1) * width
        since = end - THROUGHPUT_BUCKETS * width
        found = await store.read(
            functools.partial(
                dashboard.throughput, since=since, bucket_seconds=width, buckets=THROUGHPUT_BUCKETS
            ),
            "reading the throughput",
        )
        total: dict[str, list[int]] = {}
        for outcomes in found.counts.values():
            for outcome, values in outcomes.items():
                into = total.setdefault(outcome, [0] * found.buckets)
                for i, v in enumerate(values):
                    into[i] += v
        return {
            "since": iso(found.since),
            "bucket_seconds": found.bucket_seconds,
            "buckets": found.buckets,
            "queues": found.counts,
            "total": total,
        }

    def _info(self, info: JobInfo, *, full: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": info.id,
            "queue": info.queue,
            "state": info.state.value,
            "priority": info.priority,
            "attempts": info.attempts,
            "max_attempts": info.max_attempts,
            "created_at": iso(info.created_at),
            "enqueued_at": iso(info.enqueued_at),
            "run_at": iso(info.run_at),
            "finished_at": iso(info.finished_at),
            "lease_expires_at": iso(info.lease_expires_at),
            "dedupe_key": info.dedupe_key,
            "last_error": info.last_error,
            "tags": list(info.tags),
            "headers": dict(info.headers),
        }
        if full:
            data["payload"] = to_json_value(info.payload)
            data["result"] = to_json_value(info.result)
            data["history"] = [
                {
                    "attempt": a.attempt,
                    "started_at": iso(a.started_at),
                    "finished_at": iso(a.finished_at),
                    "outcome": a.outcome,
                    "error": a.error,
                }
                for a in info.history
            ]
        else:
            data["preview"] = preview(info.payload)
        return data

    def _decode(self, record: JobRecord, history: list[AttemptRecord]) -> JobInfo | dict[str, Any]:
        try:
            return JobInfo.from_record(record, history, self.serializer)
        except SerializationError as exc:
            # A payload this serializer cannot read is still a job the operator must see.
            return {
                "id": record.id,
                "queue": record.queue,
                "state": record.state.value,
                "priority": record.priority,
                "attempts": record.attempts,
                "max_attempts": record.max_attempts,
                "last_error": record.last_error,
                "created_at": iso(record.created_at),
                "finished_at": iso(record.finished_at),
                "decode_error": str(exc),
            }

    async def _find(self, job_id: int) -> JobInfo | dict[str, Any] | None:
        home = await self.open()
        try:
            return await home.find_job(job_id)
        except SerializationError:
            store = home.store
            queue = await store.find_queue(job_id)
            found = None if queue is None else await store.read_job(job_id, queue)
            return None if found is None else self._decode(*found)

    async def job(self, job_id: int) -> dict[str, Any]:
        """One job, whatever its queue, with payload, result and every attempt.

        :raises JobNotFound: no job has this id.
        """
        info = await self._find(job_id)
        if info is None:
            raise JobNotFound(f"no job {job_id}")
        if isinstance(info, dict):
            return {**info, "payload": None, "result": None, "history": [], "tags": []}
        return self._info(info, full=True)

    async def jobs(self, query: PageQuery) -> dict[str, Any]:
        """A keyset page of jobs, newest first, with cursors for the pages either side."""
        items: list[dict[str, Any]] = []
        has_older = has_newer = False
        if query.job_id is not None:
            info = await self._find(query.job_id)
            if info is not None:
                data = info if isinstance(info, dict) else self._info(info, full=False)
                if (
                    (query.queue is None or data["queue"] == query.queue)
                    and (query.state is None or data["state"] == query.state.value)
                    and (query.priority is None or data["priority"] == query.priority)
                    and set(query.tags) <= set(data.get("tags", ()))
                ):
                    items.append(data)
        else:
            store = await self._store()
            page = await store.read(
                functools.partial(
                    dashboard.job_page,
                    queue=query.queue,
                    state=query.state,
                    priority=query.priority,
                    before_id=query.before_id,
                    after_id=query.after_id,
                    limit=query.limit,
                    tags=query.tags,
                ),
                "listing jobs",
            )
            for record in page.records:
                info = self._decode(record, [])
                items.append(info if isinstance(info, dict) else self._info(info, full=False))
            has_older, has_newer = page.has_older, page.has_newer
        return {
            "jobs": items,
            "older": items[-1]["id"] if items and has_older else None,
            "newer": items[0]["id"] if items and has_newer else None,
        }

    async def schedules(self) -> dict[str, Any]:
        """Every queue's periodic jobs, by queue and name, with their next and last runs."""
        records = await (await self._store()).schedules(None)
        items = []
        for record in records:
            item: dict[str, Any] = {
                "queue": record.queue,
                "name": record.name,
                "spec": record.timing.spec,
                "paused": record.paused,
                "next_run_at": None if record.paused else iso(record.next_run_at),
                "last_tick_at": iso(record.last_tick_at),
                "catch_up": record.catch_up,
                "priority": record.priority,
                "max_attempts": record.max_attempts,
                "tags": list(record.tags),
            }
            try:
                item["preview"] = preview(self.serializer.loads(record.payload))
            except Exception as exc:  # the serializer's own error: still a schedule to see
                item["decode_error"] = f"payload cannot be decoded: {exc}"
            items.append(item)
        return {"schedules": items}

    async def workers(self) -> dict[str, Any]:
        """The workers (supervisors) the database has a record of, with their pools."""
        found = await (await self.open()).workers()
        return {
            "available": True,
            "message": None,
            "workers": [
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "started_at": iso(w.started_at),
                    "last_seen": iso(w.last_seen),
                    "alive": w.alive,
                    "pools": [
                        {
                            "name": p.name,
                            "queue": p.queue,
                            "concurrency": p.concurrency,
                            "active": p.active,
                            "processed": p.processed,
                            "failed": p.failed,
                        }
                        for p in w.pools
                    ],
                }
                for w in found
            ],
        }

    # ------------------------------------------------------------------ actions

    async def act(self, action: str, job_id: int) -> dict[str, Any]:
        """Requeue, cancel or delete one job; says whether it changed anything.

        :raises JobNotFound: no job has this id.
        :raises JobStateError: the job's state forbids it (requeue a running job).
        """
        if action not in JOB_ACTIONS:
            raise ArgumentError(f"action: expected one of {', '.join(JOB_ACTIONS)}, got {action!r}")
        queue = await (await self.open()).store.find_queue(job_id)
        if queue is None:
            raise JobNotFound(f"no job {job_id}")
        return {"touched": int(await self._act_one(action, queue, job_id))}

    async def _act_one(self, action: str, queue_name: str, job_id: int) -> bool:
        queue = await self.queue(queue_name)
        if action == "requeue":
            await queue.requeue(job_id)
            return True
        if action == "cancel":
            return await queue.cancel(job_id)
        await queue.delete(job_id)
        return True

    async def act_many(self, action: str, ids: Sequence[int]) -> dict[str, Any]:
        """The action on each of ``ids``; counts what changed and says why the others did not."""
        if action not in JOB_ACTIONS:
            raise ArgumentError(f"action: expected one of {', '.join(JOB_ACTIONS)}, got {action!r}")
        store = (await self.open()).store
        touched = 0
        skipped: list[dict[str, Any]] = []
        for job_id in dict.fromkeys(ids):
            queue = await store.find_queue(job_id)
            try:
                if queue is None:
                    raise JobNotFound(f"no job {job_id}")
                if await self._act_one(action, queue, job_id):
                    touched += 1
                else:
                    skipped.append({"id": job_id, "reason": f"job {job_id} had already finished"})
            except (JobNotFound, JobStateError) as exc:
                skipped.append({"id": job_id, "reason": str(exc)})
        return {"touched": touched, "skipped": skipped}

    async def requeue_state(self, queue: str, state: JobState) -> dict[str, Any]:
        """Requeue every job of ``queue`` in a finished ``state`` (in short batches).

        :raises ArgumentError: ``state`` is queued or running.
        """
        return {"touched": await (await self.queue(queue)).requeue_many(state)}

    async def purge(self, queue: str, state: JobState) -> dict[str, Any]:
        """Delete every job of ``queue`` in ``state``, not running ones (in short batches).

        :raises ArgumentError: ``state`` is running.
        """
        if state is JobState.RUNNING:
            raise ArgumentError(
                "state: running jobs cannot be purged (their handlers hold leases); "
                "cancel them first"
            )
        return {"touched": await (await self.queue(queue)).purge(state)}
