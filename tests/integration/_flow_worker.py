"""A worker process for tests/integration/test_flow_processes.py.

``python _flow_worker.py URL QUEUE CONCURRENCY HANDLER_SECONDS``: one pool of CONCURRENCY on
QUEUE whose handler sleeps HANDLER_SECONDS; prints ``ready`` once the pool runs, and leaves
gracefully (running handlers finish, leases of cancelled ones handed back) on SIGTERM. The
queue's flow control comes from the database, where the test set it.
"""

from __future__ import annotations

import signal
import sys

import anyio

import persistq_async as pq


async def main(url: str, queue: str, concurrency: int, handler_seconds: float) -> None:
    async def handler(job: pq.Job) -> None:
        await anyio.sleep(handler_seconds)

    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with (
            pq.Queue(url, name=queue, poll_interval=0.05) as q,
            pq.Supervisor(grace=5) as sup,
        ):
            await sup.add(q, handler, concurrency=concurrency)
            print("ready", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    url, queue, concurrency, seconds = sys.argv[1:5]
    anyio.run(main, url, queue, int(concurrency), float(seconds))
