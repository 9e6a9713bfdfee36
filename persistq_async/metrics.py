"""Events for observers, and hooks for tracers: what integrations (Prometheus, OpenTelemetry,
your own) listen to.

An *observer* is any callable taking one :data:`Event`; register it with :func:`add_observer`.
The queue, its jobs, the pools and the supervisor emit a :class:`JobEvent` when a job is put,
claimed, acked, nacked (retried), made dead, cancelled, rescued or timed out, and a
:class:`PoolEvent` when a pool starts, stops or is restarted. Events describe what this process
did; what every process did comes from the database (:meth:`Queue.stats`).

Costs nothing when nobody listens: each call site checks :attr:`Hub.observed` (a plain
attribute) before it builds an event. An observer that raises is logged (action
``observer_failed``) and never disturbs the job or the pool that emitted the event.

A *tracer* (:class:`Tracer`) wraps work instead of hearing about it afterwards: a span around
each put, which may write trace context into the job's headers, and a span around each handler
run. :mod:`persistq_async.contrib.otel` is one.

Observers are called on the event loop's thread, synchronously: keep them quick (count, append,
set a gauge) and hand anything slow to a task of your own.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .job import Job

__all__ = [
    "Event",
    "EventKind",
    "Hub",
    "JobEvent",
    "Observer",
    "PoolEvent",
    "PutSpan",
    "Tracer",
    "add_observer",
    "add_tracer",
    "hub",
    "remove_observer",
    "remove_tracer",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class EventKind(enum.StrEnum):
    """What happened."""

    JOB_PUT = "job_put"  # a job was committed (or written in the caller's transaction)
    JOB_CLAIMED = "job_claimed"  # a delivery began; wait_seconds is its time from ready
    JOB_ACKED = "job_acked"  # done; run_seconds is the delivery's time
    JOB_NACKED = "job_nacked"  # handed back for a retry later
    JOB_DEAD = "job_dead"  # failed for good: rejected, or attempts spent
    JOB_CANCELLED = "job_cancelled"  # Queue.cancel in this process
    JOB_RESCUED = "job_rescued"  # an expired lease was taken back by this process
    JOB_TIMEOUT = "job_timeout"  # a handler ran past job_timeout (a nack follows)
    POOL_STARTED = "pool_started"
    POOL_STOPPED = "pool_stopped"
    POOL_RESTARTED = "pool_restarted"  # its claim loop crashed and is restarted


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent:
    """Something that happened to one job in this process.

    ``run_seconds`` is set on outcomes (acked, nacked, dead, timeout) of a delivery this
    process ran; ``wait_seconds`` on claims (from when the job became claimable to its claim).
    """

    kind: EventKind
    queue: str
    job_id: int
    attempts: int = 0
    pool: str | None = None
    run_seconds: float | None = None
    wait_seconds: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolEvent:
    """A pool started, stopped or was restarted."""

    kind: EventKind
    pool: str
    queue: str
    concurrency: int
    error: str | None = None


#: What observers receive.
Event = JobEvent | PoolEvent


class Observer(Protocol):
    """Called with each event, on the event loop's thread; must not block."""

    def __call__(self, event: Event, /) -> None: ...


class PutSpan(Protocol):
    """What a tracer's put span is told once the put committed."""

    def set_job_ids(self, job_ids: Sequence[int], /) -> None:
        """The ids of the jobs put (the dedupe holders' ids for deduplicated puts)."""


class Tracer(Protocol):
    """Wraps puts and handler runs in spans of its own (OpenTelemetry and the like)."""

    def put_span(
        self, queue: str, headers: MutableMapping[str, str], count: int
    ) -> AbstractContextManager[PutSpan]:
        """Entered before the jobs are written; may add trace context to ``headers``, which
        every job of the put then carries. ``count`` is the number of jobs."""

    def process_span(self, job: Job, pool: str) -> AbstractContextManager[object]:
        """Entered around one run of the handler on ``job``; sees the handler's exception."""


