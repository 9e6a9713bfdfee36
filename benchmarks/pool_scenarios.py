"""Scenarios through a ``Supervisor`` pool: the full cycle, put-to-start latency, large backlogs.

- :func:`pool_cycle`: ``sizes.pool_jobs`` jobs pre-filled with ``put_many``, then a pool with a
  no-op async handler (concurrency ``sizes.pool_concurrency``) drains them; timed from just
  before ``Supervisor.add`` (whose pool claims at once) to ``await q.join()`` returning.
- :func:`latency_local`: an idle queue, a pool of concurrency 1 whose handler records
  ``time.perf_counter()`` on entry; the producer records it before ``put``. One job at a time,
  a few ms apart; p50/p99 of the difference.
- :func:`latency_remote`: the same, but a child process (``latency_producer.py``) puts the jobs
  with ``time.time()`` in the payload, so the pool in this process only learns of them through
  the database (its change-token poll); p50/p99 of ``time.time() - payload["ts"]`` at handler
  start.
- :func:`backlog_cycle`: the pool cycle on a queue holding ``N`` jobs, drain the first
  ``sizes.backlog_drain`` (or until ``sizes.backlog_cap`` seconds). The backlog is pre-filled
  once per run with ``put_many`` (batches of ``sizes.backlog_batch``) into a template file that
  each repeat copies; the drain runs in a child process (``backlog_child.py``) so its peak RSS
  is its own.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
from common import Sample, Sizes, payload

import persistq_async as pq

__all__ = ["backlog_cycle", "latency_local", "latency_remote", "percentile", "pool_cycle"]

HERE = Path(__file__).resolve().parent
QUEUE = "bench"


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def prefill(q: pq.Queue, count: int, batch: int) -> float:
    """Put ``count`` jobs with ``put_many`` in batches; returns the seconds it took."""
    start = time.perf_counter()
    for first in range(0, count, batch):
        await q.put_many([payload(i) for i in range(first, min(first + batch, count))])
    return time.perf_counter() - start


async def _noop(job: pq.Job) -> None:
    """The no-op handler: returning acks the job."""


def pool_cycle(durability: str) -> Any:
    """Pre-fill ``sizes.pool_jobs``, then time a 64-slot pool draining them to ``join()``."""

    async def main(tmp: Path, sizes: Sizes) -> Sample:
        async with pq.Queue(tmp / "persistq.db", name=QUEUE, durability=durability) as q:
            await prefill(q, sizes.pool_jobs, 1_000)
            async with pq.Supervisor(grace=1.0) as sup:
                start = time.perf_counter()
                pool = await sup.add(q, _noop, concurrency=sizes.pool_concurrency)
                with anyio.move_on_after(sizes.pool_cap):
                    await q.join()
                seconds = time.perf_counter() - start
                done = pool.processed
                return Sample(done, seconds, {"failed": float(pool.failed)})

    return lambda tmp, sizes: anyio.run(main, tmp, sizes)


def _latency_extra(latencies_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms),
        "mean_ms": statistics.fmean(latencies_ms),
    }


def _where(tmp: Path, url: str | None) -> tuple[str, str]:
    """The database and queue name of a latency measurement: a new SQLite file in ``tmp``, or
    a fresh queue name in the database at ``url`` (which other measurements may share)."""
    if url is None:
        return str(tmp / "persistq.db"), QUEUE
    return url, f"{QUEUE}_{uuid.uuid4().hex[:10]}"


async def _purge(q: pq.Queue, url: str | None) -> None:
    if url is not None:  # a shared database: leave it as it was
        await q.purge("done")


def latency_local(durability: str, *, url: str | None = None) -> Any:
    """Put one job at a time on an idle queue; time from before ``put`` to handler entry.

    :param url: a database URL (PostgreSQL); by default a new SQLite file per measurement.
    """

    async def main(tmp: Path, sizes: Sizes) -> Sample:
        db, name = _where(tmp, url)
        async with pq.Queue(db, name=name, durability=durability) as q:
            started: dict[int, float] = {}
            arrived = anyio.Event()

            async def handler(job: pq.Job) -> None:
                nonlocal arrived
                started[job.payload["n"]] = time.perf_counter()
                arrived.set()

            latencies: list[float] = []
            began = time.perf_counter()
            async with pq.Supervisor(grace=1.0) as sup:
                await sup.add(q, handler, concurrency=1)
                await anyio.sleep(0.05)  # the pool is idle, waiting for work
                for i in range(sizes.latency_samples):
                    arrived = anyio.Event()
                    before = time.perf_counter()
                    await q.put(payload(i))
                    with anyio.move_on_after(5.0):
                        await arrived.wait()
                    if i in started:
                        latencies.append((started[i] - before) * 1e3)
                    await anyio.sleep(0.003 + 0.002 * (i % 3))  # idle again, a few ms apart
            await _purge(q, url)
            if not latencies:
                raise RuntimeError("no job reached the handler")
            return Sample(len(latencies), time.perf_counter() - began, _latency_extra(latencies))

    return lambda tmp, sizes: anyio.run(main, tmp, sizes)


def latency_remote(durability: str, *, url: str | None = None) -> Any:
    """A child process puts jobs stamped with ``time.time()``; this process's pool runs them.

    :param url: a database URL (PostgreSQL: the pool learns of the jobs by ``LISTEN/NOTIFY``);
        by default a new SQLite file per measurement (the pool sees the child's commits through
        its change-token poll).
    """

    async def main(tmp: Path, sizes: Sizes) -> Sample:
        db, name = _where(tmp, url)
        count = sizes.remote_samples
        async with pq.Queue(db, name=name, durability=durability) as q:
            latencies: list[float] = []
            all_in = anyio.Event()

            async def handler(job: pq.Job) -> None:
                latencies.append((time.time() - job.payload["ts"]) * 1e3)
                if len(latencies) >= count:
                    all_in.set()

            began = time.perf_counter()
            async with pq.Supervisor(grace=1.0) as sup:
                await sup.add(q, handler, concurrency=1)
                child = await anyio.open_process(
                    [
                        sys.executable,
                        str(HERE / "latency_producer.py"),
                        db,
                        name,
                        str(count),
                        durability,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=None,
                )
                try:
                    with anyio.move_on_after(30.0 + count * 0.1):
                        await all_in.wait()
                finally:
                    rc = await child.wait()
            await _purge(q, url)
            if rc != 0:
                raise RuntimeError(f"latency_producer.py exited with {rc}")
            if not latencies:
                raise RuntimeError("no job from the child process reached the handler")
            return Sample(len(latencies), time.perf_counter() - began, _latency_extra(latencies))

    return lambda tmp, sizes: anyio.run(main, tmp, sizes)


# ---------------------------------------------------------------------------- backlogs

_templates: dict[int, tuple[Path, float]] = {}
_template_dir: Path | None = None


def _template(count: int, batch: int) -> tuple[Path, float]:
    """A database holding ``count`` queued jobs, made once per run; returns it and the seconds
    ``put_many`` took to fill it."""
    global _template_dir
    if count in _templates:
        return _templates[count]
    if _template_dir is None:
        _template_dir = Path(tempfile.mkdtemp(prefix="pqbench-backlogs-"))
        atexit.register(shutil.rmtree, _template_dir, True)
    path = _template_dir / f"backlog-{count}.db"

    async def fill() -> float:
        # durability="normal" only for the fill: it is not what is measured, and the file is the
        # same either way (durability is a per-connection pragma, not stored in the file).
        async with pq.Queue(path, name=QUEUE, durability="normal") as q:
            return await prefill(q, count, batch)

    print(f"  pre-filling {count:,} jobs with put_many (batches of {batch:,}) ...", file=sys.stderr)
    seconds = anyio.run(fill)
    print(
        f"  pre-filled {count:,} jobs in {seconds:.1f} s ({count / seconds:,.0f} jobs/s)",
        file=sys.stderr,
    )
    _templates[count] = (path, seconds)
    return path, seconds


def _copy_db(src: Path, dst: Path) -> None:
    for suffix in ("", "-wal"):
        s = Path(str(src) + suffix)
        if s.exists():
            shutil.copyfile(s, Path(str(dst) + suffix))


def backlog_cycle(durability: str, which: str) -> Any:
    """Drain the first jobs of a large backlog (``which``: "small" or "large") in a child."""

    def run(tmp: Path, sizes: Sizes) -> Sample:
        count = sizes.backlog_small if which == "small" else sizes.backlog_large
        template, fill_seconds = _template(count, sizes.backlog_batch)
        db = tmp / "persistq.db"
        _copy_db(template, db)
        drain = min(count, sizes.backlog_drain)
        out = subprocess.run(
            [
                sys.executable,
                str(HERE / "backlog_child.py"),
                str(db),
                QUEUE,
                durability,
                str(drain),
                str(sizes.backlog_cap),
                str(sizes.pool_concurrency),
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        return Sample(
            doc["ops"],
            doc["seconds"],
            {
                "backlog": float(count),
                "peak_rss_mb": doc["peak_rss_mb"],
                "rss_before_mb": doc["rss_before_mb"],
                "prefill_s": fill_seconds,
                "prefill_rate": count / fill_seconds,
                "first_claim_ms": doc["first_claim_ms"],
            },
        )

    return run
