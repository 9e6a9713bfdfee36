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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio

from ..queue import Queue
from .commands import QUEUES_COLUMNS, open_queue
from .durations import duration, format_duration
from .monitor import WORKER_COLUMNS, worker_rows
from .output import HAVE_RICH, Output, render_table, stats_cell, stats_dict

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``watch`` to the ``persistq`` parser."""
    p = sub.add_parser("watch", help="a live view of every queue and worker; q or Ctrl-C quits")
    common(p)
    p.add_argument("--interval", type=duration, default=1.0, help="refresh period (default 1s)")
    p.add_argument("--window", type=duration, default=60.0, help="rates over (default 1m)")
    p.add_argument("--once", action="store_true", help="print one view and exit")


@dataclass(frozen=True, slots=True, kw_only=True)
class _View:
    columns: list[str]
    rows: list[list[str]]
    workers: list[list[str]]


async def _snapshot(q: Queue, args: argparse.Namespace) -> _View:
    names = [args.queue] if args.queue else await q.queue_names()
    stats = [stats_dict(await q.sibling(name).stats(window=args.window)) for name in names]
    columns = [c for c in QUEUES_COLUMNS if c == "queue" or (stats and c in stats[0])]
    if not stats:
        columns = ["queue"]
    rows = [[stats_cell(c, data.get(c)) for c in columns] for data in stats]
    workers = await q.workers()
    if args.queue:
        workers = [w for w in workers if args.queue in w.queues]
    return _View(columns=columns, rows=rows, workers=worker_rows(workers))


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
                view = await _snapshot(q, args)
                out.line(_title(q, args.interval))
                out.table(view.columns, view.rows, numeric=view.columns[1:])
                if view.workers:
                    out.table(WORKER_COLUMNS, view.workers, numeric=["pid"])
                if args.once:
                    return 0
                print(file=out.stream, flush=True)
                await anyio.sleep(args.interval)
        assert HAVE_RICH
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        def render(view: _View) -> Any:
            parts: list[Any] = [Text(_title(q, args.interval), style="bold")]
            parts.append(render_table(view.columns, view.rows, None, view.columns[1:]))
            if view.workers:
                parts.append(render_table(WORKER_COLUMNS, view.workers, None, ["pid"]))
            else:
                parts.append(Text("no live workers", style="dim"))
            hint = "q or Ctrl-C to quit"
            if not view.rows:
                hint = "no jobs in the database yet; " + hint
            parts.append(Text(hint, style="dim"))
            return Group(*parts)

        keys = sys.stdin.fileno() if sys.stdin.isatty() else None
        first = render(await _snapshot(q, args))
        with _cbreak(keys), Live(first, console=out.console, auto_refresh=False) as live:
            async with anyio.create_task_group() as tg:
                if keys is not None:
                    tg.start_soon(_until_quit, keys, tg.cancel_scope)
                while True:
                    await anyio.sleep(args.interval)
                    live.update(render(await _snapshot(q, args)), refresh=True)
    return 0
