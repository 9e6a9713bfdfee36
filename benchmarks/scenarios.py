"""persistq_async's own scenarios: puts (sequential, 100 producers, put_many) and get+ack cycles.

Each scenario opens a fresh queue on a temporary SQLite file, so no run sees another's rows,
and times only the work: opening the queue (schema creation) and preloading the jobs a cycle
consumes stay outside the timed part.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
from common import Deadline, Sample, Sizes, payload

import persistq_async as pq

__all__ = ["cycle_concurrent", "cycle_sequential", "put_concurrent", "put_many", "put_sequential"]


def _queue(tmp: Path, durability: str) -> pq.Queue:
    return pq.Queue(tmp / "persistq.db", name="bench", durability=durability)


def put_sequential(durability: str) -> Any:
    """One caller awaiting each ``put`` in turn: the latency-bound case group commit cannot help."""

    async def main(tmp: Path, sizes: Sizes) -> Sample:
        async with _queue(tmp, durability) as q:
            done = 0
            deadline = Deadline(sizes.time_cap)
            start = time.perf_counter()
            for i in range(sizes.seq_puts):
                await q.put(payload(i))
                done += 1
                if deadline.passed():
                    break
            return Sample(done, time.perf_counter() - start)

    return lambda tmp, sizes: anyio.run(main, tmp, sizes)


def put_concurrent(durability: str) -> Any:
    """``sizes.producers`` tasks calling ``put`` at once: where group commit should shine."""

    async def main(tmp: Path, sizes: Sizes) -> Sample:
        async with _queue(tmp, durability) as q:
            done = 0
            deadline = Deadline(sizes.time_cap)

            async def producer(first: int) -> None:
                nonlocal done
                for i in range(first, first + sizes.puts_per_producer):
                    await q.put(payload(i))
                    done += 1
                    if deadline.passed():
                        return

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for p in range(sizes.producers):
                    tg.start_soon(producer, p * sizes.puts_per_producer)
            return Sample(done, time.perf_counter() - start)

    return lambda tmp, sizes: anyio.run(main, tmp, sizes)


def put_many(durability: str) -> Any:
    """``put_many`` in batches of ``sizes.put_many_batch``: the bulk-load path."""

    async def main(tmp: Path, sizes: Sizes) -> Sample:
        async with _queue(tmp, durability) as q:
            done = 0
            deadline = Deadline(sizes.time_cap)
            start = time.perf_counter()
            for first in range(0, sizes.put_many_rows, sizes.put_many_batch):
                batch = range(first, min(first + sizes.put_many_batch, sizes.put_many_rows))
                await q.put_many([payload(i) for i in batch])
                done += len(batch)
                if deadline.passed():
                    break
            return Sample(done, time.perf_counter() - start)

    return lambda tmp, sizes: anyio.run(main, tmp, sizes)


async def _preload(q: pq.Queue, count: int, batch: int) -> None:
    for first in range(0, count, batch):
        await q.put_many([payload(i) for i in range(first, min(first + batch, count))])


def cycle_sequential(durability: str) -> Any:
    """One consumer: ``job = await q.get_nowait(); await job.ack()`` until done."""

    async def main(tmp: Path, sizes: Sizes) -> Sample:
        async with _queue(tmp, durability) as q:
            await _preload(q, sizes.cycles, sizes.put_many_batch)
            done = 0
            deadline = Deadline(sizes.time_cap)
            start = time.perf_counter()
            while done < sizes.cycles:
                job = await q.get_nowait()
                if job is None:
                    break
                await job.ack()
                done += 1
                if deadline.passed():
                    break
            return Sample(done, time.perf_counter() - start)

    return lambda tmp, sizes: anyio.run(main, tmp, sizes)


def cycle_concurrent(durability: str) -> Any:
    """``sizes.consumers`` tasks each looping get_nowait/ack until none is left."""

    async def main(tmp: Path, sizes: Sizes) -> Sample:
        async with _queue(tmp, durability) as q:
            await _preload(q, sizes.cycles, sizes.put_many_batch)
            done = 0
            deadline = Deadline(sizes.time_cap)

            async def consumer() -> None:
                nonlocal done
                while not deadline.passed():
                    job = await q.get_nowait()
                    if job is None:
                        return
                    await job.ack()
                    done += 1

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(sizes.consumers):
                    tg.start_soon(consumer)
            return Sample(done, time.perf_counter() - start)

    return lambda tmp, sizes: anyio.run(main, tmp, sizes)
