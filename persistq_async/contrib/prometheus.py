"""Prometheus metrics for persistq_async (``pip install 'persistq_async[prometheus]'``).

:class:`PersistqCollector` is a ``prometheus_client`` collector. Two kinds of figures:

- What *this process* did, counted from events (:mod:`persistq_async.metrics`):
  ``persistq_jobs_total{queue,outcome}`` (outcome: acked, nacked, dead, cancelled, rescued,
  timeout), ``persistq_jobs_put_total{queue}``, the run-time histogram
  ``persistq_job_duration_seconds{queue}``, the wait-time histogram
  ``persistq_job_wait_seconds{queue}`` (from ready to claim), ``persistq_pool_restarts_total``.
  Sum them over your workers in PromQL.
- What *the database* says, read by :meth:`PersistqCollector.refresh` (the worker's
  ``/metrics`` refreshes before each scrape): ``persistq_queue_jobs{queue,state}`` (state:
  ready, scheduled, running, done, dead, cancelled), ``persistq_queue_lag_seconds{queue}``,
  ``persistq_workers{queue}`` (live workers with a pool on the queue). Every worker reports the
  same values for these: take ``max`` over instances, not ``sum``.
- This process's pools, if a supervisor is given: ``persistq_pool_concurrency{pool,queue}``,
  ``persistq_pool_active{pool,queue}``, and ``persistq_event_loop_lag_max_seconds`` (the
  largest lag of the event loop in the last minute, whoever held it: ``loop_lag`` in the README).

Use it in your own registry::

    collector = PersistqCollector([queue], supervisor=sup)
    registry.register(collector)
    collector.subscribe()             # start counting this process's events
    await collector.refresh()         # before each scrape, or run collector.run() in a task
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ..errors import PersistQError
from ..metrics import Event, EventKind, JobEvent, PoolEvent, hub

if TYPE_CHECKING:
    from ..pool import Pool
    from ..queue import Queue
    from ..supervisor import Supervisor

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DURATION_BUCKETS",
    "PersistqCollector",
    "render",
]

#: Histogram buckets (seconds) for run and wait times: milliseconds to minutes.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    math.inf,
)

_OUTCOMES = {
    EventKind.JOB_ACKED: "acked",
    EventKind.JOB_NACKED: "nacked",
    EventKind.JOB_DEAD: "dead",
    EventKind.JOB_CANCELLED: "cancelled",
    EventKind.JOB_RESCUED: "rescued",
    EventKind.JOB_TIMEOUT: "timeout",
}
_STATES = ("ready", "scheduled", "running", "done", "dead", "cancelled")


@dataclass(slots=True)
class _Snapshot:
    """The database's figures as last read."""

    jobs: dict[str, dict[str, int]] = field(default_factory=dict)
    lag: dict[str, float] = field(default_factory=dict)
    workers: dict[str, int] = field(default_factory=dict)


#: The ``le`` labels of the buckets, as the exposition writes them.
_BUCKET_LABELS = tuple("+Inf" if math.isinf(b) else repr(float(b)) for b in DURATION_BUCKETS)


