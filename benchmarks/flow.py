"""The cost of flow control on the hot path: the pool cycle with and without ``max_running``.

Usage::

    python benchmarks/flow.py [--jobs N] [--repeats R] [--concurrency C] [--url URL]

The cycle is the one of ``pool_scenarios.pool_cycle``: ``--jobs`` jobs pre-filled with
``put_many``, then a ``Supervisor`` pool (``--concurrency`` slots, a no-op handler) drains them;
timed from just before ``Supervisor.add`` to ``await q.join()``. It runs in pairs, alternating:
the queue without flow control, then the same with ``max_running`` set far above the pool's
concurrency (every claim then locks the queue's settings row on PostgreSQL and counts its running
jobs), and with a rate limit far above the throughput. Each variant gets a fresh SQLite file (or,
with ``--url``, a fresh queue name on that database, purged afterwards). The table shows the
median jobs/s of each variant, its ratio to the plain cycle's median, and the median of the
ratios within each repeat (issue 16 asks for >= 0.9 with ``max_running``). Not part of the tests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

import persistq_async as pq

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "max_running": {"max_running": 100_000},
    "rate_limit": {"rate_limit": "1000000/s"},
}


async def _noop(job: pq.Job) -> None:
    """Returning acks the job."""


async def cycle(url: str, name: str, jobs: int, concurrency: int, options: dict[str, Any]) -> float:
    """One drain of ``jobs`` pre-filled jobs; jobs per second."""
    async with pq.Queue(url, name=name, **options) as q:
        for first in range(0, jobs, 1_000):
            await q.put_many([{"i": i} for i in range(first, min(first + 1_000, jobs))])
        async with pq.Supervisor(grace=1.0) as sup:
            start = time.perf_counter()
            pool = await sup.add(q, _noop, concurrency=concurrency)
            await q.join(timeout=300)
            seconds = time.perf_counter() - start
        assert pool.processed == jobs, (pool.processed, jobs)
        if not url.endswith(".db"):
            await q.purge("done")
        return jobs / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--url", default=None, help="a PostgreSQL URL (default: SQLite files)")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="persistq-flow-bench-") as tmp:
        for repeat in range(args.repeats):
            for variant, options in VARIANTS.items():
                url = args.url or str(Path(tmp) / f"{variant}-{repeat}.db")
                name = f"bench-{variant}-{uuid.uuid4().hex[:8]}"
                rate = anyio.run(cycle, url, name, args.jobs, args.concurrency, options)
                rates[variant].append(rate)
                print(f"repeat {repeat + 1} {variant:<12} {rate:8.0f} jobs/s", flush=True)
    plain = statistics.median(rates["plain"])
    backend = "PostgreSQL" if args.url else "SQLite"
    print(f"\n{backend}, {args.jobs} jobs, pool of {args.concurrency}, medians of {args.repeats}:")
    print("| variant | jobs/s | ratio of medians | median of paired ratios |\n|---|--:|--:|--:|")
    for variant in VARIANTS:
        median = statistics.median(rates[variant])
        # Each repeat runs the variants back to back: the ratio within a repeat cancels the
        # drift of a shared machine's load better than the ratio of the medians.
        paired = statistics.median(
            r / p for r, p in zip(rates[variant], rates["plain"], strict=True)
        )
        print(f"| {variant} | {median:,.0f} | {median / plain:.2f} | {paired:.2f} |")


if __name__ == "__main__":
    main()