class Hub:
    """The process's observers and tracers; call sites read :attr:`observed` and :attr:`traced`
    before doing any work for them."""

    def __init__(self) -> None:
        self._observers: tuple[Observer, ...] = ()
        self._tracers: tuple[Tracer, ...] = ()
        #: Whether any observer listens (read on the job path, so a plain attribute).
        self.observed = False
        #: Whether any tracer is registered.
        self.traced = False

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` for every event from now on."""
        if not callable(observer):
            from .errors import ArgumentTypeError

            raise ArgumentTypeError("observer: expected a callable taking one event")
        self._observers = (*self._observers, observer)
        self.observed = True

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling ``observer``; nothing happens if it was not registered."""
        # ==, not is: a bound method is a new object at each access, and equal to itself
        self._observers = tuple(o for o in self._observers if o != observer)
        self.observed = bool(self._observers)

    def add_tracer(self, tracer: Tracer) -> None:
        """Wrap puts and handler runs in ``tracer``'s spans from now on."""
        self._tracers = (*self._tracers, tracer)
        self.traced = True

    def remove_tracer(self, tracer: Tracer) -> None:
        """Undo :meth:`add_tracer`."""
        self._tracers = tuple(t for t in self._tracers if t != tracer)
        self.traced = bool(self._tracers)

    def emit(self, event: Event) -> None:
        """Give ``event`` to every observer; one that raises is logged and skipped."""
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                logger.exception(
                    "an observer failed on %s",
                    event.kind.value,
                    extra={"action": "observer_failed", "event": event.kind.value},
                )

    @contextlib.contextmanager
    def put_spans(
        self, queue: str, headers: MutableMapping[str, str], count: int
    ) -> Iterator[Callable[[Sequence[int]], None]]:
        """Every tracer's put span, entered in order; yields a function to report the ids."""
        spans: list[PutSpan] = []
        with contextlib.ExitStack() as stack:
            for tracer in self._tracers:
                entered = _enter(stack, functools.partial(tracer.put_span, queue, headers, count))
                if entered is not None:
                    spans.append(entered)

            def report(ids: Sequence[int]) -> None:
                for span in spans:
                    try:
                        span.set_job_ids(ids)
                    except Exception:
                        logger.exception(
                            "a tracer failed", extra={"action": "observer_failed", "queue": queue}
                        )

            yield report

    def process_spans(self, job: Job, pool: str) -> AbstractContextManager[object]:
        """Every tracer's process span around one handler run."""
        if len(self._tracers) == 1:  # the usual case, on the job path: no ExitStack
            return _Guarded(functools.partial(self._tracers[0].process_span, job, pool))
        return self._all_process_spans(job, pool)

    @contextlib.contextmanager
    def _all_process_spans(self, job: Job, pool: str) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for tracer in self._tracers:
                _enter(stack, functools.partial(tracer.process_span, job, pool))
            yield


class _Guarded:
    """One tracer's context manager, entered and left so that a tracer that fails is logged
    instead of failing the handler run."""

    __slots__ = ("_make", "_manager")

    def __init__(self, make: Callable[[], AbstractContextManager[object]]) -> None:
        self._make = make
        self._manager: AbstractContextManager[object] | None = None

    def __enter__(self) -> None:
        try:
            manager = self._make()
            manager.__enter__()
        except Exception:
            logger.exception("a tracer failed to start a span", extra={"action": "observer_failed"})
            return
        self._manager = manager

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Returns None: the handler's own exception is never swallowed.
        if self._manager is not None:
            try:
                self._manager.__exit__(exc_type, exc, tb)
            except Exception:
                logger.exception(
                    "a tracer failed to end a span", extra={"action": "observer_failed"}
                )


def _enter(stack: contextlib.ExitStack, make: Callable[[], AbstractContextManager[T]]) -> T | None:
    """Enter a tracer's context manager on ``stack``, so that a tracer failing on entry or exit
    is logged instead of failing the put or the handler run."""
    try:
        manager = make()
        value = manager.__enter__()
    except Exception:
        logger.exception("a tracer failed to start a span", extra={"action": "observer_failed"})
        return None

    def leave(exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        try:
            manager.__exit__(exc_type, exc, tb)  # type: ignore[arg-type]
        except Exception:
            logger.exception("a tracer failed to end a span", extra={"action": "observer_failed"})
        # Never swallow the job's own exception, whatever the tracer said.
        return False

    stack.push(leave)
    return value


#: The process's hub; :func:`add_observer` and friends act on it.
hub = Hub()


def add_observer(observer: Observer) -> None:
    """Register ``observer`` for this process's events (see :class:`Hub.add_observer`)."""
    hub.add_observer(observer)


def remove_observer(observer: Observer) -> None:
    """Unregister ``observer``."""
    hub.remove_observer(observer)


def add_tracer(tracer: Tracer) -> None:
    """Register ``tracer`` for this process's puts and handler runs."""
    hub.add_tracer(tracer)


def remove_tracer(tracer: Tracer) -> None:
    """Unregister ``tracer``."""
    hub.remove_tracer(tracer)
