"""Job (one leased delivery), JobInfo (a job as inspected) and Attempt (one audit row)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._checks import check_seconds
from ._crash import crash_point
from ._jobmeta import decode_headers, decode_tags
from ._types import JobState
from .errors import DatabaseError, JobAlreadyFinished, SerializationError
from .metrics import EventKind, JobEvent, hub
from .monitoring import log_event
from .store import Delivery

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._types import Serializer
    from .store import AttemptRecord, JobRecord, JobStore

__all__ = [
    "Attempt",
    "Job",
    "JobInfo",
    "ResultTooLarge",
    "WriteAbandoned",
    "backoff_seconds",
    "decode",
    "retry_transient",
    "to_datetime",
]

logger = logging.getLogger(__name__)

#: Longest error text stored per attempt; a traceback beyond it is cut.
MAX_ERROR_LENGTH = 8000
#: Seconds before an outcome write that failed on a transient error is tried again; doubles
#: per try up to :data:`RETRY_MAX_DELAY`.
RETRY_FIRST_DELAY = 0.05
#: Longest pause between two tries of an outcome write: once the database is back, an outcome
#: is recorded within about this long (the rescue of expired leases does not wait for it).
RETRY_MAX_DELAY = 0.5
#: Shortest pause between two tries, near the end of the lease.
RETRY_MIN_DELAY = 0.01

T = TypeVar("T")


class WriteAbandoned(DatabaseError):
    """Raised when an ack, nack, fail or extend kept failing on a transient database error
    until the lease ran out; the job is left to expire and is delivered again."""


class ResultTooLarge(SerializationError):
    """Raised when a result is larger than ``max_result_bytes`` once serialised.

    A pool fails the job with this error rather than store the result (or retry a handler that
    would return the same again).
    """


async def retry_transient(
    write: Callable[[], Awaitable[T]],
    *,
    what: str,
    queue: str,
    patience: float,
    retryable: Callable[[DatabaseError], bool],
) -> T:
    """Run ``write``; on a :class:`DatabaseError` that ``retryable`` accepts, try again with
    backoff for up to ``patience`` seconds (logged once as ``write_retrying``), then raise the
    last error. For puts and claims, where the caller decides what may be repeated."""
    # time.monotonic, not anyio.current_time: the deadline is only compared with itself, and
    # anyio's clock looks up the running async library on every call (every put and claim).
    deadline = time.monotonic() + patience
    delay = RETRY_FIRST_DELAY
    tries = 0
    while True:
        try:
            return await write()
        except DatabaseError as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not retryable(exc):
                raise
            tries += 1
            if tries == 1:
                log_event(
                    logger,
                    logging.WARNING,
                    "write_retrying",
                    f"a {what} failed ({exc}); trying again for up to {remaining:.1f}s",
                    queue=queue,
                    error=str(exc),
                )
            await anyio.sleep(max(RETRY_MIN_DELAY, min(delay, remaining)))
            delay = min(delay * 2, RETRY_MAX_DELAY)


def to_datetime(timestamp: float | None) -> datetime | None:
    """Epoch seconds as an aware UTC datetime."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC)


