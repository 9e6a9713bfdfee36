"""Turning what the store read into :class:`Stats`, :class:`WorkerInfo` and
:class:`HealthReport`; the checks of :meth:`Queue.health`."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING

from ._checks import check_float, check_int, check_seconds
from .errors import PersistQError
from .job import to_datetime
from .monitoring import (
    DEFAULT_STATS_WINDOW,
    HealthCheck,
    HealthReport,
    PoolInfo,
    Stats,
    WorkerInfo,
    percentile,
)
from .schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from .store import JobStore
    from .store.metrics import StatsRecord, WorkerRecord

__all__ = [
    "DEFAULT_MAX_LAG",
    "Monitored",
    "DEFAULT_WORKER_TIMEOUT",
    "check_health",
    "make_stats",
    "make_workers",
]

#: Seconds of heartbeat silence after which a registered worker is shown as gone.
DEFAULT_WORKER_TIMEOUT = 30.0
#: Lag (seconds) above which :meth:`Queue.health` says "degraded".
DEFAULT_MAX_LAG = 60.0

_ORDER = {"ok": 0, "degraded": 1, "failing": 2}


class Monitored:
    """The monitoring methods of :class:`~persistq_async.Queue` (it inherits them)."""

    name: str

    @property
    def store(self) -> JobStore:
        """The queue's store (the queue defines it)."""
        raise NotImplementedError

    async def stats(self, window: float | timedelta = DEFAULT_STATS_WINDOW) -> Stats:
        """This queue as the database sees it: counts by state (ready and scheduled apart),
        the lag, and the deliveries that finished in the last ``window`` seconds (rates,
        retries, run and wait time percentiles). The same from every process.

        :raises ArgumentError: ``window`` is not positive.
        """
        store = self.store
        seconds = check_seconds("window", window, positive=True)
        return make_stats(self.name, seconds, await store.read_stats(self.name, seconds))

    async def workers(self, *, timeout: float = DEFAULT_WORKER_TIMEOUT) -> list[WorkerInfo]:  # noqa: ASYNC109 - a staleness limit, not a deadline
        """The supervisors registered in this queue's database (every queue's), oldest first.

        A worker whose last heartbeat is more than ``timeout`` seconds old is listed with
        ``alive=False`` (crashed, or hanging); such rows are pruned when a supervisor registers.
        """
        store = self.store
        limit = check_float("timeout", timeout, positive=True)
        return make_workers(await store.read_workers(), store.clock(), limit)

    async def health(
        self,
        *,
        max_lag: float = DEFAULT_MAX_LAG,
        max_wal_bytes: int | None = None,
        require_workers: bool = True,
        worker_timeout: float = DEFAULT_WORKER_TIMEOUT,
    ) -> HealthReport:
        """Check the database (reachable, round-trip time, schema version), this queue's lag
        against ``max_lag`` seconds, its live workers (none is "degraded" when
        ``require_workers``), and on SQLite the WAL's size against ``max_wal_bytes``.

        Never raises for a database that is down: that is a "failing" report.
        """
        return await check_health(
            self.name,
            self.store,
            max_lag=check_float("max_lag", max_lag, positive=True),
            max_wal_bytes=None
            if max_wal_bytes is None
            else check_int("max_wal_bytes", max_wal_bytes, minimum=1),
            require_workers=bool(require_workers),
            worker_timeout=check_float("worker_timeout", worker_timeout, positive=True),
        )


def make_stats(queue: str, window: float, record: StatsRecord) -> Stats:
    """Summarise a :class:`StatsRecord` of ``queue`` over ``window`` seconds."""
    counts = record.counts
    queued = counts.get("queued", 0)
    finished: dict[str, int] = {}
    for outcome, last, count in record.outcomes:
        # A nack or an expiry on the last attempt made the job dead: count it as such.
        name = "dead" if last and outcome in ("nacked", "expired") else outcome
        finished[name] = finished.get(name, 0) + count
    completed = finished.get("acked", 0) + finished.get("failed", 0) + finished.get("dead", 0)
    runs, waits = record.run_times, record.wait_times
    return Stats(
        queue=queue,
        queued=queued,
        running=counts.get("running", 0),
        done=counts.get("done", 0),
        dead=counts.get("dead", 0),
        cancelled=counts.get("cancelled", 0),
        ready=record.ready,
        scheduled=max(0, queued - record.ready),
        oldest_ready_age=None
        if record.oldest_ready_at is None
        else max(0.0, record.now - record.oldest_ready_at),
        window_seconds=window,
        finished=finished,
        throughput=completed / window,
        retries=finished.get("nacked", 0) + finished.get("expired", 0),
        run_time_p50=percentile(runs, 0.50),
        run_time_p95=percentile(runs, 0.95),
        run_time_p99=percentile(runs, 0.99),
        wait_time_p50=percentile(waits, 0.50),
        wait_time_p95=percentile(waits, 0.95),
        wait_time_p99=percentile(waits, 0.99),
    )


