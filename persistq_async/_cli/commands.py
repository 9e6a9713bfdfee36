"""The commands that inspect and operate on a database: ``stats``, ``queues``, ``jobs``,
``show``, ``put``, ``requeue``, ``cancel``, ``delete``, ``purge``, ``config``, ``health``.

Only ``put`` may create a database; every other command opens it with ``create=False``, so a
mistyped ``--url`` says there is no database there instead of creating an empty one. Without
``--queue``, the listings cover every queue; a job id names one job in the database, so the
commands that take an id find its queue themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .._admin import MAX_LIST_LIMIT
from .._types import FINISHED_STATES, JobState
from ..config import DEFAULT_DATABASE_FILE, DURATION_OPTIONS, explain_options
from ..errors import ArgumentError, JobNotFound
from ..job import JobInfo
from ..queue import Queue
from . import flow, monitor, schedules
from .durations import duration, format_duration
from .output import Output, error, info_dict, stats_cell, stats_dict, when

__all__ = ["COMMANDS", "add_parsers", "open_queue", "run"]

_STATES = [s.value for s in JobState]
_FINISHED = sorted(s.value for s in FINISHED_STATES)


def open_queue(args: argparse.Namespace, *, create: bool = False) -> Queue:
    """The queue the command names (``default`` without ``--queue``), not yet open; it does
    not create the database unless ``create``."""
    return Queue(args.url, name=args.queue or "default", create=create)


def _last_line(text: str | None, width: int) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[-1] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _short(value: Any, width: int) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


async def _names(q: Queue, args: argparse.Namespace) -> list[str]:
    return [args.queue] if args.queue else await q.queue_names()


# ---------------------------------------------------------------------- stats, queues


async def _stats(q: Queue, names: list[str], window: float) -> list[dict[str, Any]]:
    return [stats_dict(await q.sibling(name).stats(window=window)) for name in names]


#: The columns of ``stats`` and of ``queues`` (a column the Stats lack is left out).
STATS_COLUMNS = ["queue", "queued", "running", "done", "dead", "cancelled", "total"]
STATS_COLUMNS += ["ready", "scheduled", "lag", "throughput"]
QUEUES_COLUMNS = ["queue", "ready", "scheduled", "running", "dead", "total", "lag"]
QUEUES_COLUMNS += ["throughput", "paused"]


def stats_table(out: Output, rows: list[dict[str, Any]], wanted: list[str]) -> None:
    """``rows`` (of :func:`stats_dict`) as a table of the ``wanted`` columns they have."""
    columns = [c for c in wanted if c == "queue" or (rows and c in rows[0])]
    if not rows:
        columns = [c for c in wanted if c in STATS_COLUMNS[:7]]
    body = [[stats_cell(c, r.get(c)) for c in columns] for r in rows]
    out.table(columns, body, numeric=columns[1:])


async def cmd_stats(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """Counts by state, lag and the last ``--window`` of deliveries, per queue; every figure
    of one queue with ``--queue``."""
    rows = await _stats(q, await _names(q, args), args.window)
    if out.json_mode:
        out.json(rows)
    elif args.queue:
        (data,) = rows
        out.fields([(k, stats_cell(k, v)) for k, v in data.items()], title=f"queue {args.queue}")
    else:
        stats_table(out, rows, STATS_COLUMNS)
    return 0


async def cmd_queues(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """Every queue of the database, with its counts, lag and throughput."""
    names = await q.queue_names()
    rows = await _stats(q, names, args.window)
    if out.json_mode:
        out.json(rows)
    else:
        stats_table(out, rows, QUEUES_COLUMNS)
    if not names:
        error(f"no queues: the database {q.url.render_as_string(hide_password=True)} has no jobs")
        return 1
    return 0


# ---------------------------------------------------------------------- jobs, show


async def cmd_jobs(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """Jobs, oldest first, by keyset pages; every queue without ``--queue``."""
    infos = await q.list_jobs(
        state=args.state,
        limit=args.limit,
        offset=args.offset,
        after_id=args.after,
        before_id=args.before,
        every_queue=not args.queue,
        tags=args.tag or None,
    )
    if out.json_mode:
        out.json([info_dict(i, history=False) for i in infos])
    else:
        columns = ["id", "queue", "state", "priority", "attempts", "created", "payload", "error"]
        rows = [
            [
                str(i.id),
                i.queue,
                i.state.value,
                str(i.priority),
                f"{i.attempts}/{i.max_attempts}",
                when(i.created_at),
                _short(i.payload, 40),
                _last_line(i.last_error, 40),
            ]
            for i in infos
        ]
        out.table(columns, rows, numeric=["id", "priority", "attempts"], state_column="state")
        if len(infos) == args.limit:
            print(f"(more: add --after {infos[-1].id})", file=sys.stderr)
    if not infos:
        where = f"queue {args.queue!r}" if args.queue else "any queue"
        state = f"{args.state} " if args.state else ""
        error(f"no {state}jobs in {where}")
        return 1
    return 0


async def _find(q: Queue, args: argparse.Namespace) -> JobInfo:
    """The job ``args.id``: in ``--queue`` when given, else in whichever queue holds it."""
    if args.queue:
        info = await q.sibling(args.queue).job(args.id)
        if info is None:
            raise JobNotFound(f"no job {args.id} in queue {args.queue!r}")
        return info
    info = await q.find_job(args.id)
    if info is None:
        raise JobNotFound(f"no job {args.id}")
    return info


async def cmd_show(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """One job with its attempts (the audit trail)."""
    info = await _find(q, args)
    if out.json_mode:
        out.json(info_dict(info, history=True))
        return 0
    pairs = [
        ("id", str(info.id)),
        ("queue", info.queue),
        ("state", info.state.value),
        ("priority", str(info.priority)),
        ("attempts", f"{info.attempts} of {info.max_attempts}"),
        ("created", when(info.created_at)),
        ("enqueued", when(info.enqueued_at)),
        ("run at", when(info.run_at)),
        ("lease expires", when(info.lease_expires_at)),
        ("finished", when(info.finished_at)),
        ("dedupe key", info.dedupe_key or "-"),
    ]
    for extra in ("tags", "headers"):
        if hasattr(info, extra):
            pairs.append((extra, _short(info_dict(info, history=False)[extra], 200)))
    pairs += [("payload", _short(info.payload, 2000)), ("result", _short(info.result, 2000))]
    out.fields(pairs, title=f"job {info.id}")
    if info.history:
        rows = [
            [
                str(a.attempt),
                when(a.started_at),
                format_duration((a.finished_at - a.started_at).total_seconds())
                if a.finished_at
                else "running",
                a.outcome or "-",
                _last_line(a.error, 60),
            ]
            for a in info.history
        ]
        out.table(["attempt", "started", "took", "outcome", "error"], rows, numeric=["attempt"])
    if info.last_error:
        out.line("last error:", style="bold")
        out.line(info.last_error.rstrip())
    return 0


# ---------------------------------------------------------------------- put and operations


async def cmd_put(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """Add a job; prints its id."""
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise ArgumentError(f"payload: not valid JSON: {exc}") from exc
    job_id = await q.put(payload, priority=args.priority, delay=args.delay, tags=args.tag)
    if out.json_mode:
        out.json({"id": job_id, "queue": q.name})
    else:
        out.line(str(job_id))
    return 0


def _done(out: Output, data: dict[str, Any], text: str) -> None:
    if out.json_mode:
        out.json(data)
    else:
        out.line(text)


async def cmd_requeue(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """Requeue one job by id, or (``--state``) every job of a finished state, in batches."""
    if args.id is None:
        counts = await _bulk(
            q,
            args,
            out,
            f"requeue {args.state}",
            lambda sib, p: sib.requeue_many(args.state, on_progress=p),
        )
        total = sum(counts.values())
        _done(
            out,
            {"requeued": total, "state": args.state, "queues": counts},
            f"{total} {args.state} jobs requeued" + _per_queue(counts),
        )
        return 0
    info = await _find(q, args)
    await q.sibling(info.queue).requeue(info.id)
    _done(
        out,
        {"id": info.id, "queue": info.queue, "requeued": True},
        f"job {info.id} (queue {info.queue}) requeued",
    )
    return 0


async def cmd_cancel(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """Cancel a queued or running job; refused (exit 1) when it had already finished."""
    info = await _find(q, args)
    cancelled = await q.sibling(info.queue).cancel(info.id)
    if not cancelled:
        if out.json_mode:
            out.json({"id": info.id, "queue": info.queue, "cancelled": False})
        error(f"job {info.id} (queue {info.queue}) had already finished; not cancelled")
        return 1
    _done(
        out,
        {"id": info.id, "queue": info.queue, "cancelled": True},
        f"job {info.id} (queue {info.queue}) cancelled",
    )
    return 0


async def cmd_delete(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """Delete a job and its history."""
    info = await _find(q, args)
    await q.sibling(info.queue).delete(info.id)
    _done(
        out,
        {"id": info.id, "queue": info.queue, "deleted": True},
        f"job {info.id} (queue {info.queue}) deleted",
    )
    return 0


async def cmd_purge(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """Delete every job in a state (of every queue without ``--queue``), in batches."""
    counts = await _bulk(
        q,
        args,
        out,
        f"purge {args.state}",
        lambda sib, p: sib.purge(args.state, older_than=args.older_than, on_progress=p),
    )
    total = sum(counts.values())
    age = f" older than {format_duration(args.older_than)}" if args.older_than else ""
    _done(
        out,
        {"deleted": total, "state": args.state, "older_than": args.older_than, "queues": counts},
        f"{total} {args.state} jobs{age} deleted" + _per_queue(counts),
    )
    return 0


def _per_queue(counts: dict[str, int]) -> str:
    if len(counts) < 2:
        return f" (queue {next(iter(counts))})" if counts else ""
    return " (" + ", ".join(f"{name}: {n}" for name, n in counts.items()) + ")"


async def _bulk(
    q: Queue,
    args: argparse.Namespace,
    out: Output,
    verb: str,
    act: Callable[[Queue, Callable[[int, int], None]], Any],
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in await _names(q, args):
        with out.progress(f"{verb} in {name}") as update:
            counts[name] = await act(q.sibling(name), update)
    return counts


# ---------------------------------------------------------------------- config


async def cmd_config(args: argparse.Namespace, out: Output) -> int:
    """The effective options and where each came from (no database is opened)."""
    explained = explain_options({"url": args.url})
    rows = []
    data: dict[str, dict[str, Any]] = {}
    for name, (value, source) in explained.items():
        if source == "keyword argument":
            source = "--url"
        if name == "url" and value is None:
            value, source = DEFAULT_DATABASE_FILE, "default (in the working directory)"
        data[name] = {"value": value, "source": source}
        shown = format_duration(value) if name in DURATION_OPTIONS else str(value)
        rows.append([name, shown, source])
    if out.json_mode:
        out.json(data)
    else:
        out.table(["option", "value", "source"], rows)
    return 0


# ---------------------------------------------------------------------- arguments

#: The commands that run against an open queue.
COMMANDS: dict[str, Callable[[Queue, argparse.Namespace, Output], Any]] = {
    "stats": cmd_stats,
    "queues": cmd_queues,
    "jobs": cmd_jobs,
    "show": cmd_show,
    "put": cmd_put,
    "requeue": cmd_requeue,
    "cancel": cmd_cancel,
    "delete": cmd_delete,
    "purge": cmd_purge,
    "workers": monitor.cmd_workers,
    "schedules": schedules.cmd_schedules,
    "pause": flow.cmd_pause,
    "resume": flow.cmd_resume,
}


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add this module's sub-commands to the ``persistq`` parser."""

    def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        common(p)
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    for name, help_text in (
        ("stats", "counts, lag and rates of every queue (every figure of one with --queue)"),
        ("queues", "every queue with its counts, lag and throughput"),
    ):
        p = with_json(sub.add_parser(name, help=help_text))
        p.add_argument(
            "--window", type=duration, default=60.0, help="rates over this long (default 1m)"
        )

    jobs = with_json(sub.add_parser("jobs", help="list jobs, oldest first (every queue)"))
    jobs.add_argument("--state", choices=_STATES, default=None)
    jobs.add_argument("--limit", type=int, default=100, help=f"at most {MAX_LIST_LIMIT}")
    jobs.add_argument("--after", type=int, default=None, metavar="ID", help="the page after ID")
    jobs.add_argument("--before", type=int, default=None, metavar="ID", help="the page before ID")
    jobs.add_argument("--offset", type=int, default=0, help="skip rows (with --queue; slow)")
    jobs.add_argument(
        "--tag", action="append", default=None, metavar="TAG", help="having this tag (repeatable)"
    )

    show = with_json(sub.add_parser("show", help="one job with its audit trail"))
    show.add_argument("id", type=int)

    put = with_json(sub.add_parser("put", help="add a job (payload as JSON)"))
    put.add_argument("payload")
    put.add_argument("--priority", type=int, default=0)
    put.add_argument("--delay", type=duration, default=None, help="such as 30s, 15m or 2h")
    put.add_argument("--tag", action="append", default=None, metavar="TAG", help="repeatable")

    requeue = with_json(
        sub.add_parser(
            "requeue",
            help="put a dead, cancelled or done job back, or every one with --state",
        )
    )
    requeue.add_argument("id", type=int, nargs="?", default=None)
    requeue.add_argument(
        "--state", choices=_FINISHED, default=None, help="every job in this state, in batches"
    )
    for name, help_text in (
        ("cancel", "cancel a queued or running job"),
        ("delete", "delete a job and its history"),
    ):
        p = with_json(sub.add_parser(name, help=help_text))
        p.add_argument("id", type=int)

    purge = with_json(
        sub.add_parser("purge", help="delete every job in a state (every queue), in batches")
    )
    purge.add_argument("state", choices=_STATES)
    purge.add_argument(
        "--older-than",
        type=duration,
        default=None,
        metavar="DURATION",
        help="only jobs finished (queued/running: enqueued) longer ago, such as 7d",
    )

    config = sub.add_parser("config", help="the effective configuration and its sources")
    config.add_argument("--url", default=None, help="database path or URL")
    config.add_argument("--json", action="store_true", help="print JSON")
    monitor.add_parsers(sub, common)


def _check_usage(args: argparse.Namespace) -> None:
    """What argparse cannot say, said before any database is opened."""
    if args.command == "requeue" and (args.id is None) == (args.state is None):
        raise ArgumentError("requeue: give a job id, or --state STATE for every job in a state")
    if args.command == "jobs" and args.offset and not args.queue:
        raise ArgumentError("--offset: only with --queue; page with --after ID")
    if args.command == "jobs" and args.after is not None and args.before is not None:
        raise ArgumentError("--after and --before: give one or the other, not both")


async def run(args: argparse.Namespace) -> int:
    """Run the inspection command ``args.command``; returns the exit status."""
    _check_usage(args)
    out = Output(json_mode=getattr(args, "json", False))
    if args.command == "config":
        return await cmd_config(args, out)
    if args.command == "health":
        return await monitor.cmd_health(args, out)
    async with open_queue(args, create=args.command == "put") as q:
        return int(await COMMANDS[args.command](q, args, out))
