"""CPU per job by component, for one caller's puts or a pool's cycle, on SQLite or PostgreSQL.

Three unprofiled runs give the process's CPU per job (``time.process_time``, every thread) and
the event loop thread's (``time.thread_time``); the rest is other threads' (on SQLite the
writer thread and aiosqlite's readers). One more run under cProfile, which sees only the event
loop's thread, splits that thread's median by where the code lives (each function's own time,
bucketed by module; waits in epoll left out). A profiler inflates call-heavy code, so read the
split as shares, not as exact microseconds.

    python benchmarks/cpu_budget.py put [--url URL] [--jobs 2000]
    python benchmarks/cpu_budget.py cycle [--url URL] [--jobs 2000] [--concurrency 16]

Without ``--url`` it uses a temporary SQLite file at ``durability="normal"``.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

import persistq_async as pq

#: Where a function's file lives -> the component it counts for (the first match wins).
PARTS = (
    ("persistq_async/store/direct", "persistq writer (store/direct, store/writer)"),
    ("persistq_async/store/writer", "persistq writer (store/direct, store/writer)"),
    ("persistq_async/store/ops", "persistq writer (store/direct, store/writer)"),
    ("persistq_async/store/", "persistq store (transactions, claims, reads)"),
    ("persistq_async/backends", "persistq backends"),
    ("persistq_async/pool", "persistq pool and execution"),
    ("persistq_async/_execution", "persistq pool and execution"),
    ("persistq_async/_steps", "persistq pool and execution"),
    ("persistq_async/", "persistq queue, job and the rest"),
    ("sqlalchemy", "SQLAlchemy (engine, pool, execution, greenlet)"),
    ("greenlet", "SQLAlchemy (engine, pool, execution, greenlet)"),
    ("asyncpg", "asyncpg"),
    ("aiosqlite", "aiosqlite"),
    ("anyio", "anyio (tasks, cancel scopes, events)"),
    ("asyncio", "asyncio event loop"),
    ("json", "JSON"),
)


def component(filename: str, function: str) -> str:
    """The component a profiled function's own time counts for."""
    if "epoll" in function or function == "select":
        return "wait"
    if "socket" in function or "selector_events" in filename:
        return "socket I/O"
    for part, name in PARTS:
        if part in filename:
            return name
    return "other (builtins)"


async def one_run(
    url: str, what: str, jobs: int, concurrency: int, profile: Any
) -> tuple[float, float]:
    """The process's and the loop thread's CPU seconds per job of one run (``profile``: a
    cProfile.Profile to enable, or None)."""
    async with pq.Queue(url, name=f"budget_{what}", durability="normal") as q:
        if what == "put":
            await q.put({"n": -1})  # opens the writer before the clock starts
            started, loop = time.process_time(), time.thread_time()
            if profile is not None:
                profile.enable()
            for n in range(jobs):
                await q.put({"n": n, "s": "x" * 20})
            if profile is not None:
                profile.disable()
            return (time.process_time() - started) / jobs, (time.thread_time() - loop) / jobs
        await q.put_many([{"n": n} for n in range(jobs)])
        done = 0
        finished = anyio.Event()

        async def handler(job: pq.Job) -> None:
            nonlocal done
            done += 1
            if done >= jobs:
                finished.set()

        started, loop = time.process_time(), time.thread_time()
        if profile is not None:
            profile.enable()
        async with pq.Supervisor(grace=1.0) as sup:
            await sup.add(q, handler, concurrency=concurrency)
            await finished.wait()
            if profile is not None:
                profile.disable()
            return (time.process_time() - started) / jobs, (time.thread_time() - loop) / jobs


async def budget(url: str | None, what: str, jobs: int, concurrency: int) -> None:
    """Print the median CPU per job and its split."""
    with tempfile.TemporaryDirectory(prefix="persistq-budget-") as tmp:
        target = url or str(Path(tmp) / "budget.db")
        runs = []
        for n in range(3):
            # A fresh database per run on SQLite; on PostgreSQL the queue is drained each time.
            where = target if url else str(Path(tmp) / f"budget{n}.db")
            runs.append(await one_run(where, what, jobs, concurrency, None))
        profile = cProfile.Profile()
        await one_run(
            target if url else str(Path(tmp) / "profiled.db"), what, jobs, concurrency, profile
        )
    cpu = statistics.median(r[0] for r in runs)
    loop = statistics.median(r[1] for r in runs)
    shares: collections.Counter[str] = collections.Counter()
    # {(file, line, function): (cc, nc, own time, cumulative time, callers)}
    stats: Any = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for (filename, _line, function), (_cc, _nc, own, _cum, _callers) in stats.items():
        shares[component(filename, function)] += own
    shares.pop("wait", None)
    total = sum(shares.values())
    print(
        f"{what}: median CPU {cpu * 1e6:.0f} us/job "
        f"(runs: {', '.join(f'{r[0] * 1e6:.0f}' for r in runs)}); "
        f"event loop thread {loop * 1e6:.0f}, other threads {(cpu - loop) * 1e6:.0f}"
    )
    for name, seconds in shares.most_common():
        print(f"  {name:50s} {seconds / total:6.1%}  ~{loop * 1e6 * seconds / total:6.1f} us/job")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["put", "cycle"])
    parser.add_argument("--url", default=None, help="a PostgreSQL URL (default: SQLite)")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    anyio.run(budget, args.url, args.what, args.jobs, args.concurrency)


if __name__ == "__main__":
    main()
