"""``persistq schedules``: every periodic job (of ``--queue`` when given) with its next run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .._queue_schedules import schedule_info
from ..queue import Queue
from .output import Output

__all__ = ["add_parser", "cmd_schedules"]

COLUMNS = ["name", "queue", "spec", "next run"]


async def cmd_schedules(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """List the schedules (of ``--queue``, else of every queue); exit 1 when there is none."""
    records = await q.store.schedules(args.queue)
    infos = [schedule_info(record, q.serializer) for record in records]
    if out.json_mode:
        out.json(
            [
                {
                    "name": i.name,
                    "queue": i.queue,
                    "spec": i.spec,
                    "next_run_at": i.next_run_at.isoformat() if i.next_run_at else None,
                    "last_tick_at": i.last_tick_at.isoformat() if i.last_tick_at else None,
                    "paused": i.paused,
                    "catch_up": i.catch_up,
                }
                for i in infos
            ]
        )
    elif infos:
        out.table(
            COLUMNS,
            [
                [i.name, i.queue, i.spec, "paused" if i.paused else str(i.next_run_at)]
                for i in infos
            ],
        )
    else:
        out.line("no schedules")
    return 0 if infos else 1


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``schedules`` to the ``persistq`` parser."""
    p = sub.add_parser("schedules", help="periodic jobs with their next run")
    common(p)
    p.add_argument("--json", action="store_true", help="print JSON")
