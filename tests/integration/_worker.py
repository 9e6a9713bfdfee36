"""Child processes for tests/integration/test_processes.py.

Run by path (``python tests/integration/_worker.py ROLE DB ...``) or as a module
(``python -m tests.integration._worker ROLE DB ...``). Each role opens the queue on the SQLite file
``DB``, prints one line per event on stdout (flushed at once, so a parent that kills the process
with SIGKILL knows exactly what had returned), and exits 0 when it finished cleanly. Any exception
escapes, so it shows on stderr and the exit status is not 0.

Roles:

- ``put DB N``: put N jobs one by one; print each id as its ``put`` returns.
- ``put-wait DB``: open the queue, print ``ready``; then for each ``go`` line on stdin put one job
  and print ``put <id> <time.monotonic() after the put returned>``; exit when stdin closes.
- ``lease DB LEASE_SECONDS``: get one job with a short lease, print ``leased <id> <attempts>``,
  then sleep until killed.
- ``consume DB LOG``: get jobs until a ``{"stop": true}`` job arrives (acked too); log
  ``claimed <id> <token>`` before and ``acked <id>`` after each ack, one line each, flushed.
- ``produce DB N STOPS``: put N jobs (singly and in batches of put_many), then STOPS stop jobs.
- ``cancel-get DB``: put a job, then get it inside a cancel scope that another task cancels the
  moment a plain sqlite3 connection sees the claim committed (the job ``running``); on the
  cancellation print ``cancelled <id>`` and SIGKILL itself at once, before any further await: a
  crash right after the ``CancelledError`` reached the caller. A get that won the race instead
  is acked (``got <id>``) and the round repeats.
- ``hold-lock DB``: plain sqlite3: ``BEGIN IMMEDIATE``, write a row, print ``locked``, sleep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import anyio
import anyio.lowlevel

import persistq_async as pq

QUEUE_NAME = "proc"
#: Longest any child waits for a job; a test that needs longer is broken, not slow.
GET_TIMEOUT = 30.0


def say(*parts: object) -> None:
    """One line on stdout, flushed so the parent sees it before any kill."""
    print(*parts, flush=True)


async def put(db: str, count: int) -> None:
    async with pq.Queue(db, name=QUEUE_NAME) as q:
        for i in range(count):
            job_id = await q.put({"i": i})
            say(job_id)


async def put_wait(db: str) -> None:
    async with pq.Queue(db, name=QUEUE_NAME) as q:
        say("ready")
        while line := await asyncio.to_thread(sys.stdin.readline):  # until stdin closes
            if line.strip() != "go":
                raise SystemExit(f"expected 'go' on stdin, got {line!r}")
            job_id = await q.put({"wake": True})
            say("put", job_id, repr(time.monotonic()))


async def lease(db: str, lease_seconds: float) -> None:
    async with pq.Queue(db, name=QUEUE_NAME, lease_seconds=lease_seconds) as q:
        job = await q.get(timeout=GET_TIMEOUT)
        say("leased", job.id, job.attempts)
        await asyncio.sleep(3600)  # hold the lease until SIGKILL


async def consume(db: str, log_path: str) -> None:
    # Leases far longer than the test, so no lease expires and each job is claimed once.
    async with pq.Queue(db, name=QUEUE_NAME, lease_seconds=300) as q:
        with Path(log_path).open("a", encoding="utf-8") as log:  # noqa: ASYNC230 (a test log)

            def record(line: str) -> None:
                log.write(line + "\n")
                log.flush()

            while True:
                job = await q.get(timeout=GET_TIMEOUT)
                record(f"claimed {job.id} {job.lease_token}")
                await job.ack()
                record(f"acked {job.id}")
                if isinstance(job.payload, dict) and job.payload.get("stop"):
                    return


async def produce(db: str, count: int, stops: int) -> None:
    async with pq.Queue(db, name=QUEUE_NAME) as q:
        i = 0
        while i < count:
            if i % 20 == 0 and count - i >= 5:
                ids = await q.put_many([{"i": i + k} for k in range(5)])
                i += 5
            else:
                ids = [await q.put({"i": i})]
                i += 1
            say(*ids)
        # Put last, so that under FIFO every real job is claimed before any stop job.
        for _ in range(stops):
            say(await q.put({"stop": True}))


async def cancel_get(db: str) -> None:
    async with pq.Queue(db, name=QUEUE_NAME) as q:
        watcher = sqlite3.connect(db, isolation_level=None)
        for _ in range(20):
            job_id = await q.put({"cancel": True})

            def state(job_id: int = job_id) -> str:
                return str(
                    watcher.execute(
                        "SELECT state FROM persistq_jobs WHERE id = ?", (job_id,)
                    ).fetchone()[0]
                )

            async def cancel_once_claimed(scope: anyio.CancelScope) -> None:
                while state() != "running":
                    await anyio.lowlevel.checkpoint()
                scope.cancel()

            got = None
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as scope:
                    tg.start_soon(cancel_once_claimed, scope)
                    got = await q.get(timeout=GET_TIMEOUT)
            if got is None:
                say("cancelled", job_id)
                os.kill(os.getpid(), signal.SIGKILL)
            await got.ack()
            say("got", got.id)
        raise SystemExit("no get was cancelled after its claim committed in 20 rounds")


def hold_lock(db: str) -> None:
    conn = sqlite3.connect(db, timeout=5, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE persistq_jobs SET priority = priority")
    say("locked")
    time.sleep(3600)  # hold the write lock until SIGKILL


def main(argv: list[str]) -> None:
    role, db, *rest = argv
    if role == "put":
        asyncio.run(put(db, int(rest[0])))
    elif role == "put-wait":
        asyncio.run(put_wait(db))
    elif role == "lease":
        asyncio.run(lease(db, float(rest[0])))
    elif role == "consume":
        asyncio.run(consume(db, rest[0]))
    elif role == "produce":
        asyncio.run(produce(db, int(rest[0]), int(rest[1])))
    elif role == "cancel-get":
        asyncio.run(cancel_get(db))
    elif role == "hold-lock":
        hold_lock(db)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
