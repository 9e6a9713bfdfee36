"""Worker process of the multi-process cycles in ``postgres.py`` and ``scaling.py``, one per worker.

Usage: ``python benchmarks/pg_worker_child.py URL QUEUE CONCURRENCY DURABILITY``

Opens the queue (a PostgreSQL URL or an SQLite file) and enters a Supervisor, prints ``ready``,
then waits for ``go`` on stdin before adding a pool with a no-op handler; so the parent times the
drain, not the interpreter start-up and imports. Runs until ``stop`` (or EOF) on stdin, leaves
the Supervisor (grace 1 s) and prints one JSON line: the jobs its pool processed and failed, and
the CPU seconds the process used from ``go`` to ``stop``.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import anyio

import persistq_async as pq


async def _noop(job: pq.Job) -> None:
    """The no-op handler: returning acks the job."""


async def _line() -> str:
    # A blocking read in a worker thread: the event loop keeps running the pool meanwhile.
    return (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()


async def main(url: str, queue: str, concurrency: int, durability: str) -> None:
    processed = failed = 0
    cpu = 0.0
    async with (
        pq.Queue(url, name=queue, durability=durability) as q,
        pq.Supervisor(grace=1.0) as sup,
    ):
        print("ready", flush=True)
        if await _line() == "go":
            cpu = time.process_time()
            pool = await sup.add(q, _noop, concurrency=concurrency)
            await _line()  # "stop", or EOF when the parent is gone
            processed, failed = pool.processed, pool.failed
            cpu = time.process_time() - cpu
        # Closing the PostgreSQL listener logs "disconnected; reconnecting": not news here.
        logging.getLogger("persistq_async").setLevel(logging.ERROR)
    print(json.dumps({"processed": processed, "failed": failed, "cpu_s": cpu}), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    anyio.run(main, a[0], a[1], int(a[2]), a[3])
