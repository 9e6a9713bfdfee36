"""Where the time goes in persistq's put and get+ack paths (a diagnostic, not a benchmark).

Usage::

    python benchmarks/profile_hot_paths.py [--n 400] [--durability full] [--top 25]
        [--path put|put100|cycle|cycle64 ...] [--pyinstrument]

For each path it reports, per job:

- the SQL statements SQLAlchemy sent (counted through a class-level ``before_cursor_execute``
  listener, so nothing in ``persistq_async`` is changed);
- the aiosqlite thread hops (every call queued to aiosqlite's worker thread, by the name of the
  sqlite3 method it runs) and the wall time spent inside them on that thread, which includes
  the fsync of each COMMIT;
- the rest: event-loop-side Python (SQLAlchemy compile/cache lookups, result processing,
  persistq's own bookkeeping) plus the latency of waking the loop after each hop;

then a cProfile of the same loop (the event-loop thread only: aiosqlite's thread is invisible
to cProfile, which is why the hop timing above exists), sorted by own time and by cumulative
time. ``--pyinstrument`` adds a pyinstrument tree when it is installed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite.core
import anyio
from common import payload
from sqlalchemy import event
from sqlalchemy.engine import Engine

import persistq_async as pq

PATHS = ("put", "put100", "cycle", "cycle64")


class Tracer:
    """Counts statements and aiosqlite hops, and times the hops on the worker thread."""

    def __init__(self) -> None:
        self.statements: Counter[str] = Counter()
        self.hops: Counter[str] = Counter()
        self.hop_seconds: defaultdict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self.enabled = False
        self._original: Any = None

    def install(self) -> None:
        """Patch aiosqlite's queueing method and listen to every Engine's statements."""
        original = aiosqlite.core.Connection._execute
        self._original = original
        tracer = self

        async def traced(conn: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if not tracer.enabled:
                return await original(conn, fn, *args, **kwargs)
            name = getattr(fn, "__name__", repr(fn))
            if name in ("execute", "executemany") and args and isinstance(args[0], str):
                # Time each statement on its own line: which SQL costs the sqlite thread most.
                name = f"{name}: {_shorten(args[0])}"
            tracer.hops[name] += 1

            def timed(*a: Any, **k: Any) -> Any:
                start = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    with tracer._lock:
                        tracer.hop_seconds[name] += time.perf_counter() - start

            return await original(conn, timed, *args, **kwargs)

        aiosqlite.core.Connection._execute = traced  # type: ignore[method-assign]
        event.listen(Engine, "before_cursor_execute", self._on_statement)

    def uninstall(self) -> None:
        """Undo :meth:`install`."""
        aiosqlite.core.Connection._execute = self._original  # type: ignore[method-assign]
        event.remove(Engine, "before_cursor_execute", self._on_statement)

    def _on_statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self.enabled:
            self.statements[_shorten(statement)] += 1


def _shorten(statement: str) -> str:
    text = re.sub(r"\s+", " ", statement).strip()
    # One line for all savepoints: SQLAlchemy numbers them sa_savepoint_1, _2, ...
    text = re.sub(r"sa_savepoint_\d+", "sa_savepoint_N", text)
    return text if len(text) <= 110 else text[:107] + "..."


async def _loop(path: str, q: pq.Queue, n: int) -> int:
    """The work of one path; returns how many jobs it handled."""
    if path == "put":
        for i in range(n):
            await q.put(payload(i))
        return n
    if path == "put100":
        per = max(1, n // 100)

        async def producer(first: int) -> None:
            for i in range(first, first + per):
                await q.put(payload(i))

        async with anyio.create_task_group() as tg:
            for p in range(100):
                tg.start_soon(producer, p * per)
        return per * 100
    if path == "cycle":
        done = 0
        while done < n:
            job = await q.get_nowait()
            if job is None:
                break
            await job.ack()
            done += 1
        return done
    done = 0

    async def consumer() -> None:
        nonlocal done
        while done < n:
            job = await q.get_nowait()
            if job is None:
                return
            await job.ack()
            done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(64):
            tg.start_soon(consumer)
    return done


async def _run(
    path: str,
    n: int,
    durability: str,
    around: Callable[[Callable[[], Awaitable[int]]], Awaitable[int]],
) -> tuple[int, float]:
    with tempfile.TemporaryDirectory(prefix="pqprof-") as tmp:
        async with pq.Queue(Path(tmp) / "p.db", name="bench", durability=durability) as q:
            if path.startswith("cycle"):
                for first in range(0, n, 1000):
                    await q.put_many([payload(i) for i in range(first, min(first + 1000, n))])
            start = time.perf_counter()
            done = await around(lambda: _loop(path, q, n))
            return done, time.perf_counter() - start


def trace(path: str, n: int, durability: str) -> None:
    """Statements and hops per job, and where the wall time went."""
    tracer = Tracer()
    tracer.install()

    loop_cpu = 0.0

    async def around(work: Callable[[], Awaitable[int]]) -> int:
        nonlocal loop_cpu
        tracer.enabled = True
        # CPU time of the event-loop thread alone: separates Python work from waiting on hops.
        cpu = time.thread_time()
        try:
            return await work()
        finally:
            loop_cpu = time.thread_time() - cpu
            tracer.enabled = False

    try:
        done, seconds = anyio.run(_run, path, n, durability, around)
    finally:
        tracer.uninstall()
    per = max(done, 1)
    print(f"\n=== {path} (durability={durability}): {done} jobs, {done / seconds:,.0f} jobs/s")
    print(f"wall per job: {seconds / per * 1e6:,.0f} us")
    print("statements per job:")
    for stmt, count in tracer.statements.most_common():
        print(f"  {count / per:6.2f}  {stmt}")
    hops = sum(tracer.hops.values())
    in_thread = sum(tracer.hop_seconds.values())
    print(
        f"aiosqlite thread hops per job: {hops / per:.1f} (per hop: calls/job, time on its thread)"
    )
    for name, count in tracer.hops.most_common():
        us = tracer.hop_seconds[name] / max(count, 1) * 1e6
        print(f"  {count / per:6.2f}  {us:8.1f} us each  {name}")
    print(
        f"time on the sqlite thread per job: {in_thread / per * 1e6:,.0f} us; the rest "
        f"(event loop Python + hop wake-up latency): {(seconds - in_thread) / per * 1e6:,.0f} us"
    )
    print(
        f"CPU of the event-loop thread per job: {loop_cpu / per * 1e6:,.0f} us "
        f"(SQLAlchemy, greenlets, asyncio, persistq; the tracer adds a little)"
    )


def profile(path: str, n: int, durability: str, top: int, use_pyinstrument: bool) -> None:
    """cProfile (and optionally pyinstrument) of the same loop, event-loop thread only."""
    prof = cProfile.Profile()

    async def around(work: Callable[[], Awaitable[int]]) -> int:
        prof.enable()
        try:
            return await work()
        finally:
            prof.disable()

    anyio.run(_run, path, n, durability, around)
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key)
        stats.print_stats(top)
        print(f"\n--- cProfile {path}, by {key} ---")
        print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))
    if use_pyinstrument:
        try:
            from pyinstrument import Profiler
        except ImportError:
            print("note: pyinstrument is not installed; skipping its tree")
            return
        profiler = Profiler(async_mode="disabled")

        async def around_pi(work: Callable[[], Awaitable[int]]) -> int:
            profiler.start()
            try:
                return await work()
            finally:
                profiler.stop()

        anyio.run(_run, path, n, durability, around_pi)
        print(profiler.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    """Trace, then profile, each chosen path."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="jobs per path")
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    parser.add_argument("--top", type=int, default=25, help="cProfile rows to print")
    parser.add_argument("--path", action="append", choices=PATHS, help="default: all")
    parser.add_argument(
        "--pyinstrument", action="store_true", help="also print a pyinstrument tree"
    )
    parser.add_argument("--no-cprofile", action="store_true", help="only the statement/hop trace")
    args = parser.parse_args()
    for path in args.path or PATHS:
        trace(path, args.n, args.durability)
        if not args.no_cprofile:
            profile(path, args.n, args.durability, args.top, args.pyinstrument)


if __name__ == "__main__":
    main()
