"""Queue: put, get, iterate, join, inspect and operate on the jobs of one named queue."""

from __future__ import annotations

import copy
import enum
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ._admin import QueueAdmin
from ._checks import (
    check_aware,
    check_float,
    check_int,
    check_name,
    check_optional_str,
    check_seconds,
)
from ._crash import crash_point
from ._jobmeta import check_headers, check_tags, encode_headers, encode_tags
from ._queue_schedules import ScheduleMethods
from ._types import Serializer
from .backends import backend_for, normalize_url
from .config import DEFAULT_DATABASE_FILE, Options, resolve_options
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    QueueClosed,
    SerializationError,
)
from .flowcontrol import FlowControl, flow_options
from .job import Job, decode, retry_transient
from .metrics import EventKind, JobEvent, hub
from .monitoring import log_event
from .observe import Monitored
from .results import ResultMethods
from .serializers import JSONSerializer
from .store import JobStore, NewJob

if TYPE_CHECKING:
    from collections.abc import Awaitable

__all__ = ["Queue", "Watch"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How often an idle queue deletes finished jobs past ``retention_seconds``.
CLEAN_INTERVAL = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Watch:
    """What :meth:`Queue.watch` saw before a look at the queue; :meth:`Queue.wait` waits for
    anything after it."""

    event: anyio.Event
    token: int


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Queue(FlowControl, QueueAdmin, Monitored, ScheduleMethods, ResultMethods):
    """A named queue of jobs in a database: ``async with Queue("jobs.db", name="emails") as q``.

    :param url: a file path (an SQLite file), a SQLAlchemy async URL (``sqlite+aiosqlite://...``,
        ``postgresql+asyncpg://...``), or None for the configured ``url``, else ``persistq.db``
        in the working directory.
    :param name: the queue's name; several queues share one database.
    :param serializer: encodes payloads and results; JSON by default.
    :param clock: epoch seconds now; for tests that drive lease expiry.
    :param create: whether opening may create the database (the SQLite file and the tables).
        With False (for tools that only look), a database that is not there raises
        :class:`~persistq_async.errors.DatabaseNotFound` and nothing is created.
    :param options: any option of :class:`~persistq_async.config.Options` (``lease_seconds``,
        ``max_attempts``, ``backoff_base``, ``backoff_max``, ``poll_interval``,
        ``retention_seconds``, ``durability``, ``busy_timeout``; flow control: ``rate_limit``,
        ``rate_burst``, ``max_running``, ``dead_letter_queue``, written to the database when
        the queue opens; ``max_payload_bytes``, ``max_result_bytes``).
    :raises ConfigError: an unknown or ill-typed option.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        *,
        name: str = "default",
        serializer: Serializer | None = None,
        clock: Callable[[], float] | None = None,
        create: bool = True,
        **options: Any,
    ) -> None:
        self.name: str = check_name("name", name)
        if url is not None and not isinstance(url, (str, os.PathLike)):
            raise ArgumentTypeError(f"url: expected a str or a path, got {type(url).__name__}")
        keywords = dict(options)
        if url is not None:
            keywords["url"] = os.fspath(url)
        self.options: Options = resolve_options(keywords)
        self.url: URL = normalize_url(self.options.url or DEFAULT_DATABASE_FILE)
        if serializer is None:
            serializer = JSONSerializer()
        elif not (
            callable(getattr(serializer, "dumps", None))
            and callable(getattr(serializer, "loads", None))
        ):
            raise ArgumentTypeError(
                "serializer: needs dumps(value) -> bytes and loads(bytes) methods"
            )
        self.serializer: Serializer = serializer
        if clock is not None and not callable(clock):
            raise ArgumentTypeError("clock: expected a callable returning epoch seconds")
        self._clock = clock or time.time
        if not isinstance(create, bool):
            raise ArgumentTypeError(f"create: expected a bool, got {type(create).__name__}")
        self._create = create
        # False for a sibling(), which uses the store of the queue it came from.
        self._owns_store = True
        self._flow_options = flow_options(self.name, self.options)
        self._state = _State.UNOPENED
        self._store: JobStore | None = None
        self._last_clean = -float("inf")

    def __repr__(self) -> str:
        where = self.url.render_as_string(hide_password=True)
        return f"<Queue name={self.name!r} url={where!r} {self._state.value}>"

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> Queue:
        if self._state is not _State.UNOPENED:
            raise QueueClosed(
                f"queue {self.name!r} was already {self._state.value}; make a new one"
            )
        store = JobStore(
            backend_for(self.url, self.options, create=self._create), clock=self._clock
        )
        await store.__aenter__()
        if self._flow_options:
            try:
                await store.set_flow(self.name, self._flow_options)
            except BaseException:
                await store.aclose()
                raise
        self._store = store
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish pending writes and close the database connections. Idempotent."""
        if self._state is _State.OPEN and self._store is not None:
            self._state = _State.CLOSED
            if self._owns_store:
                await self._store.aclose()
        self._state = _State.CLOSED

    @property
    def closed(self) -> bool:
        """Whether the queue was closed."""
        return self._state is _State.CLOSED

    def sibling(self, name: str) -> Queue:
        """Another queue of the same database, on this queue's connections (no second writer
        or pool): for tools that look at every queue. It is usable while this queue is open;
        closing it leaves this queue open.

        :raises QueueClosed: this queue is not open.
        """
        store = self.store
        other = copy.copy(self)
        other.name = check_name("name", name)
        other._store = store
        other._owns_store = False
        other._last_clean = -float("inf")
        return other

    @property
    def store(self) -> JobStore:
        """The job store (for pools and the supervisor).

        :raises QueueClosed: when the queue is not open.
        """
        if self._state is not _State.OPEN or self._store is None:
            raise QueueClosed(
                f"queue {self.name!r} is {self._state.value}; use it inside 'async with Queue(...)'"
            )
        return self._store

    # ------------------------------------------------------------------ put

    def _new_job(
        self,
        payload: Any,
        priority: Any,
        delay: Any,
        run_at: Any,
        max_attempts: Any,
        dedupe_key: Any,
        now: float,
        tags: str | None = None,
        headers: str | None = None,
        index: int | None = None,
    ) -> NewJob:
        priority = check_int("priority", priority)
        if not -(2**31) <= priority < 2**31:
            raise ArgumentError(f"priority: must fit in 32 bits, got {priority}")
        if delay is not None and run_at is not None:
            raise ArgumentError("delay and run_at: give one or the other, not both")
        due = now
        if delay is not None:
            due = now + check_seconds("delay", delay)
        elif run_at is not None:
            due = check_aware("run_at", run_at).timestamp()
        if max_attempts is None:
            max_attempts = self.options.max_attempts
        else:
            max_attempts = check_int("max_attempts", max_attempts, minimum=1)
        dedupe_key = check_optional_str("dedupe_key", dedupe_key)
        data = self.serializer.dumps(payload)
        if not isinstance(data, bytes):
            raise SerializationError(f"the serializer returned {type(data).__name__}, not bytes")
        limit = self.options.max_payload_bytes
        if len(data) > limit:
            where = "payload" if index is None else f"payloads[{index}]"
            raise SerializationError(
                f"{where}: {len(data)} bytes once serialised, over max_payload_bytes={limit}; "
                "nothing was written"
            )
        return NewJob(
            payload=data,
            priority=priority,
            run_at=due,
            max_attempts=max_attempts,
            dedupe_key=dedupe_key,
            tags=tags,
            headers=headers,
        )

    async def put(
        self,
        payload: Any,
        *,
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        dedupe_key: str | None = None,
        tags: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        connection: AsyncConnection | AsyncSession | None = None,
    ) -> int:
        """Add a job; returns its id once it is committed.

        :param payload: a JSON value (or what the queue's serializer takes).
        :param priority: higher runs first; FIFO within one priority.
        :param delay: seconds (or a timedelta) before the job may run.
        :param run_at: an aware datetime before which the job may not run.
        :param max_attempts: deliveries before a nack makes it dead; the option by default.
        :param dedupe_key: while a queued or running job of this queue holds the key, its id is
            returned instead of adding a job.
        :param tags: strings to find the job by (``list_jobs(tags=...)``); at most
            ``MAX_TAGS``, each at most ``MAX_TAG_LENGTH`` characters.
        :param headers: string metadata carried with the job (trace context goes here); at most
            ``MAX_HEADERS`` entries and ``MAX_HEADERS_BYTES`` bytes in all.
        :param connection: the application's own ``AsyncConnection`` or ``AsyncSession`` on the
            same database: the job is written in its transaction and exists iff that commits.
        :raises SerializationError: the payload is not a JSON value, or is larger than
            ``max_payload_bytes`` once serialised; nothing is written.
        :raises ArgumentError: a bad value (negative delay, naive run_at, both delay and run_at,
            tags or headers past their limits).
        :raises ArgumentTypeError: an argument of the wrong type.
        """
        options = (priority, delay, run_at, max_attempts, dedupe_key)
        ids = await self._put([payload], options, tags, headers, connection, many=False)
        log_event(logger, logging.DEBUG, "job_put", "job put", job_id=ids[0], queue=self.name)
        return ids[0]

    async def put_many(
        self,
        payloads: Iterable[Any],
        *,
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        dedupe_key: str | None = None,
        tags: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        connection: AsyncConnection | AsyncSession | None = None,
    ) -> list[int]:
        """Add several jobs with the same options in one transaction: all or nothing.

        Takes the options of :meth:`put`; returns the ids in the order of ``payloads``. Every
        payload is encoded and checked (``max_payload_bytes`` included) before any is written.
        """
        if isinstance(payloads, (str, bytes, dict)) or not isinstance(payloads, Iterable):
            raise ArgumentTypeError(
                f"payloads: expected an iterable of payloads, got {type(payloads).__name__}"
            )
        options = (priority, delay, run_at, max_attempts, dedupe_key)
        ids = await self._put(list(payloads), options, tags, headers, connection, many=True)
        if ids:
            log_event(logger, logging.DEBUG, "job_put", "jobs put", count=len(ids), queue=self.name)
        return ids

    async def _put(
        self,
        payloads: list[Any],
        options: tuple[Any, Any, Any, Any, Any],
        tags: Any,
        headers: Any,
        connection: AsyncConnection | AsyncSession | None,
        *,
        many: bool,
    ) -> list[int]:
        """Check, build and insert the jobs (``many``: of a put_many, whose errors name the
        index of the payload), inside the tracers' put spans when any is
        registered (they may add trace context to the headers first); then tell observers."""
        store = self.store
        stored_tags = encode_tags(check_tags(tags))
        checked_headers = check_headers(headers)
        if not payloads:
            return []

        def build() -> list[NewJob]:
            now, stored_headers = store.clock(), encode_headers(checked_headers)
            # Every payload is encoded and checked (type, size) before any is written.
            return [
                self._new_job(
                    p, *options, now, stored_tags, stored_headers, index=i if many else None
                )
                for i, p in enumerate(payloads)
            ]

        if hub.traced:
            with hub.put_spans(self.name, checked_headers, len(payloads)) as report:
                ids = await self._insert(build(), connection)
                report(ids)
        else:
            ids = await self._insert(build(), connection)
        if hub.observed:
            for job_id in ids:
                hub.emit(JobEvent(kind=EventKind.JOB_PUT, queue=self.name, job_id=job_id))
        return ids

    async def _retrying(
        self, what: str, write: Callable[[], Awaitable[T]], *, repeatable: Callable[[Any], bool]
    ) -> T:
        """Run ``write``; on a transient database error that ``repeatable`` says may be tried
        again, try again with backoff for up to ``lease_seconds`` (the outage a queue rides
        out), then raise the last error."""
        return await retry_transient(
            write,
            what=what,
            queue=self.name,
            patience=self.options.lease_seconds,
            retryable=lambda exc: self.store.backend.is_transient(exc) and repeatable(exc),
        )

    async def _insert(
        self, new: list[NewJob], connection: AsyncConnection | AsyncSession | None
    ) -> list[int]:
        store = self.store
        if connection is None:
            # A put is repeated only where the failed try cannot have committed (it would add
            # the jobs twice), or where every job has a dedupe key (a try that did commit
            # holds the key, and the next returns that job's id).
            deduped = all(job.dedupe_key is not None for job in new)
            return await self._retrying(
                "put",
                lambda: store.put(self.name, new),
                repeatable=lambda exc: deduped or store.backend.never_committed(exc),
            )
        if isinstance(connection, AsyncSession):
            conn = await connection.connection()
        elif isinstance(connection, AsyncConnection):
            conn = connection
        else:
            raise ArgumentTypeError(
                "connection: expected an AsyncConnection or AsyncSession, "
                f"got {type(connection).__name__}"
            )
        if not store.backend.same_database(conn.engine.url):
            raise ArgumentError(
                "connection: it is on another database than the queue "
                f"({conn.engine.url.render_as_string(hide_password=True)})"
            )
        return await store.put_within(conn, self.name, new)

    # ------------------------------------------------------------------ get

    def _job(self, record: Any) -> Job | None:
        try:
            payload = decode(self.serializer, record.payload, record.id)
        except SerializationError as exc:
            log_event(
                logger,
                logging.ERROR,
                "job_failed",
                "payload cannot be decoded; job failed",
                job_id=record.id,
                queue=self.name,
                error=str(exc),
            )
            return None
        return Job(
            record,
            payload,
            store=self.store,
            serializer=self.serializer,
            backoff=(self.options.backoff_base, self.options.backoff_max),
            max_result_bytes=self.options.max_result_bytes,
        )

    async def claim(
        self, limit: int, *, lease_seconds: float | None = None
    ) -> tuple[list[Job], float | None]:
        """Lease up to ``limit`` ready jobs in one statement (pools use this).

        :returns: the jobs, and the epoch time at which another may become claimable.
        """
        store = self.store
        limit = check_int("limit", limit, minimum=1)
        lease = (
            self.options.lease_seconds
            if lease_seconds is None
            else check_float("lease_seconds", lease_seconds, positive=True)
        )
        # A claim may always be repeated: one that committed unseen leased jobs under a token
        # nobody holds; they come back when that lease expires, their handlers never having run.
        result = await self._retrying(
            "claim", lambda: store.claim(self.name, limit, lease), repeatable=lambda _: True
        )
        if result.records:
            crash_point("after-claim-commit")
        claimed: list[Job] = []
        for record in result.records:
            job = self._job(record)
            if job is None:
                assert record.lease_token is not None
                await store.fail(record.id, record.lease_token, "payload cannot be decoded")
                continue
            claimed.append(job)
            if hub.observed:
                hub.emit(
                    JobEvent(
                        kind=EventKind.JOB_CLAIMED,
                        queue=self.name,
                        job_id=job.id,
                        attempts=job.attempts,
                        wait_seconds=(record.started_at or record.run_at) - record.run_at,
                    )
                )
            log_event(
                logger,
                logging.DEBUG,
                "job_claimed",
                "job claimed",
                job_id=job.id,
                queue=self.name,
                attempts=job.attempts,
            )
        return claimed, result.next_due_at

    async def get_nowait(self) -> Job | None:
        """A leased job if one is ready now, else None."""
        jobs, _ = await self.claim(1)
        return jobs[0] if jobs else None

    # ``timeout=`` is the contract's (DESIGN.md); it also bounds the claim loop's waits.
    async def get(self, timeout: float | timedelta | None = None) -> Job:  # noqa: ASYNC109
        """Wait for a ready job and lease it.

        A put in this process wakes the wait at once; another process's commit within
        ``poll_interval``. If the call is cancelled after its claim committed, the lease is handed
        back before the cancellation reaches the caller.

        :raises TimeoutError: no job became ready within ``timeout`` seconds.
        """
        wait = None if timeout is None else check_seconds("timeout", timeout)
        deadline = None if wait is None else anyio.current_time() + wait
        while True:
            watch = self.watch(work=True)
            jobs, next_due_at = await self.claim(1)
            if jobs:
                return jobs[0]
            await self._maybe_clean()
            if deadline is not None and anyio.current_time() >= deadline:
                raise TimeoutError(f"no job in queue {self.name!r} within {wait}s")
            await self.wait(watch, next_due_at=next_due_at, deadline=deadline)

    def watch(self, *, work: bool) -> Watch:
        """Begin watching this queue, *before* looking at it (claiming, counting).

        Whatever happens after this call makes :meth:`wait` return: with ``work``, jobs that may
        have become claimable; without, any change of state of the queue's jobs.
        """
        store = self.store
        event = store.work_event(self.name) if work else store.change_event(self.name)
        return Watch(event=event, token=store.known_change_token())

    async def wait(
        self,
        watch: Watch,
        *,
        next_due_at: float | None = None,
        deadline: float | None = None,
    ) -> None:
        """The one way to wait on a queue (``get``, ``join``, pools): until what ``watch``
        watches happened in this process, a job falls due (``next_due_at``, epoch seconds),
        another process committed (the change token moved), or ``deadline`` (anyio time)."""
        store = self.store
        due = None
        if next_due_at is not None:
            due = anyio.current_time() + max(0.0, next_due_at - store.clock())
        while True:
            now = anyio.current_time()
            # Look twice per poll_interval: another process's commit is then seen within
            # poll_interval at worst and half of it on average (PRAGMA data_version is cheap).
            limits = [now + self.options.poll_interval / 2]
            limits += [t for t in (deadline, due) if t is not None]
            with anyio.move_on_after(max(0.0, min(limits) - now)):
                await watch.event.wait()
            if watch.event.is_set():
                return
            now = anyio.current_time()
            if (due is not None and now >= due) or (deadline is not None and now >= deadline):
                return
            if await store.change_token() != watch.token:
                return

    async def _maybe_clean(self) -> None:
        now = anyio.current_time()
        if now - self._last_clean < CLEAN_INTERVAL:
            return
        self._last_clean = now
        await self.clean()

    async def clean(self) -> int:
        """Delete jobs (of every queue) finished more than ``retention_seconds`` ago."""
        store = self.store
        return await store.clean(store.clock() - self.options.retention_seconds)

    def __aiter__(self) -> Queue:
        return self

    async def __anext__(self) -> Job:
        """The next leased job; iteration ends when the queue is closed."""
        if self._state is not _State.OPEN:
            raise StopAsyncIteration
        return await self.get()

    async def join(self, timeout: float | timedelta | None = None) -> None:  # noqa: ASYNC109
        """Wait until no job of this queue is queued (delayed included) or running.

        :raises TimeoutError: jobs were still active after ``timeout`` seconds.
        """
        store = self.store
        wait = None if timeout is None else check_seconds("timeout", timeout)
        deadline = None if wait is None else anyio.current_time() + wait
        while True:
            watch = self.watch(work=False)
            if await store.active_count(self.name) == 0:
                return
            if deadline is not None and anyio.current_time() >= deadline:
                raise TimeoutError(f"queue {self.name!r} still had active jobs after {wait}s")
            await self.wait(watch, deadline=deadline)
