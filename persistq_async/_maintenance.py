"""The supervisor's small services: heartbeat, watchdog, rescuer and cleaner.

Each is a class with a ``tick()`` that does one round of its duty (so a test can drive it), and a
``run()`` that ticks forever, started with ``await task_group.start(service.run)``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from .errors import JobAlreadyFinished, LeaseLost, PersistQError
from .job import WriteAbandoned
from .monitoring import log_event
from .pool import DEFAULT_BLOCK_THRESHOLD, Execution, StopReason

if TYPE_CHECKING:
    from .pool import Pool
    from .queue import Queue

__all__ = ["Cleaner", "Heartbeat", "Rescuer", "Service", "Watchdog"]

logger = logging.getLogger(__name__)

#: Seconds over which :attr:`Watchdog.recent_max_lag` is taken.
LAG_WINDOW = 60.0

Pools = Callable[[], Iterable["Pool"]]


class Service:
    """Runs :meth:`tick` every ``interval`` seconds; a failing tick is logged, never fatal."""

    interval: float = 1.0
    _rescheduled: anyio.Event | None = None

    async def tick(self) -> None:
        """One round of the service's duty."""
        raise NotImplementedError

    def set_interval(self, interval: float) -> None:
        """Tick every ``interval`` seconds from now on, the wait in progress included."""
        self.interval = interval
        if self._rescheduled is not None:
            self._rescheduled.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick until cancelled."""
        task_status.started()
        last = anyio.current_time()
        while True:
            # A shorter interval set while waiting (a pool with short leases was added) must
            # take effect now, not after the longer wait already begun.
            self._rescheduled = anyio.Event()
            with anyio.move_on_after(max(0.0, last + self.interval - anyio.current_time())):
                await self._rescheduled.wait()
            if anyio.current_time() < last + self.interval:
                continue
            last = anyio.current_time()
            try:
                await self.tick()
            except PersistQError as exc:
                logger.warning(
                    "%s failed: %s", type(self).__name__, exc, extra={"action": "service_failed"}
                )


class Heartbeat(Service):
    """Extends the leases of running handlers, so a long job is not re-delivered while it runs.

    A handler whose lease is gone (expired and re-taken, or the job was cancelled in another
    process) is cancelled. A handler the watchdog found unresponsive is not extended: its lease
    runs out honestly and another consumer gets the job.
    """

    def __init__(self, pools: Pools, *, interval: float) -> None:
        self.pools = pools
        self.interval = interval

    async def tick(self) -> None:
        """Extend every healthy running lease by its queue's ``lease_seconds``."""
        beats = [
            (execution, pool.queue.options.lease_seconds)
            for pool in self.pools()
            for execution in list(pool.executions.values())
            if not execution.unresponsive and execution.reason is None and not execution.settling
        ]
        if not beats:
            return
        async with anyio.create_task_group() as tg:
            for execution, lease in beats:
                tg.start_soon(self._beat, execution, lease)

    async def _beat(self, execution: Execution, lease: float) -> None:
        job = execution.job
        if job.finished or execution.settling:
            return
        try:
            with anyio.CancelScope(shield=True):
                await job.extend(lease)
        except LeaseLost:
            if job.finished or execution.settling:
                return  # its outcome was recorded while the extension waited: not a lost lease
            log_event(
                logger,
                logging.WARNING,
                "lease_lost",
                f"job {job.id}: lease lost (cancelled, or expired and re-taken); "
                "stopping its handler",
                job_id=job.id,
                queue=job.queue,
            )
            execution.stop(StopReason.LEASE_LOST)
        except (JobAlreadyFinished, WriteAbandoned):
            pass  # WriteAbandoned: retried until the lease ran out, logged as write_abandoned
        except PersistQError as exc:
            # Caught here, not by run(): in the tick's task group it would reach run() wrapped
            # in an ExceptionGroup and take the supervisor down. The next beat tries again; a
            # lease that runs out first is rescued, and the job runs again (at-least-once).
            log_event(
                logger,
                logging.WARNING,
                "service_failed",
                f"job {job.id}: extending its lease failed: {exc}",
                job_id=job.id,
                queue=job.queue,
            )


