"""``persistq workers`` (the supervisors registered in the database, with their pools) and
``persistq health`` (an exit code for scripts: 0 when every queue checked can be used, 1 when
one is failing or the database is not there)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from ..errors import DatabaseError
from ..monitoring import HealthReport, WorkerInfo
from ..observe import DEFAULT_MAX_LAG, DEFAULT_WORKER_TIMEOUT
from ..queue import Queue
from .durations import duration, format_duration
from .output import Output, error, when

__all__ = ["WORKER_COLUMNS", "add_parsers", "cmd_health", "cmd_workers", "worker_rows"]

#: The columns of the workers table (also in ``watch``).
WORKER_COLUMNS = ["worker", "host", "pid", "started", "last seen", "alive", "pools"]


def worker_rows(workers: Sequence[WorkerInfo]) -> list[list[str]]:
    """One row per worker; its pools as ``name(queue) active/concurrency, processed, failed``."""
    rows = []
    for w in workers:
        pools = "; ".join(
            f"{p.name}({p.queue}) {p.active}/{p.concurrency} busy, "
            f"{p.processed} done, {p.failed} failed"
            for p in w.pools
        )
        rows.append(
            [
                w.id[:12],
                w.host,
                str(w.pid),
                when(w.started_at),
                when(w.last_seen),
                "yes" if w.alive else "NO",
                pools or "-",
            ]
        )
    return rows


async def cmd_workers(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """The registered supervisors; exit 1 when there is none."""
    workers = await q.workers(timeout=args.timeout)
    if args.queue:
        workers = [w for w in workers if args.queue in w.queues]
    if out.json_mode:
        out.json(workers)
    else:
        out.table(WORKER_COLUMNS, worker_rows(workers), numeric=["pid"])
    if not workers:
        where = f" consuming queue {args.queue!r}" if args.queue else ""
        error(f"no workers{where} registered in the database")
        return 1
    return 0


async def cmd_health(args: argparse.Namespace, out: Output) -> int:
    """Check every queue (or ``--queue``): 0 when each can be used (ok or degraded; with
    ``--strict`` only ok), 1 otherwise, including no database at the URL."""
    reports: list[HealthReport] = []
    problem = ""
    try:
        with anyio.fail_after(args.timeout):
            async with Queue(args.url, name=args.queue or "default", create=False) as q:
                names = [args.queue] if args.queue else (await q.queue_names() or [q.name])
                for name in names:
                    reports.append(
                        await q.sibling(name).health(
                            max_lag=args.max_lag,
                            require_workers=args.require_workers,
                            worker_timeout=args.worker_timeout,
                        )
                    )
    except TimeoutError:
        problem = f"no answer within {format_duration(args.timeout)}"
    except DatabaseError as exc:
        problem = str(exc)
    statuses = [r.status for r in reports] + (["failing"] if problem else [])
    status = next(s for s in ("failing", "degraded", "ok") if s in statuses or s == "ok")
    good = status == "ok" or (status == "degraded" and not args.strict)
    if out.json_mode:
        out.json(
            {
                "ok": good,
                "status": status,
                "error": problem or None,
                "queues": [r.as_dict() for r in reports],
            }
        )
    else:
        rows = [[r.queue, c.name, c.status, c.detail] for r in reports for c in r.checks]
        if rows:
            out.table(["queue", "check", "status", "detail"], rows, state_column="status")
        style = {"ok": "green", "degraded": "yellow"}.get(status, "bold red")
        out.line(f"{status}" + (f": {problem}" if problem else ""), style=style)
    return 0 if good else 1


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``workers`` and ``health`` to the ``persistq`` parser."""
    workers = sub.add_parser("workers", help="the supervisors running on the database")
    common(workers)
    workers.add_argument("--json", action="store_true", help="print JSON")
    workers.add_argument(
        "--timeout",
        type=duration,
        default=DEFAULT_WORKER_TIMEOUT,
        help="a heartbeat older than this is not alive (default 30s)",
    )

    health = sub.add_parser("health", help="exit 0 when the queues can be used, else 1")
    common(health)
    health.add_argument("--json", action="store_true", help="print JSON")
    health.add_argument("--timeout", type=duration, default=10.0, help="default 10s")
    health.add_argument(
        "--max-lag",
        type=duration,
        default=DEFAULT_MAX_LAG,
        help=f"a ready job waiting longer is degraded (default {format_duration(DEFAULT_MAX_LAG)})",
    )
    health.add_argument(
        "--worker-timeout", type=duration, default=DEFAULT_WORKER_TIMEOUT, help="default 30s"
    )
    health.add_argument(
        "--no-workers-needed",
        dest="require_workers",
        action="store_false",
        help="no live worker is not degraded",
    )
    health.add_argument("--strict", action="store_true", help="exit 1 when degraded too")
