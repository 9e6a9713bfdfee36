"""Soak: steady load for minutes; memory, open files, the WAL and claim latency stay bounded.

``python benchmarks/soak.py [--minutes M] [--db PATH] [--json PATH]`` (``nox -s soak -- ARGS``).

Phases, all in this process, on one SQLite file (default durability, ``synchronous=FULL``):

1. **Maximum**: 32 producer tasks, paced with anyio sleeps, put single jobs at a rate that
   grows in steps (``--ramp-start`` 800 jobs/s, ``--ramp-factor`` 1.15, ``--step-seconds`` 4)
   while a ``Supervisor`` pool of concurrency 32 consumes. The maximum is the last rate the
   queue kept up with (see :meth:`Run.measure_max`).
2. **Steady** (``--minutes``): the same producers put single jobs at ``--load`` (70 %) of that
   rate. 1 % of the jobs are nacked by the handler (it raises): 9 in
   10 of them fail once and are then done, 1 in 10 fail on every attempt and are dead after
   ``max_attempts`` = 3 (``backoff_base`` 0.05 s). Every ``--interval`` seconds a sample takes
   RSS (``VmRSS``), the WAL file's size, open file descriptors, the p50/p99 claim latency of the
   window (put time to handler start; first deliveries only, since a retry's ``run_at`` is a
   jittered backoff the handler cannot see), the backlog (queued + running) and the rates. The
   WAL's size is also read every 0.25 s for its maximum.
3. **Pinned WAL** (``--pin-seconds``, 30 s): the load goes on while a plain ``sqlite3`` reader
   holds a read transaction open. ``persistq_async.backends.sqlite.WAL_WARN_BYTES`` is lowered
   to 8 MiB for this phase (64 MiB otherwise), so the ``wal_growing`` warning the library logs
   is seen within the phase. Then the reader is released and the load runs ``--after-seconds``
   (10 s) more, to see the checkpoints catch up.

Then the producer stops, the queue drains, and every put job is checked in the database: it must
be ``done`` (attempts 1, or 2 for a job nacked once) or ``dead`` (attempts 3, for a job nacked on
every attempt), none missing, none unexpected; ``PRAGMA integrity_check`` must be ``ok``.

The supervisor runs with ``gc_freeze=True``, as ``persistq worker`` does (``--no-gc-freeze``
to compare): without it, CPython's full collections of the start-up heap stop the event loop for
30-50 ms about once a second at this load. Each sample also records the longest garbage
collection and the longest event-loop stall (a 5 ms sleep's overshoot) of its window, so a bad
window can be told apart: the process, or the database.

Criteria (issue 6, "Soak"): no loss; RSS drift <= 10 % (median of the last third of the steady
phase's post-warm-up samples against the median of its first third); WAL <= 64 MiB during
phases 1-2; claim p99 <= 50 ms over phase 2; no ``wal_growing`` warning without a pinning
reader; a ``wal_growing`` warning with one. Prints PASS/FAIL per criterion with the figures,
writes JSON, exits 1 if any criterion failed. Beside the p99 criterion it reports how many
windows had a p99 over 50 ms, and for the worst one its put p99, longest garbage collection and
longest loop stall: on a shared machine a window can catch a disk that stalls for 100 ms.

The bookkeeping of this script (job ids, delivery counts) lives in arrays allocated before the
warm-up ends, so it does not show up as drift.
"""

from __future__ import annotations

import argparse
import array
import gc
import json
import logging
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

import persistq_async as pq
from persistq_async.backends import sqlite as sqlite_backend

QUEUE_MAX = "soak-max"
QUEUE = "soak"
CONCURRENCY = 32
MAX_ATTEMPTS = 3
BACKOFF_BASE = 0.05
BACKOFF_MAX = 0.5
#: Paced producer tasks, in phase 1 and in phase 2: the same load generator in both, so that its
#: own cost is part of the maximum the steady load is a share of.
PRODUCERS = 32
#: The WAL size past which the library warns, during phase 3 only.
PIN_WARN_BYTES = 8 * 2**20

RSS_DRIFT_LIMIT = 0.10
WAL_LIMIT = 64 * 2**20
P99_LIMIT_MS = 50.0