def backoff_seconds(
    attempts: int, base: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with jitter for the retry after attempt number ``attempts``.

    The delay doubles each attempt from ``base``, is capped at ``maximum``, and is drawn
    uniformly from its upper half so that jobs that failed together do not retry together.
    """
    exponent = min(max(attempts - 1, 0), 62)
    delay = min(maximum, base * (2.0**exponent))
    draw = (rng or random).random()
    return delay / 2 + draw * delay / 2


def _error_text(error: object) -> str | None:
    if error is None:
        return None
    text = str(error)
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 3] + "..."


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One delivery of a job, from the audit trail.

    ``outcome`` is one of ``acked``, ``nacked``, ``failed``, ``expired`` (the lease ran out),
    ``released`` (handed back on shutdown or cancellation; not counted), ``cancelled``,
    or None while it runs.
    """

    attempt: int
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error: str | None

    @classmethod
    def from_record(cls, record: AttemptRecord) -> Attempt:
        """Build from a store row."""
        started = to_datetime(record.started_at)
        assert started is not None
        return cls(
            attempt=record.attempt,
            started_at=started,
            finished_at=to_datetime(record.finished_at),
            outcome=record.outcome,
            error=record.error,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobInfo:
    """A job as :meth:`Queue.job` and :meth:`Queue.list_jobs` see it, with its history."""

    id: int
    queue: str
    payload: Any
    priority: int
    attempts: int
    max_attempts: int
    enqueued_at: datetime
    lease_expires_at: datetime | None
    state: JobState
    last_error: str | None
    result: Any
    created_at: datetime
    finished_at: datetime | None
    run_at: datetime
    dedupe_key: str | None
    history: list[Attempt] = field(default_factory=list)
    tags: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_record(
        cls, record: JobRecord, history: list[AttemptRecord], serializer: Serializer
    ) -> JobInfo:
        """Build from store rows, decoding payload and result."""
        return cls(
            id=record.id,
            queue=record.queue,
            payload=decode(serializer, record.payload, record.id),
            priority=record.priority,
            attempts=record.attempts,
            max_attempts=record.max_attempts,
            enqueued_at=to_datetime(record.enqueued_at),  # type: ignore[arg-type]
            lease_expires_at=to_datetime(record.lease_expires_at),
            state=record.state,
            last_error=record.last_error,
            result=None if record.result is None else decode(serializer, record.result, record.id),
            created_at=to_datetime(record.created_at),  # type: ignore[arg-type]
            finished_at=to_datetime(record.finished_at),
            run_at=to_datetime(record.run_at),  # type: ignore[arg-type]
            dedupe_key=record.dedupe_key,
            history=[Attempt.from_record(a) for a in history],
            tags=decode_tags(record.tags),
            headers=decode_headers(record.headers),
        )


def decode(serializer: Serializer, data: bytes, job_id: int) -> Any:
    """Decode a stored payload or result: the one decoding policy.

    :raises SerializationError: naming the job, whatever the serializer raised.
    """
    try:
        return serializer.loads(data)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"job {job_id}: stored value cannot be decoded: {exc}") from exc


class Job:
    """One delivery of a job, leased to this consumer until ``lease_expires_at``.

    Finish it exactly once with :meth:`ack`, :meth:`nack` or :meth:`fail`, or use it as an
    async context manager. It holds the store and its lease token, never the queue.
    """

    __slots__ = (
        "_backoff",
        "_finished",
        "_lease_end",
        "_lease_seconds",
        "_max_result_bytes",
        "_ready_at",
        "_serializer",
        "_started_at",
        "_store",
        "_token",
        "attempts",
        "dedupe_key",
        "enqueued_at",
        "headers",
        "id",
        "lease_expires_at",
        "max_attempts",
        "payload",
        "priority",
        "queue",
        "run_at",
        "tags",
    )

    def __init__(
        self,
        record: JobRecord,
        payload: Any,
        *,
        store: JobStore,
        serializer: Serializer,
        backoff: tuple[float, float],
        max_result_bytes: int | None = None,
    ) -> None:
        assert record.lease_token is not None
        assert record.lease_expires_at is not None
        #: The job's id, stable for its life.
        self.id: int = record.id
        #: The queue's name.
        self.queue: str = record.queue
        #: The decoded payload.
        self.payload: Any = payload
        #: Higher runs first.
        self.priority: int = record.priority
        #: Deliveries so far, this one included (1 on the first).
        self.attempts: int = record.attempts
        #: After this many deliveries a nack makes the job dead.
        self.max_attempts: int = record.max_attempts
        #: When the job entered the queue.
        self.enqueued_at: datetime = to_datetime(record.enqueued_at)  # type: ignore[assignment]
        #: When this lease ends unless extended.
        self.lease_expires_at: datetime = to_datetime(record.lease_expires_at)  # type: ignore[assignment]
        #: When the job became due: for a schedule's job, the tick it was enqueued for.
        self.run_at: datetime = to_datetime(record.run_at)  # type: ignore[assignment]
        #: The key it was put with, if any (``schedule:NAME@TICK`` for a schedule's job).
        self.dedupe_key: str | None = record.dedupe_key
        self._store = store
        self._token: str = record.lease_token
        #: The tags given at put.
        self.tags: tuple[str, ...] = decode_tags(record.tags)
        #: The headers given at put (with trace context, when a tracer added it); read-only.
        self.headers: Mapping[str, str] = decode_headers(record.headers)
        self._started_at: float | None = record.started_at
        # when the job became claimable for this delivery (its run_at at the claim)
        self._ready_at: float = record.run_at
        self._serializer = serializer
        self._backoff = backoff
        self._finished: str | None = None
        self._max_result_bytes = max_result_bytes
        #: When the lease ends (epoch seconds, the store's clock): outcome writes that fail on a
        #: transient error are tried again until then.
        self._lease_end: float = record.lease_expires_at

    def __repr__(self) -> str:
        return (
            f"<Job id={self.id} queue={self.queue!r} attempt={self.attempts}/{self.max_attempts}"
            f"{' ' + self._finished if self._finished else ''}>"
        )

    @property
    def finished(self) -> bool:
        """Whether this delivery was acked, nacked, failed or handed back."""
        return self._finished is not None

    @property
    def lease_token(self) -> str:
        """The token that fences this delivery's outcome."""
        return self._token

    def _check(self, action: str) -> None:
        if self._finished is not None:
            raise JobAlreadyFinished(
                f"job {self.id}: this delivery was already {self._finished}; cannot {action} it"
            )

    async def ack(self, result: Any = None) -> None:
        """Mark the job done, storing ``result`` (encoded like payloads).

        :raises LeaseLost: the lease expired and the job was re-taken, or it was cancelled.
        :raises JobAlreadyFinished: this delivery was already finished.
        :raises SerializationError: ``result`` cannot be encoded; the job stays leased.
        :raises ResultTooLarge: ``result`` is larger than ``max_result_bytes`` once encoded
            (a :class:`SerializationError`); nothing is written, the job stays leased.
        :raises DatabaseError: the database failed for good (a transient failure is retried while
            the lease lasts; :class:`WriteAbandoned` once it has run out).
        """
        self._check("ack")
        data = None if result is None else self._serializer.dumps(result)
        limit = self._max_result_bytes
        if data is not None and limit is not None and len(data) > limit:
            raise ResultTooLarge(
                f"job {self.id}: the result is {len(data)} bytes once serialised, over "
                f"max_result_bytes={limit}; it was not stored"
            )
        crash_point("before-ack")
        delivery = None
        if self._started_at is not None:
            delivery = Delivery(
                job_id=self.id,
                token=self._token,
                queue=self.queue,
                attempt=self.attempts,
                started_at=self._started_at,
                ready_at=self._ready_at,
            )
        await self._persist(
            "ack", lambda: self._store.ack(self.id, self._token, data, delivery=delivery)
        )
        crash_point("after-ack-commit")
        self._finished = "acked"
        if hub.observed:
            self._emit(EventKind.JOB_ACKED, None)
        log_event(logger, logging.DEBUG, "job_acked", "job acked", job_id=self.id, queue=self.queue)

    async def nack(self, *, delay: float | timedelta | None = None, error: object = None) -> None:
        """Retry the job later: after ``delay`` seconds (float or timedelta), or after backoff.

        On the last attempt the job becomes dead instead.

        :raises LeaseLost: the lease is no longer this delivery's.
        :raises JobAlreadyFinished: this delivery was already finished.
        :raises DatabaseError: the database failed for good (a transient failure is retried while
            the lease lasts; :class:`WriteAbandoned` once it has run out).
        """
        self._check("nack")
        if delay is None:
            seconds = backoff_seconds(self.attempts, *self._backoff)
        else:
            seconds = check_seconds("delay", delay)
        run_at = self._store.clock() + seconds
        ready_at = self._ready_at
        state = await self._persist(
            "nack",
            lambda: self._store.nack(
                self.id, self._token, run_at, _error_text(error), ready_at=ready_at
            ),
        )
        self._finished = "nacked"
        dead = state == JobState.DEAD
        if hub.observed:
            self._emit(EventKind.JOB_DEAD if dead else EventKind.JOB_NACKED, error)
        log_event(
            logger,
            logging.INFO if dead else logging.DEBUG,
            "job_dead" if dead else "job_nacked",
            "job dead: attempts spent" if dead else f"job nacked; retry in {seconds:.3g}s",
            job_id=self.id,
            queue=self.queue,
            attempts=self.attempts,
            error=_error_text(error),
        )

    async def fail(self, *, error: object = None) -> None:
        """Make the job dead now, without retry.

        :raises LeaseLost: the lease is no longer this delivery's.
        :raises JobAlreadyFinished: this delivery was already finished.
        :raises DatabaseError: the database failed for good (a transient failure is retried while
            the lease lasts; :class:`WriteAbandoned` once it has run out).
        """
        self._check("fail")
        await self._persist(
            "fail", lambda: self._store.fail(self.id, self._token, _error_text(error))
        )
        self._finished = "failed"
        if hub.observed:
            self._emit(EventKind.JOB_DEAD, error)
        log_event(
            logger,
            logging.INFO,
            "job_failed",
            "job failed",
            job_id=self.id,
            queue=self.queue,
            error=_error_text(error),
        )

    def _emit(self, kind: EventKind, error: object) -> None:
        run = None if self._started_at is None else self._store.clock() - self._started_at
        hub.emit(
            JobEvent(
                kind=kind,
                queue=self.queue,
                job_id=self.id,
                attempts=self.attempts,
                run_seconds=run,
                error=None if error is None else _error_text(error),
            )
        )

    async def release(self) -> None:
        """Hand the lease back without counting this attempt (the job is queued again at once).

        Idempotent; does nothing when the lease is already gone.
        """
        if self._finished is not None:
            return
        await self._store.release(self.id, self._token, self.queue)
        self._finished = "released"
        log_event(
            logger,
            logging.DEBUG,
            "job_released",
            "lease handed back",
            job_id=self.id,
            queue=self.queue,
        )

    async def extend(self, seconds: float | timedelta) -> None:
        """Make the lease end ``seconds`` from now.

        :raises LeaseLost: the lease is no longer this delivery's.
        :raises JobAlreadyFinished: this delivery was already finished.
        :raises DatabaseError: the database failed for good (a transient failure is retried while
            the lease lasts; :class:`WriteAbandoned` once it has run out).
        """
        self._check("extend")
        value = check_seconds("seconds", seconds, positive=True)
        expires = await self._persist(
            "extend", lambda: self._store.extend(self.id, self._token, value)
        )
        self._lease_end = expires
        self.lease_expires_at = to_datetime(expires)  # type: ignore[assignment]
        log_event(
            logger,
            logging.DEBUG,
            "job_extended",
            f"lease extended by {value}s",
            job_id=self.id,
            queue=self.queue,
        )

    async def _persist(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """Run ``write`` (an ack, nack, fail or extend of this delivery); on a transient
        database error try it again with backoff for as long as the lease is ours.

        Each of these writes may be repeated safely: they are fenced by the lease token, and
        one that committed although its answer was lost is found applied by the next try (an
        extend simply extends again). A permanent error (``LeaseLost``, a constraint) is raised
        at once. When the lease has run out the write is given up, logged as
        ``write_abandoned``, and :class:`WriteAbandoned` raised: the job is then left to
        the rescue of expired leases, which delivers it again.
        """
        delay = RETRY_FIRST_DELAY
        tries = 0
        began = time.monotonic()  # for the log only (see retry_transient)
        while True:
            try:
                return await write()
            except DatabaseError as exc:
                if not self._store.backend.is_transient(exc):
                    raise
                tries += 1
                remaining = self._lease_end - self._store.clock()
                fields = {"job_id": self.id, "queue": self.queue, "error": str(exc)}
                if remaining <= 0:
                    elapsed = time.monotonic() - began
                    log_event(
                        logger,
                        logging.ERROR,
                        "write_abandoned",
                        f"job {self.id}: gave up the {what} after {tries} tries in "
                        f"{elapsed:.1f}s: the lease has run out; the job will be delivered again",
                        tries=tries,
                        **fields,
                    )
                    raise WriteAbandoned(
                        f"job {self.id}: the {what} was not recorded ({exc}); tried {tries} "
                        "times until the lease ran out"
                    ) from exc
                if tries == 1:
                    log_event(
                        logger,
                        logging.WARNING,
                        "write_retrying",
                        f"job {self.id}: the {what} failed ({exc}); trying again for up to "
                        f"{remaining:.1f}s while the lease lasts",
                        **fields,
                    )
                # Near the end of the lease, try more often rather than sleep past it.
                await anyio.sleep(max(RETRY_MIN_DELAY, min(delay, remaining / 2)))
                delay = min(delay * 2, RETRY_MAX_DELAY)

    async def __aenter__(self) -> Job:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Ack on a clean exit; nack (and re-raise) on an error; hand back on cancellation."""
        if self._finished is not None:
            return
        with anyio.CancelScope(shield=True):
            if exc is None:
                await self.ack()
            elif isinstance(exc, anyio.get_cancelled_exc_class()) or not isinstance(exc, Exception):
                await self.release()
            else:
                await self.nack(error=f"{type(exc).__name__}: {exc}")
