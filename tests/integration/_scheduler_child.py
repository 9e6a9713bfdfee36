"""Child processes for tests/integration/test_scheduler_processes.py.

Run by path: ``python tests/integration/_scheduler_child.py ROLE URL QUEUE ...``. Each prints one
line per event on stdout, flushed at once, and exits 0 when it finished cleanly.

Roles:

- ``tick URL QUEUE``: declare the per-second schedule ``every-second`` (every child declares
  it: declaring is idempotent), run a Supervisor with a pool on QUEUE (handlers ack with the
  job's ``run_at``), print ``ready <pid>``, and run until SIGTERM (graceful) or SIGKILL.
- ``ack URL QUEUE``: take one job, ack it with ``{"doubled": payload * 2}``, print ``acked <id>``.
"""

from __future__ import annotations

import os
import signal
import sys

import anyio

import persistq_async as pq

SCHEDULE = "every-second"


def say(*parts: object) -> None:
    """One line on stdout, flushed so the parent sees it before any kill."""
    print(*parts, flush=True)


async def tick(url: str, queue: str) -> None:
    async def handler(job: pq.Job) -> float:
        return job.enqueued_at.timestamp()

    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with pq.Queue(url, name=queue, poll_interval=0.05) as q:
            await q.schedule(SCHEDULE, cron="* * * * * *", payload={"tick": True}, catch_up="all")
            async with pq.Supervisor(grace=2.0) as sup:
                await sup.add(q, handler, concurrency=4)
                say("ready", os.getpid())
                async for _ in signals:
                    break
    say("stopped")


async def ack(url: str, queue: str) -> None:
    async with pq.Queue(url, name=queue, poll_interval=0.05) as q:
        job = await q.get(timeout=30)
        await job.ack({"doubled": job.payload * 2})
        say("acked", job.id)


def main() -> None:
    role, url, queue = sys.argv[1:4]
    roles = {"tick": tick, "ack": ack}
    anyio.run(roles[role], url, queue)


if __name__ == "__main__":
    main()
