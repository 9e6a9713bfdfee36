"""The alert evaluator: a supervisor service, active in one process per database.

Every supervisor with alerting runs one; at each tick it tries to take (or renew) the database's
evaluator lease. The holder measures every rule, moves each along its states (:func:`advance`),
and saves the states in the transaction that renews its lease, so that only a process that
still held the lease can record a transition; it sends the alerts after that commit. Another
process takes the lease once it has expired (the holder died or hung for ``lease_seconds``) and
goes on from the saved states: what fired does not fire again, and a pending rule's ``for``
keeps counting.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .._maintenance import Service
from ..errors import PersistQError
from ..monitoring import log_event
from ..store.alerts import AlertStore, SavedState
from .config import Alerting
from .rules import INACTIVE, RESTARTS_KEPT_SECONDS, Alert, RuleState, advance, make_alert
from .sinks import deliver, log_alert

if TYPE_CHECKING:
    from ..queue import Queue
    from ..store import JobStore

__all__ = ["LEASE_NAME", "AlertEvaluator"]

logger = logging.getLogger("persistq_async.alerts")

#: The lease row's name in ``persistq_alert_lease``.
LEASE_NAME = "alerts"
#: Restarts older than this are deleted (no pool-restarts window may be longer).
RESTARTS_RETENTION = RESTARTS_KEPT_SECONDS
#: Seconds between two prunings of old restarts.
PRUNE_INTERVAL = 3_600.0
#: Longest the lease's release may take at shutdown.
RELEASE_TIMEOUT = 5.0
#: Longest saving the rules' states may take once begun (it is shielded from cancellation).
SAVE_TIMEOUT = 30.0
#: Seconds the sinks' deliveries in progress get when the evaluator stops.
SHUTDOWN_GRACE = 5.0

#: How many live supervisors run a pool on a queue (the worker registry), or None.
LiveWorkers = Callable[["Queue", str], Awaitable[int | None]]


async def registry_live_workers(queue: Queue, name: str) -> int:
    """Live supervisors with a pool on the queue ``name``, from the worker registry."""
    return sum(1 for w in await queue.workers() if w.alive and name in w.queues)


class _Signals:
    """What the rules read in one evaluation of one database, each read made once."""

    def __init__(self, queue: Queue, now: float, live_workers: LiveWorkers) -> None:
        self.now = now
        self._queue = queue
        self._store = AlertStore(queue.store)
        self._live_workers = live_workers
        self._cache: dict[tuple[Any, ...], Any] = {}

    async def _once(self, key: tuple[Any, ...], read: Callable[[], Awaitable[Any]]) -> Any:
        if key not in self._cache:
            self._cache[key] = await read()
        return self._cache[key]

    async def lag(self, queue: str) -> float:
        run_at = await self._once(
            ("lag", queue), lambda: self._store.oldest_ready_run_at(queue, self.now)
        )
        return 0.0 if run_at is None else max(0.0, self.now - run_at)

    async def dead_since(self, queue: str, since: float) -> int:
        key = ("dead", queue, since)
        return int(await self._once(key, lambda: self._store.count_dead_since(queue, since)))

    async def outcomes_since(self, queue: str, since: float) -> dict[str, int]:
        key = ("outcomes", queue, since)
        found: dict[str, int] = await self._once(
            key, lambda: self._store.outcomes_since(queue, since)
        )
        return found

    async def restarts_since(self, since: float, pool: str | None, queue: str | None) -> int:
        key = ("restarts", since, pool, queue)
        return int(
            await self._once(key, lambda: self._store.count_restarts_since(since, pool, queue))
        )

    async def live_workers(self, queue: str) -> int | None:
        live = self._live_workers
        found: int | None = await self._once(("workers", queue), lambda: live(self._queue, queue))
        return found

    async def wal_bytes(self) -> int | None:
        backend = self._queue.store.backend
        found: int | None = await self._once(
            ("wal",), lambda: anyio.to_thread.run_sync(backend.wal_bytes)
        )
        return found


def _saved(rule: str, state: RuleState) -> SavedState:
    assert state.active_since is not None
    return SavedState(
        rule=rule,
        state=state.state,
        active_since=state.active_since,
        fired_at=state.fired_at,
        clear_since=state.clear_since,
        value=state.value,
    )


def _restored(saved: SavedState) -> RuleState:
    state = saved.state if saved.state in ("pending", "firing") else "pending"
    return RuleState(
        state=state,  # type: ignore[arg-type]
        active_since=saved.active_since,
        fired_at=saved.fired_at,
        clear_since=saved.clear_since,
        value=saved.value,
    )


class AlertEvaluator(Service):
    """Evaluates ``alerting``'s rules on the databases of ``queues()``, where this process holds
    the evaluator lease.

    :param alerting: the rules, sinks, interval and lease length.
    :param queues: the open queues whose databases to watch (one evaluation per database).
    :param live_workers: counts live supervisors with a pool on a queue (``no_worker`` rules);
        by default from the worker registry (:meth:`Queue.workers`).
    :param before_tick: called at the start of every tick (the supervisor records its restarts).
    :param owner: this process's name in the lease; host, pid and a random part by default.
    """

    def __init__(
        self,
        alerting: Alerting,
        queues: Callable[[], Iterable[Queue]],
        *,
        live_workers: LiveWorkers | None = None,
        before_tick: Callable[[], Awaitable[None]] | None = None,
        owner: str | None = None,
    ) -> None:
        self.alerting = alerting
        self.queues = queues
        self.interval = alerting.interval
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._live_workers = registry_live_workers if live_workers is None else live_workers
        self._before_tick = before_tick
        self._held: dict[str, JobStore] = {}
        self._pruned: dict[str, float] = {}
        self._deliveries: TaskGroup | None = None
        self._sending: set[anyio.CancelScope] = set()

    @property
    def leading(self) -> bool:
        """Whether this process held the evaluator lease of some database at its last tick."""
        return bool(self._held)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Evaluate every ``interval`` seconds until cancelled; then give the leases up."""
        try:
            async with anyio.create_task_group() as deliveries:
                self._deliveries = deliveries
                try:
                    await Service.run(self, task_status=task_status)
                finally:
                    # Deliveries under way get a short grace, then the task group cancels them.
                    end = anyio.current_time() + SHUTDOWN_GRACE
                    for scope in self._sending:
                        scope.deadline = min(scope.deadline, end)
        finally:
            self._deliveries = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_TIMEOUT):
                await self.release()

    async def release(self) -> None:
        """Give up every lease held, so another process takes over at its next tick."""
        for where in list(self._held):
            await self._release_one(where)

    async def _release_one(self, where: str) -> None:
        store = self._held.pop(where)
        if store.is_open:
            try:
                await AlertStore(store).release(LEASE_NAME, self.owner)
            except PersistQError as exc:  # it expires by itself
                logger.debug(
                    "releasing the alert lease failed: %s", exc, extra={"action": "service_failed"}
                )

    async def tick(self) -> None:
        """One evaluation of each database (where this process holds or takes the lease)."""
        if self._before_tick is not None:
            await self._before_tick()
        seen: set[str] = set()
        for queue in list(self.queues()):
            if queue.closed or not queue.store.is_open or queue.store.where in seen:
                continue
            seen.add(queue.store.where)
            await self._evaluate(queue)
        for where in [w for w in self._held if w not in seen]:
            # No pool of this supervisor uses that database any more: let another evaluate it.
            await self._release_one(where)

    async def _evaluate(self, queue: Queue) -> None:
        store = queue.store
        alerts = AlertStore(store)
        lease = self.alerting.lease
        saved = await alerts.acquire(LEASE_NAME, self.owner, lease)
        if saved is None:
            self._lost(store.where)
            return
        if store.where not in self._held:
            log_event(
                logger,
                logging.INFO,
                "alert_lease_taken",
                f"this process evaluates the alert rules of {store.where}",
                owner=self.owner,
            )
            self._held[store.where] = store
        before = {s.rule: _restored(s) for s in saved}
        now = store.clock()
        signals = _Signals(queue, now, self._live_workers)
        after: dict[str, RuleState] = {}
        alerts_out: list[Alert] = []
        for rule in self.alerting.rules:
            state = before.get(rule.name, INACTIVE)
            try:
                value = await rule.measure(signals)
            except Exception as exc:  # one rule's failure must not stop the others, nor the worker
                after[rule.name] = state  # unknown this time: no transition either way
                log_event(
                    logger,
                    logging.WARNING,
                    "service_failed",
                    f"alert rule {rule.name}: measuring failed: {type(exc).__name__}: {exc}",
                    rule=rule.name,
                )
                continue
            new, transition = advance(rule, state, value, now)
            after[rule.name] = new
            if transition is not None:
                active = new if transition == "firing" else state
                alerts_out.append(make_alert(rule, transition, active, value, now, store.where))
        changed = [
            _saved(name, state)
            for name, state in after.items()
            if state.state != "inactive" and state != before.get(name)
        ]
        # Rules no longer configured are cleared too, without a notification.
        cleared = [name for name in before if after.get(name, INACTIVE).state == "inactive"]
        # Shielded: a transition that commits is logged, and handed to the sinks, even when the
        # evaluator is being cancelled (shutdown); one that does not commit is never announced.
        with anyio.CancelScope(shield=True):
            saved_ok: bool | None = None
            with anyio.move_on_after(SAVE_TIMEOUT):
                saved_ok = await alerts.save_states(LEASE_NAME, self.owner, lease, changed, cleared)
            if saved_ok is None:
                # Unknown whether it committed: say nothing; the next tick reads what did.
                log_event(
                    logger,
                    logging.WARNING,
                    "service_failed",
                    f"saving the alert states of {store.where} took over {SAVE_TIMEOUT:g}s",
                )
                return
            if not saved_ok:
                self._lost(store.where)  # taken over meanwhile: the new holder decides
                return
            for alert in alerts_out:
                log_alert(alert)
                if self.alerting.sinks:
                    if self._deliveries is not None:
                        self._deliveries.start_soon(self._send, alert)
                    else:
                        await self._send(alert)
        if now - self._pruned.get(store.where, -PRUNE_INTERVAL) >= PRUNE_INTERVAL:
            self._pruned[store.where] = now
            await alerts.prune_restarts(now - RESTARTS_RETENTION)

    async def _send(self, alert: Alert) -> None:
        # Shielded from the evaluator's own cancellation, bounded by SHUTDOWN_GRACE then (run()).
        with anyio.CancelScope(shield=True) as scope:
            self._sending.add(scope)
            try:
                await deliver(alert, self.alerting.sinks)
            finally:
                self._sending.discard(scope)

    def _lost(self, where: str) -> None:
        if self._held.pop(where, None) is not None:
            log_event(
                logger,
                logging.INFO,
                "alert_lease_lost",
                f"another process now evaluates the alert rules of {where}",
                owner=self.owner,
            )
