"""One delivery being run by a pool's executor (:class:`Execution`), why it was stopped, how its
outcome is recorded (:func:`settle`, :func:`call_on_dead`), and the checks of the callables a
pool runs (handler, ``on_dead`` hook)."""

from __future__ import annotations

import enum
import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ._types import Handler
from .errors import (
    ArgumentTypeError,
    JobAlreadyFinished,
    LeaseLost,
    PersistQError,
    Reject,
    Retry,
    SerializationError,
)
from .job import ResultTooLarge, WriteAbandoned
from .metrics import EventKind, JobEvent, hub
from .monitoring import log_event

if TYPE_CHECKING:
    from .job import Job

__all__ = [
    "ON_DEAD_TIMEOUT",
    "DeadHook",
    "Execution",
    "Settled",
    "StopReason",
    "call_on_dead",
    "check_handler",
    "check_on_dead",
    "settle",
]

# The records of outcomes are the pool's: they keep the logger name they have always had.
logger = logging.getLogger("persistq_async.pool")

#: How long an ``on_dead`` hook may run before it is cancelled (and the failure logged).
ON_DEAD_TIMEOUT = 30.0

#: ``async def on_dead(job, error)``: called in the worker after a job it ran died.
DeadHook = Callable[["Job", "str | None"], Awaitable[None]]


class StopReason(enum.StrEnum):
    """Why an executor's cancel scope was cancelled."""

    TIMEOUT = "timeout"
    CANCELLED = "cancelled"  # Queue.cancel(id), here or in another process
    LEASE_LOST = "lease lost"  # the heartbeat found the lease gone
    SHUTDOWN = "shutdown"  # the pool is stopping and the grace period ran out


@dataclass(slots=True, eq=False)
class Execution:
    """One delivery being run by a pool's executor."""

    job: Job
    scope: anyio.CancelScope
    started_at: float  # anyio time
    deadline: float  # anyio time; inf without a job timeout
    reason: StopReason | None = None
    #: Set by the watchdog when the handler ignored its cancellation: its lease is no longer
    #: extended, so another consumer gets the job once the lease runs out.
    unresponsive: bool = False
    warned: bool = field(default=False)
    #: The handler has returned (or raised): its outcome is being recorded.
    settling: bool = False
    #: Seconds this handler's own slow steps held the event loop (steps past the threshold).
    blocked_seconds: float = 0.0

    def stop(self, reason: StopReason) -> None:
        """Cancel the handler; the first reason given is the one recorded.

        Once the handler has ended (``settling``) nothing is cancelled: the scope may then be
        the one, shielded, in which the outcome is being written.
        """
        if self.reason is None:
            self.reason = reason
        if not self.settling:
            self.scope.cancel()


@dataclass(frozen=True, slots=True, kw_only=True)
class Settled:
    """What recording a delivery's outcome did."""

    #: The handler failed (raised, timed out, was rejected, or returned what cannot be stored).
    failed: bool
    #: ``(last error,)`` when the outcome made the job dead; None otherwise.
    death: tuple[str | None] | None


def check_handler(handler: Any) -> Handler:
    """A handler must be an ``async def`` function (or an object with an ``async def __call__``)."""
    if not callable(handler):
        raise ArgumentTypeError(
            f"handler: expected an async function, got {type(handler).__name__}"
        )
    target = handler if inspect.isroutine(handler) else getattr(handler, "__call__", None)  # noqa: B004
    if not inspect.iscoroutinefunction(target) and not inspect.iscoroutinefunction(handler):
        raise ArgumentTypeError(
            f"handler: {getattr(handler, '__qualname__', handler)!r} is not a coroutine function; "
            "define it with 'async def'"
        )
    return handler  # type: ignore[no-any-return]


def check_on_dead(hook: Any) -> DeadHook | None:
    """None, or an ``async def on_dead(job, error)``."""
    if hook is None:
        return None
    try:
        return check_handler(hook)  # type: ignore[return-value]
    except ArgumentTypeError as exc:
        raise ArgumentTypeError(str(exc).replace("handler:", "on_dead:", 1)) from None


async def call_on_dead(hook: DeadHook, job: Job, error: str | None, *, pool: str) -> None:
    """Await ``hook(job, error)`` after the job's death committed: whatever the hook does (it
    is logged when it raises or runs past :data:`ON_DEAD_TIMEOUT`), the job is kept."""
    with anyio.move_on_after(ON_DEAD_TIMEOUT) as scope:
        try:
            await hook(job, error)
        except Exception as exc:
            log_event(
                logger,
                logging.ERROR,
                "on_dead_failed",
                f"job {job.id}: the on_dead hook failed: {type(exc).__name__}: {exc}",
                job_id=job.id,
                queue=job.queue,
                pool=pool,
                error=f"{type(exc).__name__}: {exc}",
            )
    if scope.cancelled_caught:
        log_event(
            logger,
            logging.ERROR,
            "on_dead_failed",
            f"job {job.id}: the on_dead hook ran past {ON_DEAD_TIMEOUT}s and was cancelled",
            job_id=job.id,
            queue=job.queue,
            pool=pool,
        )