def make_workers(records: list[WorkerRecord], now: float, timeout: float) -> list[WorkerInfo]:
    """The registry's rows as :class:`WorkerInfo`, alive when seen within ``timeout``."""
    found = []
    for r in records:
        pools = []
        for p in r.pools:
            try:
                pools.append(
                    PoolInfo(
                        name=str(p["name"]),
                        queue=str(p["queue"]),
                        concurrency=int(p["concurrency"]),
                        active=int(p["active"]),
                        processed=int(p["processed"]),
                        failed=int(p["failed"]),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue  # a row from a newer library may say more; skip what we cannot read
        started, seen = to_datetime(r.started_at), to_datetime(r.last_seen)
        assert started is not None
        assert seen is not None
        found.append(
            WorkerInfo(
                id=r.id,
                host=r.host,
                pid=r.pid,
                started_at=started,
                last_seen=seen,
                alive=now - r.last_seen <= timeout,
                pools=tuple(pools),
            )
        )
    return found


async def check_health(
    queue: str,
    store: JobStore,
    *,
    max_lag: float,
    max_wal_bytes: int | None,
    require_workers: bool,
    worker_timeout: float,
) -> HealthReport:
    """The checks of :meth:`Queue.health`; a database that fails makes a "failing" report."""
    checks: list[HealthCheck] = []
    started = time.perf_counter()
    try:
        version = await store.read_schema_version()
    except PersistQError as exc:
        checks.append(HealthCheck(name="database", status="failing", detail=str(exc)))
        return _report(queue, checks, reachable=False)
    round_trip = time.perf_counter() - started
    checks.append(
        HealthCheck(
            name="database",
            status="ok",
            detail=f"answered in {round_trip * 1000:.1f} ms",
            value=round_trip,
        )
    )
    if version == SCHEMA_VERSION:
        checks.append(
            HealthCheck(name="schema", status="ok", detail=f"version {version}", value=version)
        )
    else:
        checks.append(
            HealthCheck(
                name="schema",
                status="failing",
                detail=f"version {version}, this library expects {SCHEMA_VERSION}",
                value=version,
            )
        )
    lag = live = wal = None
    try:
        oldest = await store.read_oldest_ready(queue)
        now = store.clock()
        lag = 0.0 if oldest is None else max(0.0, now - oldest)
        checks.append(
            HealthCheck(
                name="lag",
                status="degraded" if lag > max_lag else "ok",
                detail=f"oldest ready job waited {lag:.1f}s (threshold {max_lag:g}s)",
                value=lag,
            )
        )
        rows = make_workers(await store.read_workers(), now, worker_timeout)
        live = sum(1 for w in rows if w.alive and queue in w.queues)
        checks.append(
            HealthCheck(
                name="workers",
                status="degraded" if require_workers and live == 0 else "ok",
                detail=f"{live} live worker(s) with a pool on {queue!r}",
                value=live,
            )
        )
    except PersistQError as exc:
        checks.append(HealthCheck(name="database", status="failing", detail=str(exc)))
    wal = store.backend.wal_bytes()
    if wal is not None:
        limit = max_wal_bytes if max_wal_bytes is not None else store.backend.wal_warn_bytes()
        checks.append(
            HealthCheck(
                name="wal",
                status="degraded" if wal > limit else "ok",
                detail=f"WAL is {wal} bytes (threshold {limit})",
                value=wal,
            )
        )
    return _report(
        queue,
        checks,
        reachable=True,
        round_trip=round_trip,
        version=version,
        lag=lag,
        live=live,
        wal=wal,
    )


def _report(
    queue: str,
    checks: list[HealthCheck],
    *,
    reachable: bool,
    round_trip: float | None = None,
    version: int | None = None,
    lag: float | None = None,
    live: int | None = None,
    wal: int | None = None,
) -> HealthReport:
    status = max((c.status for c in checks), key=_ORDER.__getitem__, default="ok")
    return HealthReport(
        queue=queue,
        status=status,
        checks=tuple(checks),
        database_reachable=reachable,
        round_trip_seconds=round_trip,
        schema_version=version,
        lag_seconds=lag,
        live_workers=live,
        wal_bytes=wal,
    )
