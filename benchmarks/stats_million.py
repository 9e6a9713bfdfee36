"""How long ``Queue.stats()`` takes on an SQLite database holding 1,000,000 jobs.

The database is built directly with sqlite3 (the library would take minutes to put, claim and
ack a million jobs): 950,000 done jobs, each with its acked attempt, finished over the last two
hours at an even rate (about 7,900 in the default 60-second window), 40,000 ready jobs and
10,000 delayed ones, in one queue. The schema is the library's own: a ``Queue`` creates it first.

Then ``stats()`` is timed (after one warm-up call) with the default window and with a one-hour
window, which holds about 475,000 deliveries: the counts cost the same whatever the window, the
window's part grows with the deliveries it holds, not with the table.

    python benchmarks/stats_million.py [--jobs 1000000] [--repeats 5] [--keep FILE]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import anyio

import persistq_async as pq

QUEUE = "bench"


async def create_schema(path: Path) -> None:
    async with pq.Queue(path, name=QUEUE):
        pass


def build(path: Path, jobs: int) -> float:
    """Fill ``path`` with ``jobs`` jobs; returns the seconds it took."""
    started = time.perf_counter()
    now = time.time()
    done = jobs * 95 // 100
    ready = jobs * 4 // 100
    scheduled = jobs - done - ready
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")  # building a fixture, not measuring durability
    span = 7200.0
    batch = 50_000
    with conn:
        for first in range(0, jobs, batch):
            job_rows = []
            attempt_rows = []
            for i in range(first, min(first + batch, jobs)):
                job_id = i + 1
                if i < done:
                    finished = now - span + span * i / done
                    started_at = finished - 0.01
                    put_at = started_at - 0.05
                    row = (job_id, QUEUE, "done", b"{}", 0, 1, 5, put_at, put_at, put_at)
                    job_rows.append((*row, started_at, finished))
                    attempt_rows.append(
                        (job_id, 1, "t", started_at, finished, "acked", started_at - 0.05)
                    )
                else:
                    run_at = now - 30.0 if i < done + ready else now + 3600.0
                    row = (job_id, QUEUE, "queued", b"{}", 0, 0, 5, run_at, now - 30.0)
                    job_rows.append((*row, now - 30.0, None, None))
            conn.executemany(
                "INSERT INTO persistq_jobs (id, queue, state, payload, priority, attempts,"
                " max_attempts, run_at, enqueued_at, created_at, started_at, finished_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                job_rows,
            )
            conn.executemany(
                "INSERT INTO persistq_attempts (job_id, attempt, lease_token, started_at,"
                " finished_at, outcome, ready_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                attempt_rows,
            )
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert scheduled >= 0
    return time.perf_counter() - started


async def measure(path: Path, repeats: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"60 s window": [], "1 h window": []}
    async with pq.Queue(path, name=QUEUE) as q:
        stats = await q.stats()  # warm-up: the page cache, the engine's first connection
        print(
            f"total {stats.total:,}, ready {stats.ready:,}, scheduled {stats.scheduled:,}, "
            f"done {stats.done:,}; in 60 s: {dict(stats.finished)}, lag {stats.lag:.1f}s, "
            f"run p50 {stats.run_time_p50}, wait p99 {stats.wait_time_p99}"
        )
        for _ in range(repeats):
            for label, window in (("60 s window", 60.0), ("1 h window", 3600.0)):
                started = time.perf_counter()
                await q.stats(window=window)
                timings[label].append(time.perf_counter() - started)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="build here and keep the file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="persistq-stats-") as tmp:
        path = args.keep or Path(tmp) / "million.db"
        anyio.run(create_schema, path)
        seconds = build(path, args.jobs)
        size = path.stat().st_size / 1e6
        print(f"built {args.jobs:,} jobs in {seconds:.1f}s ({size:.0f} MB)")
        timings = anyio.run(measure, path, args.repeats)
    for label, values in timings.items():
        ms = [v * 1000 for v in values]
        print(
            f"stats(), {label}: median {statistics.median(ms):.1f} ms "
            f"(min {min(ms):.1f}, max {max(ms):.1f}, {len(ms)} runs)"
        )


if __name__ == "__main__":
    main()
