"""The scheduler: a supervisor service that enqueues the due ticks of periodic jobs.

Every supervisor runs one, for the queues of its pools. There is no leader: each scheduler
fires whatever is due when it looks, and the database makes each tick one job (the tick's row
and its job commit together, see :mod:`persistq_async.store.schedules`), so any number of
processes on any number of machines may run it, and any of them may die at any moment.

It sleeps until the earliest next tick of its queues' schedules, and at most
:data:`MAX_WAIT` seconds, so that a schedule declared in another process, or a tick another
process was about to fire when it died, is picked up within that time. A schedule saved in this
process wakes it at once.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from .errors import PersistQError
from .monitoring import log_event
from .store.schedules import dedupe_key

if TYPE_CHECKING:
    from .queue import Queue
    from .store import JobStore

__all__ = ["MAX_WAIT", "TICK_CLEAN_INTERVAL", "Scheduler"]

logger = logging.getLogger(__name__)

#: Longest the scheduler sleeps between looks at the database.
MAX_WAIT = 1.0
#: How often tick rows past ``retention_seconds`` are deleted.
TICK_CLEAN_INTERVAL = 60.0


class Scheduler:
    """Fires due schedule ticks of the queues ``queues()`` returns (those of the pools).

    :param queues: the queues to fire schedules for, asked before every look.
    :param max_wait: longest sleep between looks, in seconds.
    """

    def __init__(
        self, queues: Callable[[], Iterable[Queue]], *, max_wait: float = MAX_WAIT
    ) -> None:
        self.queues = queues
        self.max_wait = max_wait
        self.fired_by = f"{os.getpid()}@{socket.gethostname()}"
        self._cleaned_at: dict[str, float] = {}
        self._wake = anyio.Event()

    def wake(self) -> None:
        """Look again now (a pool was added: its queue's schedules may be due)."""
        self._wake.set()

    def _by_store(self) -> list[tuple[JobStore, dict[str, int]]]:
        """The open stores, one per database, with the max_attempts option of each queue."""
        found: dict[str, tuple[JobStore, dict[str, int]]] = {}
        for queue in list(self.queues()):
            store = queue.store if not queue.closed else None
            if store is None or not store.is_open:
                continue
            entry = found.setdefault(store.where, (store, {}))
            entry[1].setdefault(queue.name, queue.options.max_attempts)
        return list(found.values())

    async def tick(self) -> float | None:
        """Fire what is due now, once per database; return the seconds until the earliest
        next tick (by the stores' clocks), or None when no schedule is waiting."""
        earliest: float | None = None
        for store, max_attempts in self._by_store():
            queues = sorted(max_attempts)
            with anyio.CancelScope(shield=True):
                due = await store.next_schedule_due(queues)
                if due is not None and due <= store.clock():
                    fired = await store.fire_schedules(max_attempts, self.fired_by)
                    for tick in fired:
                        log_event(
                            logger,
                            logging.INFO,
                            "schedule_fired",
                            f"schedule {tick.schedule}: tick enqueued as job {tick.job_id}",
                            queue=tick.queue,
                            schedule=tick.schedule,
                            job_id=tick.job_id,
                            tick=dedupe_key(tick.schedule, tick.tick_at),
                        )
                    due = await store.next_schedule_due(queues)
                if due is not None:
                    await self._maybe_clean(store)
            if due is not None:
                wait = due - store.clock()
                earliest = wait if earliest is None else min(earliest, wait)
        return earliest

    async def _maybe_clean(self, store: JobStore) -> None:
        # Not at start: a worker that restarts often (or many starting together) would each
        # add a write; the first cleaning comes an interval after the first look.
        now = anyio.current_time()
        last = self._cleaned_at.setdefault(store.where, now)
        if now - last < TICK_CLEAN_INTERVAL:
            return
        self._cleaned_at[store.where] = now
        await store.clean_ticks(store.clock() - store.options.retention_seconds)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Fire due ticks until cancelled; a failing look is logged, never fatal."""
        task_status.started()
        while True:
            self._wake = anyio.Event()
            woken = [self._wake]
            woken += [store.wakeups.schedules_event() for store, _ in self._by_store()]
            try:
                wait = await self.tick()
            except PersistQError as exc:
                log_event(
                    logger,
                    logging.WARNING,
                    "service_failed",
                    f"Scheduler failed: {exc}",
                    error=str(exc),
                )
                wait = None
            delay = self.max_wait if wait is None else max(0.0, min(wait, self.max_wait))
            await _wait_any(woken, delay)


async def _wait_any(events: list[anyio.Event], seconds: float) -> None:
    """Until one of ``events`` is set, or ``seconds`` passed."""
    if any(event.is_set() for event in events):
        return
    with anyio.move_on_after(seconds):
        async with anyio.create_task_group() as tg:

            async def wait(event: anyio.Event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            for event in events:
                tg.start_soon(wait, event)
