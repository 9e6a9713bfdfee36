"""Child process of the backlog scenarios (run by ``pool_scenarios.py``), one per measurement.

Usage: ``python benchmarks/backlog_child.py DB QUEUE DURABILITY DRAIN CAP CONCURRENCY``

Opens the queue (already holding its backlog), starts a Supervisor pool with a no-op handler and
times how long it takes to finish the first DRAIN jobs (or stops after CAP seconds). Runs in its
own process so the peak RSS it reports is the drain's alone: the high-water mark is reset
(``/proc/self/clear_refs``, Linux) once the queue is open, and read back after the drain;
elsewhere it falls back to ``ru_maxrss`` over the process's life. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import anyio

import persistq_async as pq


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def main(db: str, queue: str, durability: str, drain: int, cap: float, conc: int) -> None:
    first: list[float] = []

    async def handler(job: pq.Job) -> None:
        if not first:
            first.append(time.perf_counter())

    async with pq.Queue(db, name=queue, durability=durability) as q:
        rss_before = _status_kb("VmRSS")
        reset = _reset_peak()
        async with pq.Supervisor(grace=1.0) as sup:
            start = time.perf_counter()
            pool = await sup.add(q, handler, concurrency=conc)
            deadline = start + cap
            # Polls the pool's own counter (nothing signals it); 2 ms is noise beside seconds.
            while pool.processed < drain and time.perf_counter() < deadline:  # noqa: ASYNC110
                await anyio.sleep(0.002)
            seconds = time.perf_counter() - start
            done = pool.processed
            peak = _status_kb("VmHWM") if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "ops": done,
                "seconds": seconds,
                "peak_rss_mb": peak / 1024,
                "rss_before_mb": (rss_before or 0) / 1024,
                "first_claim_ms": ((first[0] - start) * 1e3) if first else -1.0,
            }
        )
    )


if __name__ == "__main__":
    a = sys.argv[1:]
    anyio.run(main, a[0], a[1], a[2], int(a[3]), float(a[4]), int(a[5]))