async def settle(
    execution: Execution,
    result: Any,
    error: BaseException | None,
    *,
    pool: str,
    job_timeout: float | None,
    elapsed: float,
) -> Settled:
    """Record the outcome of a delivery of pool ``pool`` whose handler ran ``elapsed`` seconds
    and returned ``result`` or raised ``error`` (or was stopped: ``execution.reason``)."""
    job = execution.job
    spent = job.attempts >= job.max_attempts  # a nack now makes the job dead
    death: tuple[str | None] | None = None
    failed = False
    reason = execution.reason
    if reason is None and execution.scope.cancelled_caught:
        reason = StopReason.TIMEOUT
    try:
        if job.finished:
            return Settled(failed=False, death=None)  # the handler acked, nacked or failed it
        if reason is StopReason.TIMEOUT:
            failed = True
            message = f"timeout: the handler ran longer than job_timeout={job_timeout}s"
            if hub.observed:
                hub.emit(
                    JobEvent(
                        kind=EventKind.JOB_TIMEOUT,
                        queue=job.queue,
                        job_id=job.id,
                        attempts=job.attempts,
                        pool=pool,
                        run_seconds=elapsed,
                        error=message,
                    )
                )
            await job.nack(error=message)
            log_event(
                logger,
                logging.WARNING,
                "job_timeout",
                f"job {job.id} timed out",
                **_fields(job, pool),
            )
            death = (message,) if spent else None
        elif reason in (StopReason.CANCELLED, StopReason.LEASE_LOST):
            log_event(
                logger,
                logging.INFO,
                "job_stopped",
                f"job {job.id} stopped: {reason.value}",
                **_fields(job, pool),
            )
        elif reason is StopReason.SHUTDOWN:
            await job.release()
            log_event(
                logger,
                logging.INFO,
                "job_released",
                f"job {job.id} released at shutdown",
                **_fields(job, pool),
            )
        elif isinstance(error, Retry):
            message = "retry requested by the handler"
            await job.nack(delay=error.delay, error=message)
            log_event(
                logger,
                logging.INFO,
                "job_nacked",
                f"job {job.id} retry requested",
                **_fields(job, pool),
            )
            death = (message,) if spent else None
        elif isinstance(error, Reject):
            failed = True
            message = f"rejected: {error.reason}"
            await job.fail(error=message)
            log_event(
                logger, logging.INFO, "job_failed", f"job {job.id} rejected", **_fields(job, pool)
            )
            death = (message,)
        elif error is not None:
            failed = True
            text = "".join(traceback.format_exception(error))
            await job.nack(error=text)
            log_event(
                logger,
                logging.INFO,
                "job_nacked",
                f"job {job.id} failed in {elapsed:.3f}s: {type(error).__name__}: {error}",
                error=f"{type(error).__name__}: {error}",
                **_fields(job, pool),
            )
            death = (text,) if spent else None
        else:
            try:
                await job.ack(result)
            except ResultTooLarge as exc:
                # The same handler would return the same again: dead now, not retried.
                failed = True
                await job.fail(error=str(exc))
                log_event(
                    logger,
                    logging.WARNING,
                    "result_unstorable",
                    f"job {job.id}: {exc}",
                    **_fields(job, pool),
                )
                death = (str(exc),)
            except SerializationError as exc:
                failed = True
                message = f"the handler's result cannot be stored: {exc}"
                await job.nack(error=message)
                log_event(
                    logger,
                    logging.WARNING,
                    "job_nacked",
                    f"job {job.id}: {exc}",
                    **_fields(job, pool),
                )
                death = (message,) if spent else None
            else:
                if logger.isEnabledFor(logging.INFO):  # the common outcome: no record, no work
                    log_event(
                        logger,
                        logging.INFO,
                        "job_acked",
                        f"job {job.id} done in {elapsed:.3f}s",
                        **_fields(job, pool),
                    )
    except (LeaseLost, JobAlreadyFinished) as exc:
        log_event(
            logger,
            logging.WARNING,
            "outcome_refused",
            f"job {job.id}: outcome not applied: {exc}",
            **_fields(job, pool),
        )
    except SerializationError as exc:
        log_event(
            logger,
            logging.WARNING,
            "result_unstorable",
            f"job {job.id}: {exc}",
            **_fields(job, pool),
        )
    except WriteAbandoned:
        pass  # retried until the lease ran out, and logged as write_abandoned
    except PersistQError as exc:
        # The database failed or the queue closed: the lease will expire and the job be
        # rescued, so nothing is lost; say so rather than crash the pool.
        log_event(
            logger,
            logging.ERROR,
            "outcome_failed",
            f"job {job.id}: recording the outcome failed ({exc}); the lease will expire",
            **_fields(job, pool),
        )
    return Settled(failed=failed, death=death)


def _fields(job: Job, pool: str) -> dict[str, Any]:
    """The fields of an outcome's log record."""
    return {"job_id": job.id, "queue": job.queue, "pool": pool, "attempts": job.attempts}
