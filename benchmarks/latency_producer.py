"""Child process of the cross-process latency scenario (run by ``pool_scenarios.py``).

Usage: ``python benchmarks/latency_producer.py DB QUEUE COUNT DURABILITY``

Opens the queue on the same SQLite file as the parent and puts COUNT jobs, one at a time,
10 to 40 ms apart (spread, so the gaps do not lock in phase with the parent's poll), each with
``time.time()`` taken just before ``put`` in the payload as ``ts``.
"""

from __future__ import annotations

import random
import sys
import time

import anyio

import persistq_async as pq


async def main(db: str, queue: str, count: int, durability: str) -> None:
    rng = random.Random(4)
    async with pq.Queue(db, name=queue, durability=durability) as q:
        await anyio.sleep(0.2)  # let the parent's pool settle into its idle wait
        for i in range(count):
            await q.put({"n": i, "to": "user@example.org", "ts": time.time()})
            await anyio.sleep(rng.uniform(0.010, 0.040))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
