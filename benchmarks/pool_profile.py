"""CPU per job of the Supervisor pool's cycle, and where it goes (a diagnostic, not a benchmark).

Usage::

    python benchmarks/pool_profile.py [--url URL] [--durability normal] [--jobs 5000]
        [--concurrency 64] [--rounds 3] [--cprofile] [--top 30]

Pre-fills ``--jobs`` jobs with ``put_many`` (not measured), then a pool with a no-op handler
drains them to ``join()``, as ``run.py``'s ``persistq.pool.cycle`` does. Without ``--url`` the
queue is an SQLite file in a temporary directory; the drain ends when the pool has processed
every job (``--join``: when ``q.join()`` returns, as in ``run.py``, which adds join's own count
after every commit); with a PostgreSQL URL each round uses a fresh
queue name in that database (and deletes its rows afterwards). Per round it prints:

- ``cpu/job``: the whole process's CPU (``time.process_time``: the event loop, the writer
  thread, the driver's threads) per job;
- ``loop/job``: the event-loop thread's own CPU (``time.thread_time`` read on that thread);
- ``rest/job``: the difference (the writer thread and the driver threads).

The CPU a PostgreSQL server spends is not included (it is another process). With ``--cprofile``
one more round runs under cProfile (on the event-loop thread only) and the table splits the
loop's time into the pool's components: the claim loop (waiting and claiming, ``Queue.claim``
and the jobs it makes), starting an executor (the task, the cancel scope, the bookkeeping), the
handler's step timing, recording the outcome (``Job.ack`` and the write it submits), events,
logging; then the top functions by own time. cProfile inflates every Python call, so read its
split as proportions, and the unprofiled rounds for the totals.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
from common import payload

import persistq_async as pq

# Functions whose inclusive (cumulative) time names a component, as ``file:function`` suffixes
# of cProfile's keys; the first match of a row wins, so nested components are listed first.
COMPONENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "events (hub.emit)": (("metrics.py", "emit"),),
    "logging (log_event)": (("monitoring.py", "log_event"),),
    "handler-step timing": (("_steps.py", "__await__"), ("_steps.py", "_check")),
    "outcome write submit (settle/ack)": (("pool.py", "_settle"),),
    "claim loop (claim + wait)": (("pool.py", "_claim_loop"),),
    "executor start": (("pool.py", "_start"),),
    "executor (rest of _execute)": (("pool.py", "_execute"),),
}


async def _noop(job: pq.Job) -> None:
    """The no-op handler: returning acks the job."""


async def _prefill(q: pq.Queue, jobs: int) -> None:
    for first in range(0, jobs, 1_000):
        await q.put_many([payload(i) for i in range(first, min(first + 1_000, jobs))])


async def _drain(
    q: pq.Queue, jobs: int, concurrency: int, join: bool
) -> tuple[int, float, float, float]:
    async with pq.Supervisor(grace=1.0) as sup:
        wall = time.perf_counter()
        cpu = time.process_time()
        loop = time.thread_time()
        pool = await sup.add(q, _noop, concurrency=concurrency)
        with anyio.move_on_after(120):
            if join:
                await q.join()
            else:
                # Not join(): it counts the queue's active jobs after every commit that
                # changed it, which is the waiter's cost, not the pool's.
                while pool.processed < jobs:  # noqa: ASYNC110 - a poll, cheaper than join
                    await anyio.sleep(0.005)
        loop = time.thread_time() - loop
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
        return pool.processed, wall, cpu, loop


async def _cycle(
    url: str, durability: str, jobs: int, concurrency: int, join: bool
) -> tuple[int, float, float, float]:
    # Named steps, so that a sampling profiler's stacks tell the drain from the rest.
    name = f"prof_{uuid.uuid4().hex[:8]}"
    async with pq.Queue(url, name=name, durability=durability) as q:
        await _prefill(q, jobs)
        result = await _drain(q, jobs, concurrency, join)
        await q.purge("done")  # a PostgreSQL database is shared by the rounds
    return result


def _components(stats: pstats.Stats) -> dict[str, float]:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    found: dict[str, float] = {}
    for label, keys in COMPONENTS.items():
        total = 0.0
        for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in raw.items():
            if any(file.endswith(f) and func == fn for f, fn in keys):
                total += ct
        found[label] = total
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=None)
    parser.add_argument("--durability", default="normal")
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--join", action="store_true", help="end the drain with q.join(), as run.py does"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pqprof-"))

    def url(i: int) -> str:
        return args.url or str(tmp / f"r{i}.db")

    cpus: list[float] = []
    loops: list[float] = []
    for i in range(args.rounds):
        done, wall, cpu, loop = anyio.run(
            _cycle, url(i), args.durability, args.jobs, args.concurrency, args.join
        )
        cpus.append(cpu / done)
        loops.append(loop / done)
        print(
            f"round {i}: {done} jobs in {wall:.2f}s ({done / wall:,.0f}/s) "
            f"cpu/job {cpu / done * 1e6:.0f} us, loop/job {loop / done * 1e6:.0f} us, "
            f"rest/job {(cpu - loop) / done * 1e6:.0f} us"
        )
    if args.rounds:
        c, lp = statistics.median(cpus), statistics.median(loops)
        print(
            f"median: cpu/job {c * 1e6:.0f} us, loop/job {lp * 1e6:.0f} us, "
            f"rest/job {(c - lp) * 1e6:.0f} us"
        )
    if not args.cprofile:
        return
    prof = cProfile.Profile()

    async def profiled() -> tuple[int, float, float, float]:
        assert threading.current_thread() is threading.main_thread()
        prof.enable()
        try:
            return await _cycle(
                url(args.rounds), args.durability, args.jobs, args.concurrency, args.join
            )
        finally:
            prof.disable()

    done, _wall, _cpu, _loop = anyio.run(profiled)
    stats = pstats.Stats(prof)
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in stats.stats.values())  # type: ignore[attr-defined]
    print(f"\ncProfile of the event-loop thread: {total / done * 1e6:.0f} us/job (profiled)")
    for label, seconds in _components(stats).items():
        print(f"  {label:38s} {seconds / done * 1e6:7.1f} us/job  {seconds / total:6.1%}")
    print()
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
