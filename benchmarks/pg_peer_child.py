"""Worker process of the peers in ``postgres.py``'s cycles (persistq_async's is
``pg_worker_child.py``; both speak the same protocol).

Usage: ``python benchmarks/pg_peer_child.py SYSTEM DSN CONCURRENCY``, SYSTEM one of
``pgqueuer``, ``pgqueuer-batch16``, ``procrastinate``, ``asyncpg``.

Connects and imports first and prints ``ready``; on ``go`` (stdin) starts working the queue
``bench`` with a no-op handler and CONCURRENCY slots, until ``stop`` (or EOF); then prints one
JSON line: the jobs it processed and the CPU seconds it used from ``go`` to ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import asyncpg

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from pg_systems import NAME, RAW_CLAIM, RAW_DONE, procrastinate_app

#: A raw worker with nothing to claim waits this long before trying again (the jobs are
#: pre-filled, so it only waits at the very end).
RAW_IDLE = 0.01


class Counter:
    """Jobs the handler ran, and the process's CPU seconds at "go" and at "stop"."""

    processed = 0
    cpu_go = 0.0
    cpu_stop = 0.0

    @classmethod
    def count(cls) -> None:
        """One more job ran."""
        cls.processed += 1


async def _line() -> str:
    said: str = await asyncio.to_thread(sys.stdin.readline)
    return said.strip()


async def _go() -> bool:
    """Wait for "go" (True) or anything else (False); the CPU clock starts at "go"."""
    said = await _line()
    Counter.cpu_go = time.process_time()
    return said == "go"


async def _work_until_stop(
    start: Callable[[], Coroutine[Any, Any, None]], stop: Callable[[], None]
) -> None:
    """Run ``start()`` as a task until "stop" arrives, then ``stop()`` it and wait for it."""
    task = asyncio.create_task(start())
    line = asyncio.create_task(_line())
    done, _ = await asyncio.wait({task, line}, return_when=asyncio.FIRST_COMPLETED)
    Counter.cpu_stop = time.process_time()
    if task in done:  # it ended by itself: an error, raise it here
        task.result()
    stop()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(task, 10)
    if not line.done():
        line.cancel()


async def _pgqueuer(dsn: str, concurrency: int, batch16: bool) -> None:
    from pgqueuer import Queries, QueueManager
    from pgqueuer.models import Job

    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries.from_asyncpg_connection(conn))

    @qm.entrypoint(NAME)
    async def handler(job: Job) -> None:
        Counter.count()

    kwargs: dict[str, Any] = {}
    if batch16:
        kwargs = {"batch_size": concurrency, "max_concurrent_tasks": 2 * concurrency}
    print("ready", flush=True)
    if await _go():
        await _work_until_stop(
            lambda: qm.run(dequeue_timeout=timedelta(seconds=30), **kwargs),
            qm.shutdown.set,
        )
    await conn.close()


async def _procrastinate(dsn: str, concurrency: int) -> None:
    app = procrastinate_app(dsn, on_run=Counter.count)
    async with app.open_async():
        print("ready", flush=True)
        if await _go():
            runner: asyncio.Task[None] | None = None

            async def run() -> None:
                await app.run_worker_async(
                    queues=[NAME],
                    concurrency=concurrency,
                    wait=True,
                    install_signal_handlers=False,
                )

            def stop() -> None:
                if runner is not None:
                    runner.cancel()

            async def start() -> None:
                nonlocal runner
                runner = asyncio.create_task(run())
                with contextlib.suppress(asyncio.CancelledError):
                    await runner

            await _work_until_stop(start, stop)


async def _raw(dsn: str, concurrency: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    stopping = asyncio.Event()

    async def slot() -> None:
        async with pool.acquire() as conn:
            while not stopping.is_set():
                row = await conn.fetchrow(RAW_CLAIM)
                if row is None:
                    await asyncio.sleep(RAW_IDLE)
                    continue
                json.loads(row["payload"])  # the handler's input, as the others decode it
                Counter.count()
                await conn.execute(RAW_DONE, row["id"])

    async def start() -> None:
        await asyncio.gather(*(slot() for _ in range(concurrency)))

    print("ready", flush=True)
    if await _go():
        await _work_until_stop(start, stopping.set)
    await pool.close()


async def main(system: str, dsn: str, concurrency: int) -> None:
    if system in ("pgqueuer", "pgqueuer-batch16"):
        await _pgqueuer(dsn, concurrency, system == "pgqueuer-batch16")
    elif system == "procrastinate":
        await _procrastinate(dsn, concurrency)
    elif system == "asyncpg":
        await _raw(dsn, concurrency)
    else:
        raise SystemExit(f"unknown system {system!r}")
    cpu = max(0.0, Counter.cpu_stop - Counter.cpu_go)
    print(json.dumps({"processed": Counter.processed, "failed": 0, "cpu_s": cpu}), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], int(a[2])))