class _Histogram:
    """Bucket counts and a sum, updated on the event loop's thread only.

    ``prometheus_client``'s own histogram takes a lock per bucket, sum and count update, which
    costs more than the rest of an observer; the events arrive on one thread, so plain numbers
    do, and a scrape from another thread reads them under the GIL.
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(DURATION_BUCKETS)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        buckets, running = [], 0
        for bound, count in zip(_BUCKET_LABELS, list(self.counts), strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets


class _Children:
    """One queue's figures from this process's events."""

    __slots__ = ("duration", "outcomes", "put", "wait")

    def __init__(self) -> None:
        self.put = 0
        self.wait = _Histogram()
        self.duration = _Histogram()
        self.outcomes: dict[str, int] = {}


class PersistqCollector(Collector):
    """Collects persistq_async metrics; see the module docstring for the names.

    :param queues: queues whose database figures :meth:`refresh` reads (one per name).
    :param supervisor: a supervisor of this process whose pools' concurrency and active slots
        are reported at each scrape.
    :param namespace: the prefix of every metric name.
    """

    def __init__(
        self,
        queues: Sequence[Queue] = (),
        *,
        supervisor: Supervisor | None = None,
        namespace: str = "persistq",
    ) -> None:
        self.queues = list(queues)
        self.supervisor = supervisor
        self.namespace = namespace
        self._snapshot = _Snapshot()
        self._subscribed = False
        self._children: dict[str, _Children] = {}
        self._restarts: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ events

    def __call__(self, event: Event) -> None:
        """The observer: count one event (registered by :meth:`subscribe`)."""
        if isinstance(event, JobEvent):
            children = self._children.get(event.queue)
            if children is None:
                children = self._children[event.queue] = _Children()
            kind = event.kind
            if kind is EventKind.JOB_PUT:
                children.put += 1
                return
            if kind is EventKind.JOB_CLAIMED:
                if event.wait_seconds is not None:
                    children.wait.observe(event.wait_seconds)
                return
            outcome = _OUTCOMES.get(kind)
            if outcome is None:
                return
            outcomes = children.outcomes
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            # A timeout is followed by its nack, which carries the run time: count it once.
            if event.run_seconds is not None and kind is not EventKind.JOB_TIMEOUT:
                children.duration.observe(event.run_seconds)
        elif isinstance(event, PoolEvent) and event.kind is EventKind.POOL_RESTARTED:
            key = (event.pool, event.queue)
            self._restarts[key] = self._restarts.get(key, 0) + 1

    def subscribe(self) -> None:
        """Start counting this process's events. Idempotent."""
        if not self._subscribed:
            hub.add_observer(self)
            self._subscribed = True

    def unsubscribe(self) -> None:
        """Stop counting events. Idempotent."""
        if self._subscribed:
            hub.remove_observer(self)
            self._subscribed = False

    def __enter__(self) -> PersistqCollector:
        self.subscribe()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unsubscribe()

    # ------------------------------------------------------------------ database figures

    async def refresh(self, window: float = 60.0) -> None:
        """Read the queues' counts, lag and live workers from the database.

        A queue that is closed or whose database fails keeps its previous figures.
        """
        snapshot = _Snapshot(
            jobs=dict(self._snapshot.jobs),
            lag=dict(self._snapshot.lag),
            workers=dict(self._snapshot.workers),
        )
        seen: dict[str, list[Queue]] = {}
        for queue in self.queues:
            if queue.closed:
                continue
            try:
                stats = await queue.stats(window=window)
            except PersistQError:
                continue
            snapshot.jobs[queue.name] = {
                "ready": stats.ready,
                "scheduled": stats.scheduled,
                "running": stats.running,
                "done": stats.done,
                "dead": stats.dead,
                "cancelled": stats.cancelled,
            }
            snapshot.lag[queue.name] = stats.lag or 0.0
            seen.setdefault(queue.store.where, []).append(queue)
        for queues in seen.values():
            try:
                workers = await queues[0].workers()
            except PersistQError:
                continue
            for queue in queues:
                snapshot.workers[queue.name] = sum(
                    1 for w in workers if w.alive and queue.name in w.queues
                )
        self._snapshot = snapshot

    async def run(
        self,
        interval: float = 5.0,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Refresh every ``interval`` seconds until cancelled (for a registry served by
        ``prometheus_client``'s own server)."""
        await self.refresh()
        task_status.started()
        while True:
            await anyio.sleep(interval)
            await self.refresh()

    # ------------------------------------------------------------------ collecting

    def collect(self) -> Iterator[Metric]:
        """The metrics, as ``prometheus_client`` asks for them at each scrape."""
        yield from self._event_metrics()
        ns = self.namespace
        snap = self._snapshot
        jobs = GaugeMetricFamily(
            f"{ns}_queue_jobs",
            "Jobs in the database, by queue and state.",
            labels=["queue", "state"],
        )
        for queue, counts in sorted(snap.jobs.items()):
            for state in _STATES:
                jobs.add_metric([queue, state], counts.get(state, 0))
        yield jobs
        lag = GaugeMetricFamily(
            f"{ns}_queue_lag_seconds",
            "Age of the oldest ready job (0 when none is ready).",
            labels=["queue"],
        )
        for queue, seconds in sorted(snap.lag.items()):
            lag.add_metric([queue], seconds)
        yield lag
        workers = GaugeMetricFamily(
            f"{ns}_workers", "Live workers with a pool on the queue.", labels=["queue"]
        )
        for queue, count in sorted(snap.workers.items()):
            workers.add_metric([queue], count)
        yield workers
        concurrency = GaugeMetricFamily(
            f"{ns}_pool_concurrency", "Slots of this process's pools.", labels=["pool", "queue"]
        )
        active = GaugeMetricFamily(
            f"{ns}_pool_active",
            "Handlers running now in this process's pools.",
            labels=["pool", "queue"],
        )
        for pool in self._pools():
            concurrency.add_metric([pool.name, pool.queue.name], pool.concurrency)
            active.add_metric([pool.name, pool.queue.name], pool.active)
        yield concurrency
        yield active
        if self.supervisor is not None:
            loop = GaugeMetricFamily(
                f"{ns}_event_loop_lag_max_seconds",
                "The largest lag of this process's event loop in the last minute.",
            )
            loop.add_metric([], self.supervisor.loop_lag_max)
            yield loop

    def _event_metrics(self) -> Iterator[Metric]:
        ns = self.namespace
        children = sorted(self._children.items())
        jobs = CounterMetricFamily(
            f"{ns}_jobs",
            "Jobs this process finished a delivery of, by queue and outcome.",
            labels=["queue", "outcome"],
        )
        put = CounterMetricFamily(f"{ns}_jobs_put", "Jobs this process put.", labels=["queue"])
        duration = HistogramMetricFamily(
            f"{ns}_job_duration_seconds",
            "Handler run time (claim to outcome) of deliveries this process ran.",
            labels=["queue"],
        )
        wait = HistogramMetricFamily(
            f"{ns}_job_wait_seconds",
            "Time from a job becoming claimable to its claim by this process.",
            labels=["queue"],
        )
        for queue, child in children:
            for outcome, count in sorted(child.outcomes.items()):
                jobs.add_metric([queue, outcome], count)
            put.add_metric([queue], child.put)
            duration.add_metric([queue], child.duration.cumulative(), child.duration.total)
            wait.add_metric([queue], child.wait.cumulative(), child.wait.total)
        restarts = CounterMetricFamily(
            f"{ns}_pool_restarts",
            "Claim-loop restarts of this process's pools.",
            labels=["pool", "queue"],
        )
        for (pool, queue), count in sorted(self._restarts.items()):
            restarts.add_metric([pool, queue], count)
        yield from (jobs, put, duration, wait, restarts)

    def _pools(self) -> Iterable[Pool]:
        if self.supervisor is None:
            return []
        return list(self.supervisor.pools.values())


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
