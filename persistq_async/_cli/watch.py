"""``persistq watch``: the queues of a database, refreshed in place.

On a terminal with ``rich``, a live table redrawn every ``--interval``; q (or Ctrl-C) quits. The
keyboard is read in cbreak mode (keys arrive one by one, without echo; Ctrl-C still interrupts),
and the terminal is restored however the view ends. Elsewhere (piped, or without ``rich``) it
prints one table per interval; ``--once`` prints one and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import anyio

from ..queue import Queue
from .commands import open_queue
from .durations import duration, format_duration
from .output import HAVE_RICH, Output, render_table, stats_dict

__all__ = ["add_parser", "run"]

_COLUMNS = ["queue", "queued", "running", "done", "dead", "cancelled", "total"]


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``watch`` to the ``persistq`` parser."""
    p = sub.add_parser("watch", help="a live view of every queue; q or Ctrl-C quits")
    common(p)
    p.add_argument("--interval", type=duration, default=1.0, help="refresh period (default 1s)")
    p.add_argument("--once", action="store_true", help="print one view and exit")


async def _snapshot(q: Queue, only: str | None) -> tuple[list[str], list[list[str]]]:
    names = [only] if only else await q.queue_names()
    stats = [stats_dict(await q.sibling(name).stats()) for name in names]
    columns = list(_COLUMNS)
    columns += [c for c in ("lag", "paused") if stats and c in stats[0]]
    rows = []
    for data in stats:
        row = []
        for col in columns:
            value = data.get(col)
            if col == "lag":
                row.append("-" if value is None else format_duration(float(value)))
            elif isinstance(value, bool):
                row.append("yes" if value else "no")
            else:
                row.append(str(value))
        rows.append(row)
    return columns, rows


def _title(q: Queue, interval: float) -> str:
    now = datetime.now(UTC).strftime("%H:%M:%S")
    where = q.url.render_as_string(hide_password=True)
    return f"persistq watch  {where}  {now} UTC  every {format_duration(interval)}"


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _until_quit(fd: int, scope: anyio.CancelScope) -> None:
    while True:
        await anyio.wait_readable(fd)
        data = os.read(fd, 64)
        if not data or b"q" in data.lower():
            scope.cancel()
            return


async def run(args: argparse.Namespace) -> int:
    """Run the view until q, Ctrl-C or (``--once``) one view."""
    out = Output()
    async with open_queue(args) as q:
        if not out.rich or args.once:
            while True:
                columns, rows = await _snapshot(q, args.queue)
                out.table(columns, rows, title=_title(q, args.interval), numeric=columns[1:])
                if args.once:
                    return 0
                print(file=out.stream, flush=True)
                await anyio.sleep(args.interval)
        assert HAVE_RICH
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        def view(columns: list[str], rows: list[list[str]]) -> Any:
            hint = Text("q or Ctrl-C to quit", style="dim")
            if not rows:
                hint = Text("no jobs in the database yet; q or Ctrl-C to quit", style="dim")
            title = Text(_title(q, args.interval), style="bold")
            return Group(title, render_table(columns, rows, None, columns[1:]), hint)

        keys = sys.stdin.fileno() if sys.stdin.isatty() else None
        columns, rows = await _snapshot(q, args.queue)
        with (
            _cbreak(keys),
            Live(view(columns, rows), console=out.console, auto_refresh=False) as live,
        ):
            async with anyio.create_task_group() as tg:
                if keys is not None:
                    tg.start_soon(_until_quit, keys, tg.cancel_scope)
                while True:
                    await anyio.sleep(args.interval)
                    columns, rows = await _snapshot(q, args.queue)
                    live.update(view(columns, rows), refresh=True)
    return 0
