"""What the command prints: ``rich`` tables and colour when stdout is a terminal and ``rich`` is
installed (the ``cli`` extra), aligned plain text otherwise (piped, or no ``rich``), and JSON
with ``--json``. Errors go to stderr as one line."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from ..job import JobInfo
from .durations import format_duration

try:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table
    from rich.text import Text

    HAVE_RICH = True
except ImportError:  # the cli extra is not installed: plain text
    HAVE_RICH = False

__all__ = ["HAVE_RICH", "Output", "info_dict", "stats_cell", "stats_dict", "when"]

#: Colours of the job states in a terminal.
STATE_STYLES = {
    "queued": "cyan",
    "running": "yellow",
    "done": "green",
    "dead": "bold red",
    "cancelled": "magenta",
}


def when(epoch: datetime | None, *, now: datetime | None = None) -> str:
    """A moment for a table: the UTC time, and how long ago (or ahead) it is."""
    if epoch is None:
        return "-"
    now = now or datetime.now(UTC)
    delta = (now - epoch).total_seconds()
    stamp = epoch.strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} ({format_duration(abs(delta))} {'ago' if delta >= 0 else 'ahead'})"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), str):
        return value.value  # enums
    return value


def stats_dict(stats: Any) -> dict[str, Any]:
    """Every field of a :class:`~persistq_async.Stats` (whatever this version has), plus
    ``total`` and, where the stats know it, ``lag`` (seconds)."""
    data = _jsonable(stats)
    assert isinstance(data, dict)
    data["total"] = stats.total
    data["lag"] = stats.lag
    return data


def stats_cell(name: str, value: Any) -> str:
    """One figure of :func:`stats_dict` for a table: durations as ``3.2s``, rates per second,
    the outcomes as ``acked 3, nacked 1``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name == "lag" or name.endswith(("_p50", "_p95", "_p99", "_age", "_seconds")):
        return format_duration(float(value))
    if name == "throughput":
        return f"{float(value):.2f}/s"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    return str(value)


def info_dict(info: JobInfo, *, history: bool) -> dict[str, Any]:
    """A job as JSON: every field, times in ISO 8601, the attempts with ``history``."""
    data: dict[str, Any] = {
        "id": info.id,
        "queue": info.queue,
        "state": info.state.value,
        "priority": info.priority,
        "attempts": info.attempts,
        "max_attempts": info.max_attempts,
        "run_at": info.run_at.isoformat(),
        "created_at": info.created_at.isoformat(),
        "enqueued_at": info.enqueued_at.isoformat(),
        "finished_at": info.finished_at.isoformat() if info.finished_at else None,
        "lease_expires_at": (info.lease_expires_at.isoformat() if info.lease_expires_at else None),
        "dedupe_key": info.dedupe_key,
        "last_error": info.last_error,
        "payload": info.payload,
        "result": info.result,
    }
    for extra in ("tags", "headers"):  # where this version's jobs carry them
        if hasattr(info, extra):
            data[extra] = _jsonable(getattr(info, extra))
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


class Output:
    """Where the command's results go.

    :param json_mode: print JSON (``--json``) instead of tables.
    :param stream: stdout by default; ``rich`` is used only when it is a terminal.
    """

    def __init__(self, *, json_mode: bool = False, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.json_mode = json_mode
        self.rich = (
            HAVE_RICH
            and not json_mode
            and self.stream.isatty()
            and os.environ.get("TERM") != "dumb"
        )
        self.console: Any = Console(file=self.stream, highlight=False) if self.rich else None

    def json(self, data: Any) -> None:
        """Print ``data`` as indented JSON."""
        print(json.dumps(_jsonable(data), indent=2, default=str), file=self.stream)

    def line(self, text: str, *, style: str | None = None) -> None:
        """One line of text; ``style`` (a rich style) colours it in a terminal."""
        if self.console is not None:
            self.console.print(text, style=style, markup=False)
        else:
            print(text, file=self.stream)

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        title: str | None = None,
        numeric: Sequence[str] = (),
        state_column: str | None = None,
    ) -> None:
        """A table; ``numeric`` columns align right; ``state_column`` is coloured by state."""
        if self.console is not None:
            self.console.print(render_table(columns, rows, title, numeric, state_column))
            return
        if title:
            print(title, file=self.stream)
        widths = [len(c) for c in columns]
        for row in rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

        def fmt(cells: Sequence[str]) -> str:
            parts = [
                cell.rjust(w) if col in numeric else cell.ljust(w)
                for col, cell, w in zip(columns, cells, widths, strict=True)
            ]
            return "  ".join(parts).rstrip()

        print(fmt(columns), file=self.stream)
        for row in rows:
            print(fmt(row), file=self.stream)

    def fields(self, pairs: Sequence[tuple[str, str]], *, title: str | None = None) -> None:
        """Name-value lines, the names aligned."""
        if self.console is not None:
            table = Table(
                title=Text(title) if title else None,
                show_header=False,
                box=None,
                title_justify="left",
            )
            table.add_column(style="bold")
            table.add_column(overflow="fold")
            for name, value in pairs:
                table.add_row(Text(name), Text(value, style=STATE_STYLES.get(value, "")))
            self.console.print(table)
            return
        if title:
            print(title, file=self.stream)
        width = max((len(n) for n, _ in pairs), default=0)
        for name, value in pairs:
            print(f"{name:<{width}}  {value}", file=self.stream)

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[Callable[[int, int], None]]:
        """A progress bar on a terminal (nothing otherwise); yields ``update(done, total)``."""
        if self.console is None:
            yield lambda done, total: None
            return
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=self.console,
            transient=False,
        ) as bar:
            task = bar.add_task(description, total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield update


def render_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str | None,
    numeric: Sequence[str] = (),
    state_column: str | None = None,
) -> Any:
    """A ``rich`` table (for :class:`Output` and the live view)."""
    # Cells are Text, never markup: a payload such as "[bold]" is shown as it is.
    table = Table(title=Text(title) if title else None, title_justify="left", header_style="bold")
    for col in columns:
        table.add_column(Text(col), justify="right" if col in numeric else "left")
    for row in rows:
        table.add_row(
            *(
                Text(cell, style=STATE_STYLES.get(cell, "") if col == state_column else "")
                for col, cell in zip(columns, row, strict=True)
            )
        )
    return table


def error(message: str) -> None:
    """One line on stderr: ``persistq: error: message``."""
    print(f"persistq: error: {message}", file=sys.stderr)