#: Latency histogram: 0.1 ms buckets up to 10 s, then one overflow bucket.
HIST_STEP_MS = 0.1
HIST_BUCKETS = 100_000

logger = logging.getLogger("soak")


# ---------------------------------------------------------------------------- the job plan


def plan(n: int) -> int:
    """How many deliveries of job number ``n`` the handler fails: 0, 1, or all of them."""
    if n % 1000 == 37:
        return MAX_ATTEMPTS  # 0.1 % of the jobs: dead after max_attempts
    if n % 100 == 37:
        return 1  # 0.9 %: nacked once, then done
    return 0


def expected(n: int) -> tuple[str, int]:
    """The final state and attempts of job number ``n``."""
    fails = plan(n)
    if fails >= MAX_ATTEMPTS:
        return "dead", MAX_ATTEMPTS
    return "done", fails + 1


class Nack(Exception):
    """Raised by the handler for a planned failure."""


# ---------------------------------------------------------------------------- bookkeeping


class Tracker:
    """Job numbers, their ids and deliveries, and latency, in preallocated arrays."""

    def __init__(self, capacity: int) -> None:
        self.ids = array.array("q", [0]) * capacity
        self.deliveries = bytearray(b"\x00") * capacity
        self.count = 0  # job numbers handed out
        self.put_ok = 0
        self.put_errors: list[str] = []
        self.grown = 0  # times the arrays had to grow (they are sized ahead)
        self.window: list[float] = []  # latency of first deliveries (ms), this window
        self.put_window: list[float] = []  # put() call durations (ms), this window
        self.hist = array.array("l", [0]) * (HIST_BUCKETS + 1)
        self.recording = False  # into hist: phase 2 only
        self.nacks = 0
        self.handled = 0

    def reserve(self, capacity: int) -> None:
        if capacity > len(self.ids):
            extra = capacity - len(self.ids)
            self.ids.extend(array.array("q", [0]) * extra)
            self.deliveries.extend(bytearray(b"\x00") * extra)

    def next(self) -> int:
        n = self.count
        if n >= len(self.ids):
            self.grown += 1
            self.reserve(max(1024, len(self.ids) // 4) + len(self.ids))
        self.count += 1
        return n

    def latency(self, ms: float) -> None:
        self.window.append(ms)
        if self.recording:
            self.hist[min(HIST_BUCKETS, int(ms / HIST_STEP_MS))] += 1

    def take_window(self) -> tuple[list[float], list[float]]:
        window, self.window = self.window, []
        puts, self.put_window = self.put_window, []
        return window, puts

    def hist_count(self) -> int:
        return sum(self.hist)

    def hist_percentile(self, pct: float) -> float | None:
        total = sum(self.hist)
        if total == 0:
            return None
        rank = max(1, round(pct / 100 * total + 0.5))
        seen = 0
        for i, c in enumerate(self.hist):
            seen += c
            if seen >= rank:
                return round((i + 1) * HIST_STEP_MS, 1)
        return None


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ---------------------------------------------------------------------------- probes (sync)


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class Stalls:
    """The longest garbage collection and event-loop stall since the last :meth:`take`."""

    def __init__(self) -> None:
        self.gc_started = 0.0
        self.gc_max_ms = 0.0
        self.full_collections = 0
        self.lag_max_ms = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.gc_started = time.perf_counter()
            return
        self.gc_max_ms = max(self.gc_max_ms, (time.perf_counter() - self.gc_started) * 1000)
        if info["generation"] == 2:
            self.full_collections += 1

    async def watch_loop(self) -> None:
        while True:
            begin = time.perf_counter()
            await anyio.sleep(0.005)
            lag = (time.perf_counter() - begin) * 1000 - 5.0
            self.lag_max_ms = max(self.lag_max_ms, lag)

    def take(self) -> tuple[float, float, int]:
        taken = (self.gc_max_ms, self.lag_max_ms, self.full_collections)
        self.gc_max_ms = self.lag_max_ms = 0.0
        self.full_collections = 0
        return taken


class WarningCatcher(logging.Handler):
    """Keeps the library's WARNING+ records: action, time, message."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(
            {
                "t": time.monotonic(),
                "action": getattr(record, "action", None),
                "logger": record.name,
                "level": record.levelname,
                "message": record.getMessage()[:500],
            }
        )


# ---------------------------------------------------------------------------- the run


@dataclass
class Run:
    args: argparse.Namespace
    db: Path
    tracker: Tracker
    catcher: WarningCatcher
    stalls: Stalls = field(default_factory=Stalls)
    t0: float = 0.0  # monotonic start of the steady phase
    phase: str = "max"
    samples: list[dict[str, Any]] = field(default_factory=list)
    wal_max: dict[str, int] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def wal(self) -> Path:
        return Path(f"{self.db}-wal")

    async def handler(self, job: pq.Job) -> None:
        started = time.time()
        n = job.payload["n"]
        tracker = self.tracker
        tracker.handled += 1
        if tracker.deliveries[n] < 255:
            tracker.deliveries[n] += 1
        if job.attempts == 1:
            tracker.latency((started - job.payload["t"]) * 1000)
        if job.attempts <= plan(n):
            tracker.nacks += 1
            raise Nack(f"planned failure of job {n}, attempt {job.attempts}")
        await anyio.lowlevel.checkpoint()

    async def put_one(self, q: pq.Queue) -> None:
        tracker = self.tracker
        n = tracker.next()
        begin = time.time()
        try:
            job_id = await q.put({"n": n, "t": begin})
        except Exception as exc:  # counted: a put that raised has no id to check
            tracker.put_errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        tracker.ids[n] = job_id
        tracker.put_ok += 1
        tracker.put_window.append((time.time() - begin) * 1000)

    async def watch_wal(self) -> None:
        while True:
            size = file_size(self.wal)
            if size > self.wal_max.get(self.phase, 0):
                self.wal_max[self.phase] = size
            await anyio.sleep(0.25)

    # ------------------------------------------------------------------ phase 1

    async def measure_max(self, sup: pq.Supervisor, q: pq.Queue) -> float:
        """The highest paced rate the queue keeps up with, found by steps.

        Each step starts on a drained queue and runs the paced producers of phase 2 at one rate
        for ``--step-seconds``; the next is ``--ramp-factor`` faster. A step keeps up when its
        puts reached 95 % of the rate and it ended with fewer jobs waiting (queued + running)
        than 2 % of its puts (a twelfth of a second's worth at 4 s steps). The first step that
        does not ends the ramp: a rate the queue falls behind at for a few seconds is not one it
        sustains for minutes (trying such a step again until it passed once overstated the
        maximum: the steady phase at 70 % of it fell behind for seconds at a time).

        Paced single puts, not producers putting as fast as they can: those fill every batch,
        which a paced load never does, and overstate what it can sustain (by up to a third here).
        """
        args = self.args
        pool = await sup.add(q, self.handler, concurrency=CONCURRENCY, name=QUEUE_MAX)
        tracker = self.tracker
        rate = args.ramp_start
        best = 0.0
        steps: list[dict[str, Any]] = []
        while rate < 1_000_000:
            await q.join(timeout=120)
            backlog0 = await q.store.active_count(QUEUE_MAX)
            put0, done0, begin = tracker.put_ok, pool.processed, time.monotonic()
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.paced_producer, q, rate, stop)
                await anyio.sleep(args.step_seconds)
                stop.set()
            elapsed = time.monotonic() - begin
            puts, done = tracker.put_ok - put0, pool.processed - done0
            backlog1 = await q.store.active_count(QUEUE_MAX)
            kept_up = puts >= 0.95 * rate * args.step_seconds and backlog1 < puts / 50
            steps.append(
                {
                    "rate": round(rate, 1),
                    "put_per_s": round(puts / elapsed, 1),
                    "settled_per_s": round(done / elapsed, 1),
                    "backlog_start": backlog0,
                    "backlog_end": backlog1,
                    "kept_up": kept_up,
                }
            )
            if not args.quiet:
                print(
                    f"  {rate:8.1f} jobs/s: put/s={puts / elapsed:7.1f} settled/s="
                    f"{done / elapsed:7.1f} backlog {backlog0} -> {backlog1}: "
                    f"{'kept up' if kept_up else 'fell behind'}",
                    flush=True,
                )
            if not kept_up:
                break
            best = rate
            rate *= args.ramp_factor
        await q.join(timeout=120)
        await sup.remove(QUEUE_MAX)
        if best == 0:
            raise SystemExit(f"soak: the queue did not keep up with {args.ramp_start} jobs/s")
        self.result["phase1"] = {
            "method": "paced steps",
            "step_seconds": args.step_seconds,
            "ramp_start": args.ramp_start,
            "ramp_factor": args.ramp_factor,
            "producers": PRODUCERS,
            "concurrency": CONCURRENCY,
            "maximum_per_s": round(best, 1),
            "steps": steps,
            "wal_max_bytes": self.wal_max.get("max", 0),
        }
        return best

    # ------------------------------------------------------------------ phases 2 and 3

    async def paced_producer(self, q: pq.Queue, rate: float, stop: anyio.Event) -> None:
        """Single puts on a schedule of ``rate`` per second from ``PRODUCERS`` long-lived tasks
        (task ``i`` makes puts ``i``, ``i + PRODUCERS``, ... each at its due time, at once when
        late, as phase 1's producers do); returns once the puts in flight have finished."""
        start = anyio.current_time()

        async def producer(first: int) -> None:
            n = first
            while not stop.is_set():
                delay = start + n / rate - anyio.current_time()
                if delay > 0:
                    await anyio.sleep(delay)
                await self.put_one(q)
                n += PRODUCERS

        async with anyio.create_task_group() as tg:
            for i in range(PRODUCERS):
                tg.start_soon(producer, i)

    async def sampler(self, q: pq.Queue, pool: pq.Pool, interval: float) -> None:
        tracker = self.tracker
        last = time.monotonic()
        last_put, last_done = tracker.put_ok, pool.processed
        tracker.take_window()
        self.stalls.take()  # phase 1's, and the supervisor's start-up collection, are not ours
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            window, puts = tracker.take_window()
            backlog = await q.store.active_count(QUEUE)
            gc_max, lag_max, full_collections = self.stalls.take()
            span = now - last
            sample = {
                "t": round(now - self.t0, 2),
                "phase": self.phase,
                "rss_bytes": rss_bytes(),
                "wal_bytes": file_size(self.wal),
                "db_bytes": file_size(self.db),
                "fds": open_fds(),
                "backlog": backlog,
                "claims": len(window),
                "claim_p50_ms": round(percentile(window, 50), 2) if window else None,
                "claim_p99_ms": round(percentile(window, 99), 2) if window else None,
                "claim_max_ms": round(max(window), 2) if window else None,
                "put_p99_ms": round(percentile(puts, 99), 2) if puts else None,
                "gc_max_ms": round(gc_max, 2),
                "full_collections": full_collections,
                "loop_lag_max_ms": round(lag_max, 2),
                "put_per_s": round((tracker.put_ok - last_put) / span, 1),
                "settled_per_s": round((pool.processed - last_done) / span, 1),
            }
            self.samples.append(sample)
            last, last_put, last_done = now, tracker.put_ok, pool.processed
            if not self.args.quiet:
                p99 = sample["claim_p99_ms"]
                print(
                    f"  t={sample['t']:7.1f}s {sample['phase']:<6} "
                    f"rss={sample['rss_bytes'] / 2**20:6.1f} MiB "
                    f"wal={sample['wal_bytes'] / 2**20:6.2f} MiB fds={sample['fds']:3d} "
                    f"backlog={backlog:5d} p99={p99 if p99 is not None else '-':>7} ms "
                    f"(put p99 {sample['put_p99_ms']} ms, gc {gc_max:.0f} ms, lag "
                    f"{lag_max:.0f} ms) "
                    f"put/s={sample['put_per_s']:7.1f} settled/s={sample['settled_per_s']:7.1f}",
                    flush=True,
                )

    async def steady(self, sup: pq.Supervisor, q: pq.Queue, rate: float) -> None:
        args = self.args
        pool = await sup.add(q, self.handler, concurrency=CONCURRENCY, name=QUEUE)
        stop = anyio.Event()
        self.t0 = time.monotonic()
        self.phase = "steady"
        self.tracker.recording = True
        steady_seconds = args.minutes * 60
        producer_done = anyio.Event()

        async def produce() -> None:
            try:
                await self.paced_producer(q, rate, stop)
            finally:
                producer_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            tg.start_soon(self.sampler, q, pool, args.interval)
            await anyio.sleep(steady_seconds)
            self.tracker.recording = False

            # Phase 3: a reader pins a snapshot; the WAL cannot be checkpointed past it.
            self.phase = "pinned"
            default_warn = sqlite_backend.WAL_WARN_BYTES
            sqlite_backend.WAL_WARN_BYTES = PIN_WARN_BYTES
            pin_start = time.monotonic()
            reader = sqlite3.connect(self.db, isolation_level=None)
            try:
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM persistq_jobs").fetchone()
                await anyio.sleep(args.pin_seconds)
                wal_at_release = file_size(self.wal)
            finally:
                reader.close()
                sqlite_backend.WAL_WARN_BYTES = default_warn
            released = time.monotonic()
            self.phase = "after"
            await anyio.sleep(args.after_seconds)
            wal_after = file_size(self.wal)
            stop.set()
            await producer_done.wait()  # no put in flight: join then sees every job
            drain_start = time.monotonic()
            self.phase = "drain"
            await q.join(timeout=300)
            drained = time.monotonic() - drain_start
            tg.cancel_scope.cancel()
        await sup.remove(QUEUE)
        warnings = [
            r
            for r in self.catcher.records
            if r["action"] == "wal_growing" and pin_start <= r["t"] <= released + 1.0
        ]
        self.result["phase3"] = {
            "pin_seconds": args.pin_seconds,
            "wal_warn_bytes_lowered_to": PIN_WARN_BYTES,
            "wal_warn_bytes_default": default_warn,
            "wal_max_bytes": self.wal_max.get("pinned", 0),
            "wal_bytes_at_release": wal_at_release,
            "wal_bytes_after": wal_after,
            "after_seconds": args.after_seconds,
            "wal_growing_warnings": [
                {"after_s": round(r["t"] - pin_start, 2), "message": r["message"]} for r in warnings
            ],
        }
        self.result["drain_seconds"] = round(drained, 2)
        self.result["pool"] = {
            "processed": pool.processed,
            "failed": pool.failed,
            "restarts": pool.restarts,
        }

    # ------------------------------------------------------------------ the checks

    def verify(self) -> dict[str, Any]:
        tracker = self.tracker
        conn = sqlite3.connect(self.db)
        try:
            rows = {
                r[0]: (r[1], r[2], r[3])
                for r in conn.execute("SELECT id, queue, state, attempts FROM persistq_jobs")
            }
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
        missing: list[int] = []
        wrong_state: list[tuple[int, str, str]] = []
        wrong_attempts: list[tuple[int, int, int]] = []
        no_id = 0
        seen: set[int] = set()
        done = dead = redelivered = 0
        for n in range(tracker.count):
            job_id = tracker.ids[n]
            if job_id == 0:
                no_id += 1
                continue
            seen.add(job_id)
            row = rows.get(job_id)
            if row is None:
                missing.append(job_id)
                continue
            _queue, state, attempts = row
            want_state, want_attempts = expected(n)
            if state != want_state:
                wrong_state.append((job_id, state, want_state))
            elif attempts != want_attempts:
                wrong_attempts.append((job_id, attempts, want_attempts))
            done += state == "done"
            dead += state == "dead"
            redelivered += max(0, tracker.deliveries[n] - want_attempts)
        unexpected = [i for i in rows if i not in seen]
        lost = len(missing) + sum(1 for _, s, _ in wrong_state if s not in ("done", "dead"))
        return {
            "jobs_put": tracker.put_ok,
            "put_errors": len(tracker.put_errors),
            "put_error_examples": tracker.put_errors[:5],
            "rows": len(rows),
            "done": done,
            "dead": dead,
            "lost": lost,
            "missing": len(missing),
            "missing_examples": missing[:10],
            "wrong_state": len(wrong_state),
            "wrong_state_examples": wrong_state[:10],
            "wrong_attempts": len(wrong_attempts),
            "wrong_attempts_examples": wrong_attempts[:10],
            "unexpected": len(unexpected),
            "redelivered": redelivered,
            "deliveries": tracker.handled,
            "nacks": tracker.nacks,
            "nack_rate": round(tracker.nacks / max(1, tracker.handled), 4),
            "integrity_check": integrity,
            "tracker_grown": tracker.grown,
        }


def criteria(run: Run, verification: dict[str, Any], warm_up: float) -> list[dict[str, Any]]:
    steady = [s for s in run.samples if s["phase"] == "steady"]
    after = [s for s in steady if s["t"] >= warm_up]
    third = max(1, len(after) // 3)
    first = [s["rss_bytes"] for s in after[:third]]
    last = [s["rss_bytes"] for s in after[-third:]]
    base = statistics.median(first) if first else 0
    end = statistics.median(last) if last else 0
    drift = (end - base) / base if base else float("nan")
    windows = [s for s in steady if s["claim_p99_ms"] is not None]
    over = [s for s in windows if s["claim_p99_ms"] > P99_LIMIT_MS]
    worst = max(windows, key=lambda s: s["claim_p99_ms"], default=None)
    p99 = run.tracker.hist_percentile(99)
    wal_max = max(run.wal_max.get("max", 0), run.wal_max.get("steady", 0))
    unpinned = [
        r
        for r in run.catcher.records
        if r["action"] == "wal_growing" and r["t"] < run.t0 + run.args.minutes * 60
    ]
    phase3 = run.result["phase3"]
    ok_loss = (
        verification["lost"] == 0
        and verification["missing"] == 0
        and verification["wrong_state"] == 0
        and verification["unexpected"] == 0
        and verification["put_errors"] == 0
        and verification["integrity_check"] == "ok"
    )
    return [
        {
            "name": "no loss",
            "pass": ok_loss,
            "figures": (
                f"{verification['jobs_put']} put, {verification['done']} done, "
                f"{verification['dead']} dead, lost {verification['lost']}, missing "
                f"{verification['missing']}, wrong state {verification['wrong_state']}, "
                f"unexpected {verification['unexpected']}, put errors "
                f"{verification['put_errors']}, integrity {verification['integrity_check']}"
            ),
        },
        {
            "name": "RSS drift <= 10% after warm-up",
            "pass": bool(first and last) and drift <= RSS_DRIFT_LIMIT,
            "figures": (
                f"{drift * 100:+.1f}% (median {end / 2**20:.1f} MiB over the last {len(last)} "
                f"samples vs {base / 2**20:.1f} MiB over the first {len(first)} after "
                f"{warm_up:.0f}s warm-up)"
            ),
            "drift": drift,
        },
        {
            "name": "WAL <= 64 MiB (phases 1-2)",
            "pass": wal_max <= WAL_LIMIT,
            "figures": f"max {wal_max / 2**20:.2f} MiB",
        },
        {
            "name": "claim p99 <= 50 ms (phase 2)",
            "pass": p99 is not None and p99 <= P99_LIMIT_MS,
            "figures": (
                f"p99 {p99} ms over {run.tracker.hist_count()} first deliveries; "
                f"{len(over)} of {len(windows)} {run.args.interval:.0f}s windows had a p99 over "
                f"{P99_LIMIT_MS:.0f} ms"
                + (
                    f", the worst {worst['claim_p99_ms']} ms at t={worst['t']}s (put p99 "
                    f"{worst['put_p99_ms']} ms, longest GC {worst['gc_max_ms']} ms, longest "
                    f"loop stall {worst['loop_lag_max_ms']} ms)"
                    if worst is not None and over
                    else ""
                )
            ),
        },
        {
            "name": "no wal_growing warning without a pinning reader",
            "pass": not unpinned,
            "figures": f"{len(unpinned)} warning(s)",
        },
        {
            "name": "wal_growing warning with a pinning reader",
            "pass": bool(phase3["wal_growing_warnings"]),
            "figures": (
                f"{len(phase3['wal_growing_warnings'])} warning(s), first after "
                + (
                    f"{phase3['wal_growing_warnings'][0]['after_s']}s"
                    if phase3["wal_growing_warnings"]
                    else "-"
                )
                + f"; WAL_WARN_BYTES lowered to {PIN_WARN_BYTES // 2**20} MiB for the phase; "
                f"WAL max {phase3['wal_max_bytes'] / 2**20:.1f} MiB, "
                f"{phase3['wal_bytes_after'] / 2**20:.1f} MiB {phase3['after_seconds']:.0f}s "
                "after release"
            ),
        },
    ]


async def main_async(args: argparse.Namespace, db: Path) -> int:
    catcher = WarningCatcher()
    lib_logger = logging.getLogger("persistq_async")
    lib_logger.addHandler(catcher)
    if lib_logger.getEffectiveLevel() > logging.WARNING:
        lib_logger.setLevel(logging.WARNING)
    tracker = Tracker(capacity=200_000)
    run = Run(args=args, db=db, tracker=tracker, catcher=catcher)
    started = time.monotonic()
    options = {
        "max_attempts": MAX_ATTEMPTS,
        "backoff_base": BACKOFF_BASE,
        "backoff_max": BACKOFF_MAX,
    }
    if args.durability:
        options["durability"] = args.durability
    print(f"soak: {db}, {args.minutes} min steady, {os.cpu_count()} CPUs", flush=True)
    gc.callbacks.append(run.stalls.on_gc)
    async with (
        pq.Supervisor(gc_freeze=args.gc_freeze) as sup,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(run.watch_wal)
        tg.start_soon(run.stalls.watch_loop)
        print(
            f"phase 1: maximum rate, steps of {args.step_seconds:.0f}s from {args.ramp_start:.0f}"
            f" jobs/s, x{args.ramp_factor} ...",
            flush=True,
        )
        if args.maximum:
            maximum = args.maximum
            print(f"  skipped: --maximum {maximum:.1f}", flush=True)
        else:
            async with pq.Queue(db, name=QUEUE_MAX, **options) as q_max:
                maximum = await run.measure_max(sup, q_max)
        rate = maximum * args.load
        print(f"  maximum {maximum:.1f} jobs/s; steady load {rate:.1f} jobs/s", flush=True)
        total = args.minutes * 60 + args.pin_seconds + args.after_seconds
        tracker.reserve(tracker.count + int(rate * total * 1.3) + 10_000)
        print(
            f"phase 2: steady {rate:.1f} jobs/s for {args.minutes} min, then phase 3: "
            f"a reader pins the WAL for {args.pin_seconds:.0f}s (WAL_WARN_BYTES lowered to "
            f"{PIN_WARN_BYTES // 2**20} MiB), {args.after_seconds:.0f}s after release ...",
            flush=True,
        )
        run.result["rate"] = {"maximum": round(maximum, 1), "load": args.load, "target": rate}
        async with pq.Queue(db, name=QUEUE, **options) as q:
            await run.steady(sup, q, rate)
        tg.cancel_scope.cancel()
    run.phase = "done"
    verification = run.verify()
    steady_seconds = args.minutes * 60
    warm_up = args.warm_up if args.warm_up is not None else min(60.0, max(20.0, steady_seconds / 5))
    checks = criteria(run, verification, warm_up)
    steady = [s for s in run.samples if s["phase"] == "steady"]
    achieved = [s["put_per_s"] for s in steady[1:]]
    summary = {
        "rss_mib": {
            "min": min(s["rss_bytes"] for s in steady) / 2**20,
            "max": max(s["rss_bytes"] for s in steady) / 2**20,
        },
        "fds": {"min": min(s["fds"] for s in steady), "max": max(s["fds"] for s in steady)},
        "wal_max_mib": {k: round(v / 2**20, 2) for k, v in run.wal_max.items()},
        "db_mib_end": round(file_size(db) / 2**20, 1),
        "backlog_max": max(s["backlog"] for s in steady),
        "put_per_s_median": statistics.median(achieved) if achieved else None,
        "claim_p50_ms_overall": tracker.hist_percentile(50),
        "claim_p99_ms_overall": tracker.hist_percentile(99),
        "claim_max_ms": max((s["claim_max_ms"] or 0) for s in steady),
        "gc_max_ms": max(s["gc_max_ms"] for s in steady),
        "full_collections": sum(s["full_collections"] for s in steady),
        "loop_lag_max_ms": max(s["loop_lag_max_ms"] for s in steady),
    }
    warnings_by_action: dict[str, int] = {}
    for r in catcher.records:
        key = str(r["action"])
        warnings_by_action[key] = warnings_by_action.get(key, 0) + 1
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "db": str(db),
        "durability": args.durability or "full (default)",
        "settings": {
            "minutes": args.minutes,
            "step_seconds": args.step_seconds,
            "ramp_start": args.ramp_start,
            "ramp_factor": args.ramp_factor,
            "interval": args.interval,
            "warm_up": warm_up,
            "concurrency": CONCURRENCY,
            "max_attempts": MAX_ATTEMPTS,
            "backoff_base": BACKOFF_BASE,
            "backoff_max": BACKOFF_MAX,
            "gc_freeze": args.gc_freeze,
            "plan": "1% of jobs nacked: 0.9% once (then done), 0.1% every attempt (dead)",
        },
        **run.result,
        "summary": summary,
        "verification": verification,
        "warnings_by_action": warnings_by_action,
        "warning_examples": [
            {k: v for k, v in r.items() if k != "t"} for r in catcher.records[:10]
        ],
        "criteria": [{k: v for k, v in c.items() if k != "drift"} for c in checks],
        "passed": all(c["pass"] for c in checks),
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "samples": run.samples,
    }
    print("\nresults:")
    print(
        f"  maximum {maximum:.1f} jobs/s; steady target {rate:.1f} jobs/s, "
        f"achieved put/s median {summary['put_per_s_median']}"
    )
    print(
        f"  RSS {summary['rss_mib']['min']:.1f}..{summary['rss_mib']['max']:.1f} MiB, fds "
        f"{summary['fds']['min']}..{summary['fds']['max']}, WAL max by phase "
        f"{summary['wal_max_mib']} MiB, db {summary['db_mib_end']} MiB, backlog max "
        f"{summary['backlog_max']}"
    )
    print(
        f"  claim latency overall (phase 2, first deliveries): p50 "
        f"{summary['claim_p50_ms_overall']} ms, p99 {summary['claim_p99_ms_overall']} ms, "
        f"max {summary['claim_max_ms']} ms; longest GC {summary['gc_max_ms']} ms "
        f"({summary['full_collections']} full collections), longest loop stall "
        f"{summary['loop_lag_max_ms']} ms"
    )
    print(
        f"  jobs {verification['jobs_put']}, deliveries {verification['deliveries']}, nacks "
        f"{verification['nacks']} ({verification['nack_rate'] * 100:.2f}%), redelivered "
        f"{verification['redelivered']}, wrong attempts {verification['wrong_attempts']}, "
        f"drain {run.result['drain_seconds']}s; library warnings {warnings_by_action or 'none'}"
    )
    for check in checks:
        print(f"  {'PASS' if check['pass'] else 'FAIL'}  {check['name']}: {check['figures']}")
    out = Path(args.json) if args.json else Path(tempfile.gettempdir()) / "persistq-soak.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"JSON: {out}")
    print("PASS" if report["passed"] else "FAIL")
    return 0 if report["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="steady phase (default 5)")
    parser.add_argument("--db", help="SQLite file to create (default: a temporary one)")
    parser.add_argument("--json", help="where to write the results")
    parser.add_argument("--step-seconds", type=float, default=4.0, help="phase 1 steps (4)")
    parser.add_argument("--ramp-start", type=float, default=800.0, help="first step (800/s)")
    parser.add_argument("--ramp-factor", type=float, default=1.15, help="step to step (1.15)")
    parser.add_argument("--load", type=float, default=0.7, help="share of the maximum (0.7)")
    parser.add_argument(
        "--maximum",
        type=float,
        help="skip phase 1 and take this as the maximum (jobs/s), e.g. to repeat a run's load",
    )
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between samples")
    parser.add_argument("--warm-up", type=float, help="seconds (default: 20%% of steady, 20..60)")
    parser.add_argument("--pin-seconds", type=float, default=30.0, help="phase 3 (30)")
    parser.add_argument("--after-seconds", type=float, default=10.0, help="after release (10)")
    parser.add_argument("--durability", choices=["full", "normal"], help="default: the library's")
    parser.add_argument("--quiet", action="store_true", help="no per-sample lines")
    parser.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="run the supervisor without gc_freeze (default: with it, as the worker command)",
    )
    args = parser.parse_args(argv)
    tmp: str | None = None
    if args.db:
        db = Path(args.db).resolve()
        if db.exists():
            parser.error(f"--db {db} exists; give a new file")
    else:
        tmp = tempfile.mkdtemp(prefix="persistq-soak-")
        db = Path(tmp) / "soak.db"
    try:
        return anyio.run(main_async, args, db)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
