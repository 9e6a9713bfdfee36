"""``persistq pause`` and ``persistq resume``: stop, or let again, every worker claiming from a
queue (puts are still taken while it is paused)."""

from __future__ import annotations

import argparse
from typing import Any

from ..queue import Queue
from .output import Output

__all__ = ["add_parser", "cmd_pause", "cmd_resume"]


async def cmd_pause(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """Pause the queue."""
    await q.pause()
    if out.json_mode:
        out.json({"queue": q.name, "paused": True})
    else:
        out.line(f"queue {q.name!r} paused")
    return 0


async def cmd_resume(q: Queue, args: argparse.Namespace, out: Output) -> int:
    """Resume the queue."""
    await q.resume()
    if out.json_mode:
        out.json({"queue": q.name, "paused": False})
    else:
        out.line(f"queue {q.name!r} resumed")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``pause`` and ``resume`` (each needs ``--queue``) to the ``persistq`` parser."""
    for name, help_text in (
        ("pause", "stop every worker claiming from a queue (puts are still taken)"),
        ("resume", "let workers claim from a paused queue again"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", default=None, help="database path or URL (default: configured)")
        p.add_argument("--queue", required=True, help="queue name")
        p.add_argument("--json", action="store_true", help="print JSON")
