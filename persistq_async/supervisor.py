"""Supervisor: owns the task group in which pools and maintenance services run.

Pools are created, read, resized and removed at run time. A pool whose claim loop crashes is
restarted with backoff; when restarts exceed the intensity limit (``max_restarts`` within
``restart_period`` seconds, as an Erlang/OTP supervisor counts them) the supervisor gives up,
stops every pool gracefully and raises :class:`~persistq_async.SupervisorError`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, TypeVar

import anyio
from anyio.abc import TaskGroup

from ._checks import check_float, check_int, check_name
from ._maintenance import Cleaner, Heartbeat, Rescuer, Watchdog
from ._types import Handler
from .alerts import AlertEvaluator, Alerting, AlertRule
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    PersistQError,
    QueueClosed,
    SupervisorError,
)
from .metrics import EventKind, hub
from .monitoring import log_event
from .pool import DEFAULT_BLOCK_THRESHOLD, DeadHook, Pool, check_handler, check_on_dead
from .queue import Queue
from .registry import DEFAULT_REGISTRY_INTERVAL, Registrar
from .scheduler import Scheduler
from .store.alerts import AlertStore

if TYPE_CHECKING:
    pass

__all__ = ["DEFAULT_GRACE", "Supervisor"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=BaseException)

#: Seconds running handlers get to finish when a pool stops.
DEFAULT_GRACE = 10.0
#: Restart intensity: more than this many claim-loop restarts ... (with the backoff below, a
#: database outage of about 40 seconds is ridden out; a longer one stops the supervisor)
DEFAULT_MAX_RESTARTS = 10
#: ... within this many seconds, and the supervisor gives up.
DEFAULT_RESTART_PERIOD = 60.0
#: Restarts kept in memory while the database cannot record them.
MAX_PENDING_RESTARTS = 1000
#: Longest recording a restart may hold up the restart.
RESTART_RECORD_TIMEOUT = 2.0


class Supervisor:
    """Runs consumer pools with heartbeats, timeouts, lease rescue and restarts, and fires the
    periodic jobs of its pools' queues (:mod:`persistq_async.scheduler`).

    ``async with Supervisor() as sup: await sup.add(queue, handler, concurrency=10)``.
    Leaving the block stops claiming, waits up to ``grace`` seconds for running handlers, then
    cancels them and hands their leases back.

    :param grace: seconds running handlers get when a pool stops.
    :param max_restarts: restarts of crashed claim loops allowed within ``restart_period``.
    :param restart_period: the window, in seconds, in which restarts are counted.
    :param rescue_interval: seconds between sweeps for expired leases.
    :param heartbeat_interval: seconds between lease extensions; by default a third of the
        shortest ``lease_seconds`` among the pools' queues.
    :param gc_freeze: on entering, collect garbage once and then ``gc.freeze()`` what is left,
        so that CPython's full collections no longer scan the objects that were there at start
        (modules, classes, the application's set-up). In a worker process each full collection
        otherwise stops the event loop for tens of milliseconds about once a second at
        thousands of jobs per second, and every job waiting meanwhile waits that much longer.
        It changes the whole process's garbage collector, so it is off by default; the
        ``persistq worker`` command turns it on (a process of its own).
    :param alerts: alert rules (a list of rules, or :class:`~persistq_async.Alerting` with sinks
        and an interval); one supervisor per database evaluates them (see the README's
        "Alerting"). None: no alerting in this process (its restarts are still recorded).
    :param block_threshold: seconds one step of a handler (from one ``await`` to the next) may
        hold the event loop before that handler is logged as blocking (``job_blocking``), and
        seconds the loop may run late before its lag is logged (``loop_lag``, naming no job).
    :param registry_interval: seconds between refreshes of the supervisor's row in the worker
        registry (:meth:`Queue.workers`).
    """

    def __init__(
        self,
        *,
        grace: float = DEFAULT_GRACE,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        restart_period: float = DEFAULT_RESTART_PERIOD,
        rescue_interval: float = 1.0,
        heartbeat_interval: float | None = None,
        gc_freeze: bool = False,
        block_threshold: float = DEFAULT_BLOCK_THRESHOLD,
        alerts: Alerting | Iterable[AlertRule] | None = None,
        registry_interval: float = DEFAULT_REGISTRY_INTERVAL,
    ) -> None:
        self.grace = check_float("grace", grace, minimum=0.0)
        self.max_restarts = check_int("max_restarts", max_restarts, minimum=0)
        self.restart_period = check_float("restart_period", restart_period, positive=True)
        self.rescue_interval = check_float("rescue_interval", rescue_interval, positive=True)
        self.heartbeat_interval = (
            None
            if heartbeat_interval is None
            else check_float("heartbeat_interval", heartbeat_interval, positive=True)
        )
        if not isinstance(gc_freeze, bool):
            raise ArgumentTypeError(f"gc_freeze: expected True or False, got {gc_freeze!r}")
        self.gc_freeze = gc_freeze
        #: This supervisor's id in the worker registry.
        self.id: str = uuid.uuid4().hex
        self.registry_interval = check_float("registry_interval", registry_interval, positive=True)
        self.block_threshold = check_float("block_threshold", block_threshold, positive=True)
        self._watchdog: Watchdog | None = None
        #: The alert settings, if this supervisor evaluates alert rules.
        self.alerting: Alerting | None = None if alerts is None else Alerting.of(alerts)
        self._alert_evaluator: AlertEvaluator | None = None
        # Restarts not yet recorded in the database (it may be what failed): (pool, at, error).
        self._pending_restarts: deque[tuple[Pool, float, str]] = deque(maxlen=MAX_PENDING_RESTARTS)
        self._restarts_lock = anyio.Lock()
        self._pools: dict[str, Pool] = {}
        self._restarts: deque[float] = deque()
        self._tg: TaskGroup | None = None
        self._services_scope = anyio.CancelScope()
        self._closed = False
        self._heartbeat: Heartbeat | None = None
        self._registrar = Registrar(
            self.id, lambda: list(self._pools.values()), interval=self.registry_interval
        )
        self._scheduler = Scheduler(
            lambda: list({id(p.queue): p.queue for p in self._pools.values()}.values())
        )

    @property
    def pools(self) -> Mapping[str, Pool]:
        """The running pools by name (read-only)."""
        return MappingProxyType(self._pools)

    @property
    def loop_lag(self) -> float:
        """Seconds the event loop was late at the watchdog's last tick (every 0.25 s)."""
        return 0.0 if self._watchdog is None else self._watchdog.lag

    @property
    def loop_lag_max(self) -> float:
        """The largest lag of the event loop in the last minute, in seconds."""
        return 0.0 if self._watchdog is None else self._watchdog.recent_max_lag

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> Supervisor:
        if self._tg is not None or self._closed:
            raise QueueClosed("a Supervisor can be entered once; make a new one")
        if self.gc_freeze:
            gc.collect()  # what is garbage now would otherwise never be collected
            gc.freeze()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._run_services)
        except BaseException:
            await self._tg.__aexit__(None, None, None)
            raise
        return self

    async def _run_services(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        pools = lambda: list(self._pools.values())  # noqa: E731
        queues = lambda: list({id(p.queue): p.queue for p in self._pools.values()}.values())  # noqa: E731
        self._heartbeat = Heartbeat(pools, interval=self._heartbeat_interval())
        with self._services_scope:
            async with anyio.create_task_group() as tg:
                await tg.start(self._heartbeat.run)
                await tg.start(self._registrar.run)
                await tg.start(Watchdog(pools).run)
                self._watchdog = Watchdog(pools, lag_threshold=self.block_threshold)
                await tg.start(self._watchdog.run)
                await tg.start(Rescuer(queues, interval=self.rescue_interval).run)
                await tg.start(Cleaner(queues).run)
                if self.alerting is not None:
                    self._alert_evaluator = AlertEvaluator(
                        self.alerting, queues, before_tick=self._record_restarts
                    )
                    await tg.start(self._alert_evaluator.run)
                await tg.start(self._scheduler.run)
                task_status.started()

    def _heartbeat_interval(self) -> float:
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        leases = [p.queue.options.lease_seconds for p in self._pools.values()]
        return max(0.05, min(leases, default=30.0) / 3)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        if tg is None:
            return None
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._stop_all(self.grace)
            await self._registrar.unregister_all()
        self._services_scope.cancel()
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # One error means one error: do not make callers unwrap an ExceptionGroup.
            fatal = _first_leaf(group, SupervisorError)
            if fatal is not None:
                raise fatal from group
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                raise group.exceptions[0] from None
            raise
        finally:
            self._tg = None

    async def aclose(self) -> None:
        """Stop every pool gracefully and the services; the same as leaving the block."""
        await self.__aexit__(None, None, None)

    async def _stop_all(self, grace: float) -> None:
        pools = list(self._pools.values())
        for pool in pools:
            pool.stop(grace)
        for pool in pools:
            await pool.wait_stopped()
        self._pools.clear()

    def cancel_running(self) -> None:
        """Cancel every running handler at once (a second SIGTERM); leases are handed back."""
        for pool in self._pools.values():
            pool.stop(0)
            pool.cancel_running()

    async def wait(self) -> None:
        """Wait until the supervisor is cancelled or gives up (for a worker's main task)."""
        await anyio.sleep_forever()

    # ------------------------------------------------------------------ pool CRUD

    async def add(
        self,
        queue: Queue,
        handler: Handler,
        *,
        concurrency: int = 1,
        job_timeout: float | None = None,
        name: str | None = None,
        on_dead: DeadHook | None = None,
    ) -> Pool:
        """Create and start a pool running ``handler`` on ``queue``'s jobs.

        :param concurrency: most handlers running at once (>= 1).
        :param job_timeout: seconds before a handler is cancelled and its job nacked; None for
            no limit.
        :param name: unique among this supervisor's pools; the queue's name by default.
        :param on_dead: ``async def on_dead(job, error)``, awaited in this worker after a job
            the pool ran died (its last attempt failed or timed out, or it was rejected), once
            the death (and any move to the dead-letter queue) is committed; a hook that raises
            is logged (``on_dead_failed``), the job is kept either way.
        :raises ArgumentError: duplicate name, concurrency < 1, job_timeout <= 0.
        :raises ArgumentTypeError: the handler is not an ``async def`` function.
        :raises QueueClosed: the queue is not open, or the supervisor is not running.
        """
        tg = self._require_running()
        if not isinstance(queue, Queue):
            raise ArgumentTypeError(
                f"queue: expected a persistq_async.Queue, got {type(queue).__name__}"
            )
        queue.store  # noqa: B018 - raises QueueClosed when the queue is not open
        check_handler(handler)
        check_on_dead(on_dead)
        pool_name = check_name("name", queue.name if name is None else name)
        if pool_name in self._pools:
            raise ArgumentError(f"name: a pool named {pool_name!r} already exists")
        pool = Pool(
            queue,
            handler,
            name=pool_name,
            concurrency=concurrency,
            job_timeout=job_timeout,
            on_crash=self._on_crash,
            block_threshold=self.block_threshold,
            on_dead=on_dead,
        )
        self._pools[pool_name] = pool
        try:
            await tg.start(pool.run, self.grace)
        except BaseException:
            self._pools.pop(pool_name, None)
            raise
        if self._heartbeat is not None:
            self._heartbeat.set_interval(min(self._heartbeat.interval, self._heartbeat_interval()))
        await self._registrar.register(queue)
        self._scheduler.wake()
        return pool

    def _require_running(self) -> TaskGroup:
        if self._tg is None or self._closed:
            raise QueueClosed("the supervisor is not running; use 'async with Supervisor()'")
        return self._tg

    def _get(self, name: str) -> Pool:
        check_name("name", name)
        try:
            return self._pools[name]
        except KeyError:
            known = ", ".join(sorted(self._pools)) or "none"
            raise ArgumentError(f"name: no pool named {name!r} (pools: {known})") from None

    async def resize(self, name: str, concurrency: int) -> None:
        """Change a pool's concurrency; a smaller limit never cancels running handlers.

        :raises ArgumentError: unknown pool, or concurrency < 1.
        """
        self._get(name).resize(concurrency)

    async def remove(self, name: str, *, grace: float | None = None) -> None:
        """Stop a pool: no more claims, running handlers get ``grace`` seconds, then are cancelled.

        :raises ArgumentError: unknown pool.
        """
        pool = self._get(name)
        wait = self.grace if grace is None else check_float("grace", grace, minimum=0.0)
        pool.stop(wait)
        with anyio.CancelScope(shield=True):
            await pool.wait_stopped()
        self._pools.pop(name, None)

    async def _record_restarts(self) -> None:
        """Write the restarts not yet recorded (for the pool-restarts alert rule of whichever
        process evaluates); those the database refuses wait for the next try."""
        # One writer at a time: a crash and the evaluator's tick may both flush.
        async with self._restarts_lock:
            while self._pending_restarts:
                pool = self._pending_restarts[0][0]
                store = pool.queue.store if not pool.queue.closed else None
                if store is None or not store.is_open:
                    self._pending_restarts.popleft()  # its database is gone from this process
                    continue
                batch = [r for r in self._pending_restarts if r[0].queue.store is store]
                await AlertStore(store).record_restarts(
                    [(p.queue.name, p.name, t, e) for p, t, e in batch]
                )
                for item in batch:
                    self._pending_restarts.remove(item)

    async def _on_crash(self, pool: Pool, exc: BaseException) -> None:
        now = anyio.current_time()
        if not pool.queue.closed:
            self._pending_restarts.append((pool, pool.queue.store.clock(), str(exc)))
            # The database may be what failed; the next try (a tick of this process's alert
            # evaluator, or the next restart) writes them.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(RESTART_RECORD_TIMEOUT),
                contextlib.suppress(PersistQError),
            ):
                await self._record_restarts()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - self.restart_period:
            self._restarts.popleft()
        if len(self._restarts) > self.max_restarts:
            log_event(
                logger,
                logging.ERROR,
                "supervisor_gave_up",
                f"pool {pool.name}: {len(self._restarts)} restarts within {self.restart_period}s; "
                f"giving up: {type(exc).__name__}: {exc}",
                pool=pool.name,
                error=str(exc),
            )
            # Give up gracefully: the other pools stop claiming and drain for the grace
            # period; the failed pool drains once this raises, then its run() raises it.
            others = [p for p in self._pools.values() if p is not pool]
            for other in others:
                other.stop(self.grace)
            for other in others:
                await other.wait_stopped()
            raise SupervisorError(
                f"pool {pool.name!r} crashed {len(self._restarts)} times within "
                f"{self.restart_period}s; last error: {type(exc).__name__}: {exc}"
            ) from exc
        delay = min(10.0, 0.1 * 2 ** (len(self._restarts) - 1))
        if hub.observed:
            pool.emit(EventKind.POOL_RESTARTED, f"{type(exc).__name__}: {exc}")
        log_event(
            logger,
            logging.WARNING,
            "pool_restarted",
            f"pool {pool.name}: claim loop crashed ({type(exc).__name__}: {exc}); "
            f"restarting in {delay:.2f}s",
            pool=pool.name,
            error=str(exc),
        )
        await anyio.sleep(delay)


def _first_leaf(group: BaseExceptionGroup[BaseException], kind: type[E]) -> E | None:
    """The first exception of type ``kind`` in ``group``, however deeply nested."""
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_leaf(exc, kind)
            if found is not None:
                return found
    return None
