"""Producer and worker processes for tests/reliability/test_chaos.py (not a test module).

Run as ``python -m tests.reliability._chaos_child ROLE --db DB --log-dir DIR --tag TAG ...``.
Each process appends its history (see :mod:`tests.reliability._history`) to
``DIR/ROLE-TAG-PID.jsonl``, one flushed line per event, so a ``kill -9`` loses nothing that had
happened. SIGTERM stops it cleanly: a producer after its current put, a worker by leaving its
``Supervisor`` (running handlers finish or hand their leases back) or after its current job; it
then exits 0. Any error that reaches the code here escapes: a traceback on stderr and a non-zero
exit, which the tests treat as a failure (``LeaseLost`` on an ack is the one expected error).

Roles:

- ``producer``: put payloads ``{"k": "TAG:N"}`` for N = 0, 1, ... one by one, and every
  ``--batch-every``-th time a ``put_many`` of three, pausing up to ``--pause`` seconds between
  puts, until ``--count`` payloads were put, ``--seconds`` passed, or SIGTERM.
- ``worker``: consume with ``--mode pool`` (a ``Supervisor`` pool of ``--concurrency`` whose
  handler acks the job itself) or ``--mode loop`` (``get``/``ack``), each handler working up to
  ``--work`` seconds, until SIGTERM.

Leases are short (``--lease``, 1 s by default) and the supervisor's rescue interval small, so the
jobs of a killed worker come back quickly.

The SIGTERM handler is set first, before the library is imported (imports take a good part of a
second on a loaded machine), and the history file is created right after: a parent that waits
for that file before its SIGTERM always gets a clean exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import persistq_async as pq
    from tests.reliability._history import HistoryLog

QUEUE_NAME = "chaos"

#: Set by a SIGTERM that came while the process was still importing (before the event loop's
#: handler replaced this one): the process then stops as soon as it can, and still exits 0.
_terminated = False


def _early_term(signum: int, frame: FrameType | None) -> None:
    global _terminated
    _terminated = True


signal.signal(signal.SIGTERM, _early_term)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if _terminated:
        stop.set()
    return stop


def _queue(args: argparse.Namespace) -> pq.Queue:
    import persistq_async as pq

    return pq.Queue(
        args.db,
        name=QUEUE_NAME,
        lease_seconds=args.lease,
        max_attempts=args.max_attempts,
        poll_interval=0.05,
        backoff_base=0.05,
        backoff_max=0.5,
    )


async def produce(args: argparse.Namespace, log: HistoryLog) -> None:
    stop = _stop_event()
    rng = random.Random()
    loop = asyncio.get_running_loop()
    async with _queue(args) as q:
        # From the moment the queue is open: start-up takes seconds on a loaded machine.
        deadline = None if args.seconds is None else loop.time() + args.seconds
        n = 0
        puts = 0
        while not stop.is_set() and (args.count is None or n < args.count):
            if deadline is not None and loop.time() >= deadline:
                break
            puts += 1
            if args.batch_every and puts % args.batch_every == 0:
                keys = [f"{args.tag}:{n + i}" for i in range(3)]
                batch = f"{args.tag}:b{n}"
                for key in keys:
                    log.write("put-begin", k=key, batch=batch)
                ids = await q.put_many([{"k": key} for key in keys])
                for key, job_id in zip(keys, ids, strict=True):
                    log.write("put-ok", k=key, id=job_id)
                n += len(keys)
            else:
                key = f"{args.tag}:{n}"
                log.write("put-begin", k=key)
                job_id = await q.put({"k": key})
                log.write("put-ok", k=key, id=job_id)
                n += 1
            if args.pause:
                await asyncio.sleep(rng.uniform(0, args.pause))


async def _work(job: pq.Job, log: HistoryLog, work: float) -> None:
    import persistq_async as pq

    log.write(
        "claimed",
        id=job.id,
        token=job.lease_token,
        attempt=job.attempts,
        k=job.payload.get("k") if isinstance(job.payload, dict) else None,
    )
    if work:
        await asyncio.sleep(random.uniform(0, work))
    try:
        await job.ack()
    except pq.LeaseLost as exc:
        log.write("ack-refused", id=job.id, token=job.lease_token, error=str(exc))
    except Exception:
        # In a pool the handler's error would only be logged by the pool: make it loud.
        traceback.print_exc()
        sys.stderr.flush()
        raise
    else:
        log.write("acked", id=job.id, token=job.lease_token)


async def consume(args: argparse.Namespace, log: HistoryLog) -> None:
    import persistq_async as pq

    stop = _stop_event()
    async with _queue(args) as q:
        if args.mode == "pool":

            async def handler(job: pq.Job) -> None:
                await _work(job, log, args.work)

            async with pq.Supervisor(grace=5.0, rescue_interval=0.2) as sup:
                await sup.add(q, handler, concurrency=args.concurrency, name="chaos")
                await stop.wait()
        else:
            while not stop.is_set():
                try:
                    job = await q.get(timeout=0.2)
                except TimeoutError:
                    continue
                await _work(job, log, args.work)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="_chaos_child")
    parser.add_argument("role", choices=["producer", "worker"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--max-attempts", type=int, default=50)
    # producer
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--batch-every", type=int, default=10)
    # worker
    parser.add_argument("--mode", choices=["pool", "loop"], default="pool")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--work", type=float, default=0.0)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    from tests.reliability._history import HistoryLog

    args = parse(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    path = Path(args.log_dir) / f"{args.role}-{args.tag}-{os.getpid()}.jsonl"
    with HistoryLog(path) as log:
        run: Any = produce if args.role == "producer" else consume
        asyncio.run(run(args, log))


if __name__ == "__main__":
    main(sys.argv[1:])
