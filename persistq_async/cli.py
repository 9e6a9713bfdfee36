"""The ``persistq`` command: run the demo or a worker, inspect and operate on queues.

The database comes from ``--url``, else the configuration (``PERSISTQ_URL``, ``persistq.toml``,
``[tool.persistq]``), else ``persistq.db`` in the working directory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from ._types import Handler, JobState
from .errors import ArgumentError, PersistQError
from .job import Job, JobInfo
from .pool import check_handler
from .queue import Queue
from .supervisor import DEFAULT_GRACE, Supervisor

__all__ = ["load_handler", "main"]

logger = logging.getLogger("persistq_async.cli")


def load_handler(spec: str) -> Handler:
    """Import ``module.path:attribute`` and check that it is an async handler.

    :raises ArgumentError: the spec is malformed or does not resolve.
    :raises ArgumentTypeError: the object is not a coroutine function.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ArgumentError(f"handler: expected 'module.path:function', got {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`, so a project's own modules resolve
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArgumentError(f"handler: cannot import module {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ArgumentError(
                f"handler: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return check_handler(target)


# ---------------------------------------------------------------------- demo


async def _demo(path: Path) -> None:
    print(f"persistq demo on {path}")
    async with Queue(path, name="demo", max_attempts=3, backoff_base=0.05, backoff_max=0.2) as q:
        await q.put({"task": "email", "to": "low@example.org"}, priority=-1)
        await q.put({"task": "email", "to": "normal@example.org"})
        await q.put({"task": "email", "to": "urgent@example.org"}, priority=10)
        await q.put({"task": "email", "to": "later@example.org"}, delay=0.3)
        flaky = await q.put({"task": "flaky", "fails": 2})
        doomed = await q.put({"task": "doomed"})
        print(f"put 6 jobs: {await q.stats()}")

        async def handler(job: Job) -> str:
            payload = job.payload
            print(
                f"  job {job.id} attempt {job.attempts}/{job.max_attempts} "
                f"priority {job.priority}: {payload}"
            )
            if payload["task"] == "flaky" and job.attempts <= payload["fails"]:
                raise ConnectionError("smtp server not answering")
            if payload["task"] == "doomed":
                raise ValueError("mailbox does not exist")
            return f"sent to {payload.get('to', 'nobody')}"

        async with Supervisor(grace=2.0) as sup:
            # concurrency 1, so the order of delivery shows priorities and FIFO
            await sup.add(q, handler, concurrency=1, job_timeout=5.0, name="mailers")
            with anyio.fail_after(30):
                await q.join()
        stats = await q.stats()
        print(
            f"stats: queued={stats.queued} running={stats.running} done={stats.done} "
            f"dead={stats.dead} cancelled={stats.cancelled}"
        )
        for job_id in (flaky, doomed):
            info = await q.job(job_id)
            assert info is not None
            print(f"audit trail of job {job_id} ({info.payload['task']}), now {info.state}:")
            for attempt in info.history:
                error = (attempt.error or "").strip().splitlines()
                print(
                    f"  attempt {attempt.attempt}: {attempt.outcome}"
                    + (f" - {error[-1]}" if error else "")
                )


# ---------------------------------------------------------------------- worker


async def _worker(args: argparse.Namespace) -> None:
    handler = load_handler(args.handler)
    # One signal receiver for the whole run: between two receivers the default disposition
    # would be back, and a second SIGTERM arriving then would kill the process outright.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Queue(args.url, name=args.queue) as q, anyio.create_task_group() as tg:
            async with Supervisor(grace=args.grace, gc_freeze=args.gc_freeze) as sup:
                await sup.add(
                    q,
                    handler,
                    concurrency=args.concurrency,
                    job_timeout=args.job_timeout,
                    name=args.queue,
                )
                logger.info(
                    "worker started: queue %s, concurrency %d; SIGINT/SIGTERM to stop",
                    args.queue,
                    args.concurrency,
                    extra={"action": "worker_started", "queue": args.queue},
                )
                async for signum in signals:
                    logger.info(
                        "%s: stopping gracefully (up to %.0fs); again to stop at once",
                        signal.Signals(signum).name,
                        args.grace,
                        extra={"action": "worker_stopping"},
                    )
                    break

                async def second_signal() -> None:
                    async for _ in signals:
                        logger.warning("stopping at once", extra={"action": "worker_stopping"})
                        sup.cancel_running()
                        return

                tg.start_soon(second_signal)
            tg.cancel_scope.cancel()
    logger.info("worker stopped", extra={"action": "worker_stopped"})


# ---------------------------------------------------------------------- inspection


def _info_dict(info: JobInfo, *, history: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": info.id,
        "queue": info.queue,
        "state": info.state.value,
        "priority": info.priority,
        "attempts": info.attempts,
        "max_attempts": info.max_attempts,
        "run_at": info.run_at.isoformat(),
        "created_at": info.created_at.isoformat(),
        "finished_at": info.finished_at.isoformat() if info.finished_at else None,
        "last_error": info.last_error,
        "payload": info.payload,
        "result": info.result,
    }
    if history:
        data["history"] = [
            {
                "attempt": a.attempt,
                "started_at": a.started_at.isoformat(),
                "finished_at": a.finished_at.isoformat() if a.finished_at else None,
                "outcome": a.outcome,
                "error": a.error,
            }
            for a in info.history
        ]
    return data


async def _inspect(args: argparse.Namespace) -> int:
    async with Queue(args.url, name=args.queue) as q:
        command = args.command
        if command == "stats":
            names = [args.queue] if args.queue_given else (await q.store.queue_names() or [q.name])
            rows = []
            for name in names:
                async with Queue(args.url, name=name) as other:
                    s = await other.stats()
                rows.append(
                    {
                        "queue": name,
                        "queued": s.queued,
                        "running": s.running,
                        "done": s.done,
                        "dead": s.dead,
                        "cancelled": s.cancelled,
                    }
                )
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                cols = ["queue", "queued", "running", "done", "dead", "cancelled"]
                width = max([len("queue"), *(len(str(r["queue"])) for r in rows)])
                print(f"{'queue':<{width}}  " + "  ".join(f"{c:>9}" for c in cols[1:]))
                for r in rows:
                    print(f"{r['queue']:<{width}}  " + "  ".join(f"{r[c]:>9}" for c in cols[1:]))
        elif command == "jobs":
            infos = await q.list_jobs(state=args.state, limit=args.limit, offset=args.offset)
            if args.json:
                print(json.dumps([_info_dict(i, history=False) for i in infos], indent=2))
            else:
                for i in infos:
                    print(
                        f"{i.id:>8}  {i.state.value:<9}  p{i.priority:<4} "
                        f"{i.attempts}/{i.max_attempts}  {json.dumps(i.payload)[:60]}"
                    )
        elif command == "show":
            info = await q.job(args.id)
            if info is None:
                print(f"no job {args.id} in queue {q.name!r}", file=sys.stderr)
                return 1
            print(json.dumps(_info_dict(info, history=True), indent=2))
        elif command == "put":
            try:
                payload = json.loads(args.payload)
            except ValueError as exc:
                raise ArgumentError(f"payload: not valid JSON: {exc}") from exc
            job_id = await q.put(payload, priority=args.priority, delay=args.delay)
            print(job_id)
        elif command == "requeue":
            await q.requeue(args.id)
            print(f"job {args.id} requeued")
        elif command == "cancel":
            done = await q.cancel(args.id)
            print(f"job {args.id} cancelled" if done else f"job {args.id} had already finished")
        elif command == "delete":
            await q.delete(args.id)
            print(f"job {args.id} deleted")
        elif command == "purge":
            count = await q.purge(args.state)
            print(f"{count} {args.state} jobs deleted")
        elif command == "pause":
            await q.pause()
            print(f"queue {q.name!r} paused")
        elif command == "resume":
            await q.resume()
            print(f"queue {q.name!r} resumed")
    return 0


# ---------------------------------------------------------------------- arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persistq", description="Inspect and operate persistq_async queues."
    )
    parser.add_argument(
        "--log-level", default=None, help="logging level (default INFO; WARNING for the demo)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=None, help="database path or URL (default: configured)")
        p.add_argument("--queue", default=None, help="queue name (default: 'default')")

    demo = sub.add_parser("demo", help="run a short demo on a temporary (or given) SQLite file")
    demo.add_argument("--db", type=Path, default=None, help="SQLite file to use (kept afterwards)")

    worker = sub.add_parser("worker", help="run a supervised pool until SIGINT/SIGTERM")
    common(worker)
    worker.add_argument("handler", help="the handler, as module.path:function")
    worker.add_argument("--concurrency", type=int, default=10)
    worker.add_argument("--job-timeout", type=float, default=None)
    worker.add_argument("--grace", type=float, default=DEFAULT_GRACE)
    worker.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="leave the garbage collector as it is (see Supervisor's gc_freeze)",
    )

    for name, help_text in (("stats", "counts by state, per queue"), ("jobs", "list jobs")):
        p = sub.add_parser(name, help=help_text)
        common(p)
        p.add_argument("--json", action="store_true", help="print JSON")
        if name == "jobs":
            p.add_argument("--state", choices=[s.value for s in JobState], default=None)
            p.add_argument("--limit", type=int, default=100)
            p.add_argument("--offset", type=int, default=0)

    show = sub.add_parser("show", help="one job with its audit trail, as JSON")
    common(show)
    show.add_argument("id", type=int)

    put = sub.add_parser("put", help="add a job (payload as JSON)")
    common(put)
    put.add_argument("payload")
    put.add_argument("--priority", type=int, default=0)
    put.add_argument("--delay", type=float, default=None)

    for name, help_text in (
        ("requeue", "put a dead, cancelled or done job back in the queue"),
        ("cancel", "cancel a queued or running job"),
        ("delete", "delete a job and its history"),
    ):
        p = sub.add_parser(name, help=help_text)
        common(p)
        p.add_argument("id", type=int)

    purge = sub.add_parser("purge", help="delete every job in a state")
    common(purge)
    purge.add_argument("state", choices=[s.value for s in JobState])

    for name, help_text in (
        ("pause", "stop every worker claiming from a queue (puts are still taken)"),
        ("resume", "let workers claim from a paused queue again"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", default=None, help="database path or URL (default: configured)")
        p.add_argument("--queue", required=True, help="queue name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``persistq`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(
            logging,
            str(args.log_level or ("WARNING" if args.command == "demo" else "INFO")).upper(),
            logging.INFO,
        ),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if hasattr(args, "queue"):
        args.queue_given = args.queue is not None
        args.queue = args.queue or "default"
    try:
        if args.command == "demo":
            if args.db is None:
                with tempfile.TemporaryDirectory(prefix="persistq-demo-") as tmp:
                    anyio.run(_demo, Path(tmp) / "demo.db")
            else:
                anyio.run(_demo, args.db)
            return 0
        if args.command == "worker":
            anyio.run(_worker, args)
            return 0
        return anyio.run(_inspect, args)
    except PersistQError as exc:
        print(f"persistq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
