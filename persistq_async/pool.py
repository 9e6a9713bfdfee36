"""Pool: a claim loop and the executors that run a handler under a concurrency limit.

The claim loop leases only as many jobs as the pool has free slots, in one statement, so no job
waits leased in a local buffer while another process could run it. The jobs it leases go to the
pool's *slots*: long-lived tasks, one per unit of concurrency, each taking one delivery at a
time from a local hand-off (a parked slot's future, else a short deque), so a delivery costs no
task of its own. Each delivery runs in its own cancel scope: the job timeout is that scope's
deadline, and cancelling it (timeout, ``Queue.cancel``, a lost lease, shutdown) leaves the job
consistent: nacked, already cancelled, refused, or handed back, each write shielded from the
cancellation that caused it. When nothing cancelled the handler, its outcome is written in that
same scope, turned shielded and bounded, rather than in two more.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from types import CoroutineType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._checks import check_float, check_int, check_name
from ._crash import crash_point
from ._execution import (
    ON_DEAD_TIMEOUT,
    DeadHook,
    Execution,
    StopReason,
    call_on_dead,
    check_handler,
    check_on_dead,
    settle,
)
from ._steps import timed_steps
from ._types import Handler
from .errors import SupervisorError
from .metrics import EventKind, PoolEvent, hub
from .monitoring import log_event
from .queue import Watch

if TYPE_CHECKING:
    from .job import Job
    from .queue import Queue

__all__ = [
    "DEFAULT_BLOCK_THRESHOLD",
    "ON_DEAD_TIMEOUT",
    "DeadHook",
    "Execution",
    "Pool",
    "StopReason",
    "check_handler",
    "check_on_dead",
]

logger = logging.getLogger(__name__)

#: How long an outcome write may take once its handler finished (it is shielded from cancel),
#: beyond the ``lease_seconds`` its retries may last.
OUTCOME_TIMEOUT = 30.0
#: Seconds one step of a handler (from one ``await`` to the next) may hold the event loop before
#: the handler is named as calling blocking code.
DEFAULT_BLOCK_THRESHOLD = 0.5


class Pool:
    """Runs ``handler`` on the jobs of one queue, at most ``concurrency`` at a time.

    Made by :meth:`Supervisor.add`; read its counters through :attr:`Supervisor.pools`.
    """

    def __init__(
        self,
        queue: Queue,
        handler: Handler,
        *,
        name: str,
        concurrency: int,
        job_timeout: float | None,
        on_crash: Callable[[Pool, BaseException], Awaitable[None]],
        block_threshold: float = DEFAULT_BLOCK_THRESHOLD,
        on_dead: DeadHook | None = None,
    ) -> None:
        #: The pool's unique name within its supervisor.
        self.name: str = check_name("name", name)
        #: The queue it consumes.
        self.queue: Queue = queue
        self.handler = check_handler(handler)
        self._concurrency = check_int("concurrency", concurrency, minimum=1)
        #: Seconds a handler may run before it is cancelled and its job nacked; None: no limit.
        self.job_timeout: float | None = (
            None if job_timeout is None else check_float("job_timeout", job_timeout, positive=True)
        )
        #: Called with the job and its last error after a job this pool ran died.
        self.on_dead: DeadHook | None = check_on_dead(on_dead)
        #: Jobs this pool finished, whatever the outcome; counted just after the outcome
        #: commits, so a ``join()`` woken by that commit may return a moment before.
        self.processed: int = 0
        #: Jobs whose handler raised or timed out.
        self.failed: int = 0
        #: Times the claim loop crashed and was restarted.
        self.restarts: int = 0
        #: A handler step holding the event loop longer than this many seconds is reported.
        self.block_threshold: float = check_float("block_threshold", block_threshold, positive=True)
        #: Seconds the handlers' own slow steps held the event loop, in total.
        self.blocked_seconds: float = 0.0
        self.executions: dict[int, Execution] = {}
        # Handlers running now (deliveries handed to the slots included); an execution
        # recording its outcome no longer holds a slot, so the refill claim can share a
        # transaction with the acks that freed the slots.
        self._handlers_running = 0
        # Deliveries claimed while no slot was parked (every slot was still recording the
        # outcome of its last one); the next slot to come free takes the oldest.
        self._pending: deque[Execution] = deque()
        # The futures of the slots waiting for a delivery, the last parked on top.
        self._parked: list[asyncio.Future[Execution | None]] = []
        # Slot tasks alive (started, not yet returned); more than ``concurrency`` only while
        # a smaller limit waits for busy slots to finish their delivery.
        self._slots = 0
        # Slots return once nothing is pending: set when the pool has drained.
        self._closing = False
        # Set when a slot frees up, and by work notifications of the queue: the claim loop
        # waits on this one event rather than on one task per thing it waits for.
        self._wakeup = anyio.Event()
        self._work_listener = self._on_work
        self._idle = anyio.Event()
        self._idle.set()
        # anyio's clock and cancel scopes; once running, the event loop's own clock and the
        # running backend's scope class, looked up once rather than on every delivery.
        self._time: Callable[[], float] = anyio.current_time
        self._scope: Callable[..., anyio.CancelScope] = anyio.CancelScope
        self._claim_scope = anyio.CancelScope()
        self._stopping = False
        self._stopped = anyio.Event()
        self._on_crash = on_crash
        self._tg: TaskGroup | None = None
        #: Set when the supervisor gave up on this pool; raised once the pool has drained.
        self._fatal: SupervisorError | None = None

    def __repr__(self) -> str:
        return (
            f"<Pool {self.name!r} queue={self.queue.name!r} active={self.active}/"
            f"{self.concurrency} processed={self.processed} failed={self.failed}>"
        )

    @property
    def concurrency(self) -> int:
        """Most handlers running at once."""
        return self._concurrency

    @property
    def active(self) -> int:
        """Handlers running now."""
        return self._handlers_running

    @property
    def stopped(self) -> bool:
        """Whether the pool has stopped for good."""
        return self._stopped.is_set()

    def resize(self, concurrency: int) -> None:
        """Change the limit; running handlers are never cancelled by a smaller one."""
        self._concurrency = check_int("concurrency", concurrency, minimum=1)
        if self._tg is not None and not self._closing:
            self._add_slots()
            # Parked slots beyond the new limit return now; busy ones after their delivery.
            while self._slots > self._concurrency and self._parked:
                self._retire(self._parked.pop())
        self._wake_claimer()
        log_event(
            logger,
            logging.INFO,
            "pool_resized",
            f"pool {self.name} resized to {concurrency}",
            pool=self.name,
            concurrency=concurrency,
        )

    def _free_slots(self) -> int:
        return max(0, self._concurrency - self._handlers_running)

    def _wake_claimer(self) -> None:
        self._wakeup.set()

    def _arm(self) -> anyio.Event:
        """The claim loop's wake-up event, fresh unless unset; armed before each look at the
        queue, so whatever happens after the look sets it."""
        if self._wakeup.is_set():
            self._wakeup = anyio.Event()
        return self._wakeup

    def _on_work(self, queue: str) -> None:
        if queue == self.queue.name or queue == "*":
            self._wakeup.set()

    # ------------------------------------------------------------------ running

    async def run(
        self, grace: float, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Claim and execute until :meth:`stop`; then drain for ``grace`` seconds and cancel."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._time = asyncio.get_running_loop().time
                self._scope = type(anyio.CancelScope())
                self._grace = grace
                listener = self._on_cancelled
                store = self.queue.store
                store.add_cancel_listener(listener)
                store.wakeups.add_work_listener(self._work_listener)
                try:
                    log_event(
                        logger,
                        logging.INFO,
                        "pool_started",
                        f"pool {self.name} started",
                        pool=self.name,
                    )
                    if hub.observed:
                        self.emit(EventKind.POOL_STARTED)
                    self._add_slots()
                    task_status.started()
                    with self._claim_scope:
                        await self._claim_forever()
                    await self._drain(self._grace)
                finally:
                    # The store itself: the queue may have been closed first (a Queue
                    # entered after, so left before, the Supervisor).
                    store.remove_cancel_listener(listener)
                    store.wakeups.remove_work_listener(self._work_listener)
        finally:
            if self._pending:
                await self._hand_back_pending()
            self._stopped.set()
            log_event(
                logger, logging.INFO, "pool_stopped", f"pool {self.name} stopped", pool=self.name
            )
            if hub.observed:
                self.emit(EventKind.POOL_STOPPED)
        if self._fatal is not None:
            # Raised here, outside the pool's own task group, so it is not wrapped twice.
            raise self._fatal

    def emit(self, kind: EventKind, error: str | None = None) -> None:
        """Tell the observers about this pool (call only when ``hub.observed``)."""
        hub.emit(
            PoolEvent(
                kind=kind,
                pool=self.name,
                queue=self.queue.name,
                concurrency=self._concurrency,
                error=error,
            )
        )

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming now; running handlers get ``grace`` seconds, then are cancelled."""
        if grace is not None:
            self._grace = grace
        self._stopping = True
        self._claim_scope.cancel()

    def cancel_running(self) -> None:
        """Cancel every running handler now (their leases are handed back)."""
        for execution in list(self.executions.values()):
            execution.stop(StopReason.SHUTDOWN)

    async def wait_stopped(self) -> None:
        """Until :meth:`run` has returned."""
        await self._stopped.wait()

    async def _drain(self, grace: float) -> None:
        with anyio.move_on_after(grace):
            await self._idle.wait()
        self.cancel_running()
        # The slots finish what they hold (deliveries not started yet are handed back, being
        # stopped), then return; the parked ones return now.
        self._closing = True
        while self._parked:
            self._retire(self._parked.pop())

    async def _claim_forever(self) -> None:
        while not self._stopping:
            try:
                await self._claim_loop()
            except Exception as exc:
                self.restarts += 1
                try:
                    # Raises SupervisorError when restarts exceed the supervisor's intensity.
                    await self._on_crash(self, exc)
                except SupervisorError as fatal:
                    # Stop claiming and drain like any stop; run() raises it afterwards.
                    self._fatal = fatal
                    self._stopping = True
                    return

    async def _claim_loop(self) -> None:
        queue = self.queue
        store = queue.store
        while True:
            # Armed before the look: a slot freed or work notified after it wakes the wait.
            wakeup = self._arm()
            free = self._free_slots()
            if free == 0:
                await wakeup.wait()
                continue
            token = store.known_change_token()
            jobs, next_due_at = await queue.claim(free)
            for job in jobs:
                self._start(job)
            if len(jobs) == free:
                continue
            # Until new work may be claimable, a slot frees up, or another process committed.
            await queue.wait(Watch(event=wakeup, token=token), next_due_at=next_due_at)

    def _start(self, job: Job) -> None:
        now = self._time()
        timeout = self.job_timeout
        deadline = math.inf if timeout is None else now + timeout
        execution = Execution(
            job=job, scope=self._scope(deadline=deadline), started_at=now, deadline=deadline
        )
        self.executions[job.id] = execution
        self._handlers_running += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        parked = self._parked
        while parked:
            slot = parked.pop()
            if not slot.done():  # a cancelled slot may not have unparked itself yet
                slot.set_result(execution)
                return
        self._pending.append(execution)

    # ------------------------------------------------------------------ slots

    def _add_slots(self) -> None:
        """Start slot tasks up to ``concurrency``."""
        assert self._tg is not None
        while self._slots < self._concurrency:
            self._slots += 1
            self._tg.start_soon(self._slot, name=f"persistq pool {self.name} slot")

    def _retire(self, parked: asyncio.Future[Execution | None]) -> None:
        if not parked.done():
            parked.set_result(None)
            self._slots -= 1

    async def _slot(self) -> None:
        """One slot: run deliveries one after the other until retired or cancelled."""
        loop = asyncio.get_running_loop()
        pending = self._pending
        while True:
            if pending:
                execution = pending.popleft()
            elif self._closing or self._slots > self._concurrency:
                self._slots -= 1
                return
            else:
                parked: asyncio.Future[Execution | None] = loop.create_future()
                self._parked.append(parked)
                try:
                    handed = await parked
                except BaseException:
                    self._unpark(parked)
                    raise
                if handed is None:  # retired (and counted) by _retire
                    return
                execution = handed
            await self._execute(execution)

    def _unpark(self, parked: asyncio.Future[Execution | None]) -> None:
        """A parked slot is being cancelled (its task group is going down)."""
        if parked in self._parked:
            self._parked.remove(parked)
        elif parked.done() and not parked.cancelled():
            handed = parked.result()
            if handed is None:
                return  # retired in the same loop iteration: _retire counted it
            # Handed over in the same loop iteration as the cancellation: the next slot takes
            # it (and hands it back, the pool stopping), never lost in between.
            self._pending.appendleft(handed)
        self._slots -= 1

    async def _hand_back_pending(self) -> None:
        """The pool's task group was cancelled with deliveries no slot took: hand their leases
        back (shielded and bounded, like any outcome) rather than leave them to expire."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._outcome_bound()):
            while self._pending:
                execution = self._pending.popleft()
                execution.settling = True
                execution.reason = StopReason.SHUTDOWN
                self._handlers_running -= 1
                await self._settle_logged(execution, None, None)
                if self.executions.get(execution.job.id) is execution:
                    del self.executions[execution.job.id]

    def _on_cancelled(self, queue: str, job_id: int) -> None:
        if queue == self.queue.name:
            execution = self.executions.get(job_id)
            if execution is not None:
                execution.stop(StopReason.CANCELLED)

    async def _execute(self, execution: Execution) -> None:
        job = execution.job
        scope = execution.scope
        error: BaseException | None = None
        result: Any = None
        returned = False
        settled = False
        death: tuple[str | None] | None = None
        try:
            with scope:
                try:
                    crash_point("mid-handler")
                    running: Awaitable[Any] = self.handler(job)
                    # Always a coroutine for an async def handler (the exact type test first:
                    # the ABC's isinstance costs more than the rest of this line).
                    if type(running) is CoroutineType or isinstance(running, Coroutine):
                        running = timed_steps(
                            running, self.block_threshold, self._blocked, execution
                        )
                    if hub.traced:
                        with hub.process_spans(job, self.name):
                            result = await running
                    else:
                        result = await running
                    returned = True
                except Exception as exc:
                    error = exc
                if not scope.cancel_called:
                    # The handler ended by itself and nothing stopped it: record the outcome
                    # in this same scope, now shielded and bounded (the slow path below takes
                    # a scope of its own for that).
                    self._handler_done(execution)
                    scope.shield = True
                    scope.deadline = self._time() + self._outcome_bound()
                    settled = True
                    death = await self._settle_logged(execution, result, error)
        finally:
            if not settled:
                self._handler_done(execution)
                if (
                    not returned
                    and error is None
                    and execution.reason is None
                    and not scope.cancelled_caught
                ):
                    # Cancelled from outside (the supervisor's task group is going down): the
                    # handler did not finish, so hand the lease back rather than ack it.
                    execution.reason = StopReason.SHUTDOWN
                # Shielded and bounded: the outcome must be recorded even when the pool is
                # being cancelled, and must not hold shutdown hostage if the database is gone.
                with self._scope(shield=True, deadline=self._time() + self._outcome_bound()):
                    death = await self._settle_logged(execution, result, error)
            if death is not None and self.on_dead is not None:
                await call_on_dead(self.on_dead, job, death[0], pool=self.name)
            # A job nacked for now (or, once its lease ran out, the job of a handler that
            # ignored its cancellation) can be delivered to this pool again while this
            # delivery is still ending: the entry is then the newer delivery's.
            executions = self.executions
            if executions.get(job.id) is execution:
                del executions[job.id]
            self.processed += 1
            if not executions:
                self._idle.set()

    def _outcome_bound(self) -> float:
        # The bound also covers retries of a write that fails on a transient error, which go
        # on while the lease lasts.
        return OUTCOME_TIMEOUT + self.queue.options.lease_seconds

    def _handler_done(self, execution: Execution) -> None:
        """The handler has ended: its slot counts as free for the next claim."""
        execution.settling = True
        self._handlers_running -= 1
        self._wakeup.set()

    async def _settle_logged(
        self, execution: Execution, result: Any, error: BaseException | None
    ) -> tuple[str | None] | None:
        try:
            settled = await settle(
                execution,
                result,
                error,
                pool=self.name,
                job_timeout=self.job_timeout,
                elapsed=self._time() - execution.started_at,
            )
        except Exception:  # an executor must never take its pool down
            job = execution.job
            logger.exception(
                "job %d: recording the outcome failed",
                job.id,
                extra={"action": "outcome_failed", "job_id": job.id, "queue": job.queue},
            )
            return None
        if settled.failed:
            self.failed += 1
        return settled.death

    def _blocked(self, execution: Execution, seconds: float) -> None:
        """One step of this execution's handler held the event loop for ``seconds``."""
        first = execution.blocked_seconds == 0.0
        execution.blocked_seconds += seconds
        self.blocked_seconds += seconds
        if first:  # once per delivery: a handler blocking in a loop must not flood the log
            job = execution.job
            log_event(
                logger,
                logging.WARNING,
                "job_blocking",
                f"job {job.id}: its handler held the event loop for {seconds:.2f}s in one step "
                "(blocking code; run it with anyio.to_thread.run_sync)",
                job_id=job.id,
                queue=job.queue,
                pool=self.name,
                blocked_seconds=round(seconds, 3),
            )
