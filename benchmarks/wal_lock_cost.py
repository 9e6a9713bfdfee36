"""What the cross-process WAL lock costs (docs/architecture.md, "the WAL lock"): the same work
with the lock file's ``flock`` and without it (the in-process lock alone, as before the lock
was shared).

Usage::

    python benchmarks/wal_lock_cost.py [--repeats 3] [--jobs 2000] [--processes 3]

Scenarios, each at durability "normal" (fsync at checkpoints only, so the lock's own cost is not
hidden behind an fsync per commit) and "full":

- one caller putting jobs one by one (one batch, one lock hold, per put);
- one caller claiming and acking them one by one;
- ``--processes`` processes putting at once on one file (the lock then also decides who waits).

Each repeat runs every variant in turn (interleaved), and the medians are printed. Not part of
the tests. On a shared machine the figures move by tens of percent from run to run: compare the
two columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

import persistq_async as pq
from persistq_async.backends import wal_lock


def _set_flock(enabled: bool) -> None:
    if enabled:
        import fcntl

        wal_lock.fcntl = fcntl
    else:
        wal_lock.fcntl = None  # type: ignore[assignment]


async def _puts(db: Path, jobs: int, durability: str) -> float:
    async with pq.Queue(db, name="bench", durability=durability) as q:
        began = time.perf_counter()
        for n in range(jobs):
            await q.put({"n": n})
        return jobs / (time.perf_counter() - began)


async def _claims(db: Path, jobs: int, durability: str) -> float:
    async with pq.Queue(db, name="bench", durability=durability) as q:
        await q.put_many([{"n": n} for n in range(jobs)])
        began = time.perf_counter()
        while (job := await q.get_nowait()) is not None:
            await job.ack()
        return jobs / (time.perf_counter() - began)


def _child(db: str, jobs: int, durability: str, flock: bool) -> None:
    _set_flock(flock)
    anyio.run(_puts, Path(db), jobs, durability)


def _processes(db: Path, jobs: int, durability: str, flock: bool, count: int) -> float:
    anyio.run(_open, db)  # the schema exists before the children race
    began = time.perf_counter()
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", str(db), str(jobs), durability, str(int(flock))]
        )
        for _ in range(count)
    ]
    for child in children:
        if child.wait(timeout=600) != 0:
            raise SystemExit("a child failed")
    return count * jobs / (time.perf_counter() - began)


async def _open(db: Path) -> None:
    async with pq.Queue(db, name="bench"):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        db, jobs, durability, flock = args.child
        _child(db, int(jobs), durability, flock == "1")
        return
    results: dict[tuple[str, str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for durability in ("normal", "full"):
                for flock in (True, False):
                    _set_flock(flock)
                    for name in ("put", "claim+ack", f"put, {args.processes} processes"):
                        db = Path(tmp) / f"r{repeat}-{durability}-{flock}-{len(results)}.db"
                        if name == "put":
                            rate = anyio.run(_puts, db, args.jobs, durability)
                        elif name == "claim+ack":
                            rate = anyio.run(_claims, db, args.jobs, durability)
                        else:
                            rate = _processes(
                                db, args.jobs // args.processes, durability, flock, args.processes
                            )
                        results.setdefault((name, durability, flock), []).append(rate)
    _set_flock(True)
    print(f"jobs/s, medians of {args.repeats}, SQLite {sqlite3.sqlite_version}")
    print("| scenario | durability | with flock | in-process lock only | ratio |")
    print("|---|---|--:|--:|--:|")
    for (name, durability, flock), rates in results.items():
        if not flock:
            continue
        with_lock = statistics.median(rates)
        without = statistics.median(results[(name, durability, False)])
        print(
            f"| {name} | {durability} | {with_lock:,.0f} | {without:,.0f} | "
            f"{with_lock / without:.2f} |"
        )


if __name__ == "__main__":
    main()