class Watchdog(Service):
    """Measures the event loop's lag and notices handlers that ignore cancellation.

    Lag is how late this service's own tick is: the loop was held by *something* meanwhile.
    It is kept in :attr:`lag` (a gauge) and, past ``lag_threshold``, logged as ``loop_lag``
    naming no job: a late tick cannot tell who held the loop. A handler is named only by its own
    timed steps (``job_blocking``, logged by its pool), and the lag warning says how much of the
    lag those steps account for.

    Timeouts themselves are each executor's cancel-scope deadline. A handler still running
    ``grace`` seconds after it should have stopped is blocking the loop or swallowing
    cancellation: it is logged by job and marked unresponsive, so its lease is no longer extended.
    """

    def __init__(
        self,
        pools: Pools,
        *,
        interval: float = 0.25,
        grace: float = 1.0,
        lag_threshold: float = DEFAULT_BLOCK_THRESHOLD,
    ) -> None:
        self.pools = pools
        self.interval = interval
        self.grace = grace
        self.lag_threshold = lag_threshold
        #: Seconds the last tick came late (0.0 when on time).
        self.lag = 0.0
        #: The largest lag seen so far.
        self.max_lag = 0.0
        # (time.monotonic(), lag) of the late ticks of the last LAG_WINDOW seconds.
        self._late: deque[tuple[float, float]] = deque()
        self._last = math.nan
        self._blocked = 0.0

    @property
    def recent_max_lag(self) -> float:
        """The largest lag of the last :data:`LAG_WINDOW` seconds (a scrape every 15 s or so
        would miss a spike that :attr:`lag` shows for one tick only)."""
        horizon = time.monotonic() - LAG_WINDOW
        while self._late and self._late[0][0] < horizon:
            self._late.popleft()
        return max((lag for _, lag in self._late), default=0.0)

    async def tick(self) -> None:
        """Measure loop lag and check overdue handlers once."""
        now = anyio.current_time()
        lag = 0.0 if math.isnan(self._last) else max(0.0, now - self._last - self.interval)
        self._last = now
        pools = list(self.pools())
        blocked = sum(p.blocked_seconds for p in pools)
        by_handlers, self._blocked = max(0.0, blocked - self._blocked), blocked
        self.lag = lag
        self.max_lag = max(self.max_lag, lag)
        if lag > 0:
            self._late.append((time.monotonic(), lag))
            self.recent_max_lag  # noqa: B018 - drops the entries that left the window
        if lag > self.lag_threshold:
            cause = (
                f"handler steps reported as job_blocking account for {by_handlers:.1f}s of it"
                if by_handlers > 0
                else "no handler held it: other code in this process (or an overloaded machine)"
            )
            log_event(
                logger,
                logging.WARNING,
                "loop_lag",
                f"the event loop was {lag:.1f}s late; {cause}",
                lag_seconds=round(lag, 3),
                handler_seconds=round(by_handlers, 3),
            )
        for pool in pools:
            for execution in list(pool.executions.values()):
                overdue = now - execution.deadline
                if overdue > self.grace and not execution.warned:
                    execution.warned = True
                    execution.unresponsive = True
                    log_event(
                        logger,
                        logging.WARNING,
                        "job_blocking",
                        f"job {execution.job.id} ignored its timeout for {overdue:.1f}s (blocking "
                        "code or swallowed cancellation); its lease will not be extended",
                        job_id=execution.job.id,
                        queue=execution.job.queue,
                        pool=pool.name,
                    )


class Rescuer(Service):
    """Moves jobs whose lease expired (a crashed process anywhere) back to queued, or to dead."""

    def __init__(self, queues: Callable[[], Iterable[Queue]], *, interval: float) -> None:
        self.queues = queues
        self.interval = interval

    async def tick(self) -> None:
        """Rescue once per database."""
        seen: set[str] = set()
        for queue in list(self.queues()):
            store = queue.store
            if store.where in seen or not store.is_open:
                continue
            seen.add(store.where)
            with anyio.CancelScope(shield=True):
                await store.rescue()


class Cleaner(Service):
    """Deletes finished jobs older than each queue's ``retention_seconds``."""

    def __init__(self, queues: Callable[[], Iterable[Queue]], *, interval: float = 60.0) -> None:
        self.queues = queues
        self.interval = interval

    async def tick(self) -> None:
        """Clean once per queue."""
        for queue in list(self.queues()):
            if queue.store.is_open:
                with anyio.CancelScope(shield=True):
                    await queue.clean()
