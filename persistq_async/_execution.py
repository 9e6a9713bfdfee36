"""One delivery being run by a pool's executor (:class:`Execution`), why it was stopped, and the
checks of the callables a pool runs (handler, ``on_dead`` hook)."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ._types import Handler
from .errors import ArgumentTypeError

if TYPE_CHECKING:
    from .job import Job

__all__ = ["DeadHook", "Execution", "StopReason", "check_handler", "check_on_dead"]

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
