"""Where the time goes in persistq's hot paths (a diagnostic, not a benchmark).

Usage::

    python benchmarks/profile_hot_paths.py [--n 2000] [--durability full] [--top 25]
        [--path put|put100|put_many|cycle|cycle64|pool ...] [--backlog N]
        [--no-cprofile] [--pyinstrument]

Written for the group-commit design (``persistq_async/_writer.py``): every write on the job path
is an ``Op`` that a dedicated writer thread runs inside one ``BEGIN IMMEDIATE ... COMMIT`` per
batch. Without changing anything in ``persistq_async`` (it wraps module attributes at run
time), for each path it reports:

- the writer batches: how many, their sizes (histogram), and per batch the wall time on the
  writer thread, split into the operations' own statements and the rest (BEGIN, COMMIT with
  its fsync, rollbacks), plus the writer thread's CPU time; the ops per batch by kind (put,
  claim, ack, ...);
- the hand-over costs of the one hop per batch: from ``_dispatch`` on the event loop to the
  batch starting on the writer thread, and from the batch's end to ``_completed`` running on
  the loop (``call_soon_threadsafe`` wake-up);
- the SQL statements per job (a class-level ``before_cursor_execute`` listener), and the reads
  that still go through aiosqlite (change-token polls, ``join``'s counts) with their hops;
- the event loop thread's CPU time per job, and its utilisation (CPU / wall): near 100 % means
  the loop, not SQLite, is the bottleneck;

then a cProfile of the event-loop thread and, separately, one of the writer thread (enabled
around each batch on that thread), sorted by own time. ``--pyinstrument`` adds a pyinstrument
tree of the event loop when it is installed. ``--backlog N`` pre-fills N extra jobs behind the
ones the cycle/pool paths drain (to see what a large backlog costs per claim).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite.core
import anyio
from common import payload
from sqlalchemy import event
from sqlalchemy.engine import Engine

import persistq_async as pq
from persistq_async.store import writer as _writer

PATHS = ("put", "put100", "put_many", "cycle", "cycle64", "pool")


def _op_kind(fn: Any) -> str:
    """A short name for an operation from its function (``JobStore.ack.<locals>.run`` -> ack)."""
    name = getattr(fn, "__qualname__", None) or repr(fn)
    parts = [p for p in name.split(".") if p not in ("<locals>", "run", "<lambda>", "JobStore")]
    kind = parts[0] if parts else name
    return {"_put_fn": "put", "_claim_fn": "claim", "_release_fn": "release"}.get(kind, kind)


class Tracer:
    """Counts and times writer batches, hops, statements and aiosqlite reads."""

    def __init__(self, writer_profile: cProfile.Profile | None = None) -> None:
        self.enabled = False
        self.statements: Counter[str] = Counter()
        self.read_hops: Counter[str] = Counter()
        self.read_hop_seconds: defaultdict[str, float] = defaultdict(float)
        self.batch_sizes: list[int] = []
        self.batch_wall: list[float] = []
        self.batch_ops_wall: list[float] = []
        self.batch_cpu: list[float] = []
        self.op_kinds: Counter[str] = Counter()
        self.op_seconds: defaultdict[str, float] = defaultdict(float)
        self.dispatch_to_start: list[float] = []
        self.end_to_completed: list[float] = []
        self.completed_seconds: list[float] = []
        self._dispatched: deque[float] = deque()
        self._ended: dict[int, float] = {}
        self._lock = threading.Lock()
        self._writer_profile = writer_profile
        self._saved: list[tuple[Any, str, Any]] = []

    # -------------------------------------------------------------- patching
    def _patch(self, owner: Any, name: str, new: Any) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    def install(self) -> None:
        """Wrap run_batch, ThreadWriter._dispatch/_completed and aiosqlite's queueing."""
        tracer = self
        original_run_batch = _writer.run_batch
        original_dispatch = _writer.ThreadWriter._dispatch
        original_completed = _writer.ThreadWriter._completed
        original_execute = aiosqlite.core.Connection._execute

        def run_batch(conn: Any, batch: list[Any], **kwargs: Any) -> None:
            if not tracer.enabled:
                return original_run_batch(conn, batch, **kwargs)
            start = time.perf_counter()
            cpu = time.thread_time()
            with tracer._lock:
                if tracer._dispatched:
                    tracer.dispatch_to_start.append(start - tracer._dispatched.popleft())
            ops_time = [0.0]
            for op in batch:
                fn = op.fn
                kind = _op_kind(fn)
                tracer.op_kinds[kind] += 1

                def timed(c: Any, fn: Any = fn, kind: str = kind) -> Any:
                    t = time.perf_counter()
                    try:
                        return fn(c)
                    finally:
                        dt = time.perf_counter() - t
                        ops_time[0] += dt
                        tracer.op_seconds[kind] += dt

                op.fn = timed
            prof = tracer._writer_profile
            if prof is not None:
                prof.enable()
            try:
                return original_run_batch(conn, batch, **kwargs)
            finally:
                if prof is not None:
                    prof.disable()
                end = time.perf_counter()
                with tracer._lock:
                    tracer.batch_sizes.append(len(batch))
                    tracer.batch_wall.append(end - start)
                    tracer.batch_ops_wall.append(ops_time[0])
                    tracer.batch_cpu.append(time.thread_time() - cpu)
                    tracer._ended[id(batch)] = end

        def dispatch(self: Any) -> None:
            if tracer.enabled:
                with tracer._lock:
                    tracer._dispatched.append(time.perf_counter())
            return original_dispatch(self)

        def completed(self: Any, batch: list[Any]) -> None:
            now = time.perf_counter()
            with tracer._lock:
                ended = tracer._ended.pop(id(batch), None)
            if ended is not None:
                tracer.end_to_completed.append(now - ended)
            try:
                return original_completed(self, batch)
            finally:
                if ended is not None:
                    tracer.completed_seconds.append(time.perf_counter() - now)

        async def execute(conn: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if not tracer.enabled:
                return await original_execute(conn, fn, *args, **kwargs)
            name = getattr(fn, "__name__", repr(fn))
            if name in ("execute", "executemany") and args and isinstance(args[0], str):
                name = f"{name}: {_shorten(args[0])}"
            tracer.read_hops[name] += 1

            def timed(*a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    with tracer._lock:
                        tracer.read_hop_seconds[name] += time.perf_counter() - t

            return await original_execute(conn, timed, *args, **kwargs)

        self._patch(_writer, "run_batch", run_batch)
        self._patch(_writer.ThreadWriter, "_dispatch", dispatch)
        self._patch(_writer.ThreadWriter, "_completed", completed)
        self._patch(aiosqlite.core.Connection, "_execute", execute)
        event.listen(Engine, "before_cursor_execute", self._on_statement)

    def uninstall(self) -> None:
        """Undo :meth:`install`."""
        for owner, name, value in reversed(self._saved):
            setattr(owner, name, value)
        self._saved.clear()
        event.remove(Engine, "before_cursor_execute", self._on_statement)

    def _on_statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self.enabled:
            with self._lock:
                self.statements[_shorten(statement)] += 1


def _shorten(statement: str) -> str:
    text = re.sub(r"\s+", " ", statement).strip()
    text = re.sub(r"sa_savepoint_\d+", "sa_savepoint_N", text)
    return text if len(text) <= 110 else text[:107] + "..."


def _us(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6  # noqa: E731
    return f"mean {statistics.fmean(values) * 1e6:,.0f} us, p50 {p(0.5):,.0f}, p99 {p(0.99):,.0f}"


# ------------------------------------------------------------------ the paths


async def _noop(job: pq.Job) -> None:
    """No-op pool handler (returning acks)."""


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
    if path == "put_many":
        for first in range(0, n, 1000):
            await q.put_many([payload(i) for i in range(first, min(first + 1000, n))])
        return n
    if path == "pool":
        async with pq.Supervisor(grace=1.0) as sup:
            pool = await sup.add(q, _noop, concurrency=64)
            if await q.store.active_count(q.name) <= n:
                await q.join()
            else:  # a backlog stays behind: stop after the first n
                while pool.processed < n:  # noqa: ASYNC110 - the pool's counter has no event
                    await anyio.sleep(0.002)
            return pool.processed
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
    backlog: int,
    around: Callable[[Callable[[], Awaitable[int]]], Awaitable[int]],
) -> tuple[int, float]:
    with tempfile.TemporaryDirectory(prefix="pqprof-") as tmp:
        async with pq.Queue(Path(tmp) / "p.db", name="bench", durability=durability) as q:
            if path.startswith(("cycle", "pool")):
                total = n + backlog
                for first in range(0, total, 10_000):
                    await q.put_many([payload(i) for i in range(first, min(first + 10_000, total))])
            start = time.perf_counter()
            done = await around(lambda: _loop(path, q, n))
            return done, time.perf_counter() - start


def trace(path: str, n: int, durability: str, backlog: int) -> None:
    """Batches, hops, statements per job, and where the wall time went."""
    tracer = Tracer()
    tracer.install()
    loop_cpu = 0.0

    async def around(work: Callable[[], Awaitable[int]]) -> int:
        nonlocal loop_cpu
        tracer.enabled = True
        cpu = time.thread_time()
        try:
            return await work()
        finally:
            loop_cpu = time.thread_time() - cpu
            tracer.enabled = False

    try:
        done, seconds = anyio.run(_run, path, n, durability, backlog, around)
    finally:
        tracer.uninstall()
    per = max(done, 1)
    extra = f", {backlog:,} more waiting" if backlog and path.startswith(("cycle", "pool")) else ""
    print(
        f"\n=== {path} (durability={durability}{extra}): {done} jobs in {seconds:.2f} s, "
        f"{done / seconds:,.0f} jobs/s, {seconds / per * 1e6:,.0f} us/job wall"
    )
    sizes = tracer.batch_sizes
    if sizes:
        nb = len(sizes)
        wall = sum(tracer.batch_wall)
        ops = sum(tracer.batch_ops_wall)
        cpu = sum(tracer.batch_cpu)
        hist = Counter(
            "1"
            if s == 1
            else "2-7"
            if s < 8
            else "8-31"
            if s < 32
            else "32-127"
            if s < 128
            else "128+"
            for s in sizes
        )
        print(
            f"writer batches: {nb:,} ({nb / per:.3f} per job); ops per batch mean "
            f"{statistics.fmean(sizes):.1f}, median {statistics.median(sizes):g}, max {max(sizes)}"
        )
        print(
            "  batch sizes: "
            + ", ".join(
                f"{k}: {hist[k]}" for k in ("1", "2-7", "8-31", "32-127", "128+") if hist[k]
            )
        )
        print(
            "  ops by kind: "
            + ", ".join(
                f"{k} {c:,} ({tracer.op_seconds[k] / c * 1e6:,.0f} us each)"
                for k, c in tracer.op_kinds.most_common()
            )
        )
        print(f"  per batch on the writer thread: {_us(tracer.batch_wall)}")
        print(
            f"  writer thread busy {wall:.2f} s of {seconds:.2f} s wall ({wall / seconds:.0%}); "
            f"of that: ops' statements {ops:.2f} s, BEGIN/COMMIT(fsync)/rollback {wall - ops:.2f} s"
            f"; writer CPU {cpu:.2f} s (the rest of its busy time is I/O wait)"
        )
        print(
            f"  per job: writer thread {wall / per * 1e6:,.0f} us, of which commit etc. "
            f"{(wall - ops) / per * 1e6:,.0f} us"
        )
        print(f"  hop loop->writer (dispatch to batch start): {_us(tracer.dispatch_to_start)}")
        print(f"  hop writer->loop (batch end to _completed): {_us(tracer.end_to_completed)}")
        print(
            f"  _completed on the loop (wake callers, post-commit hooks): "
            f"{_us(tracer.completed_seconds)}"
        )
    print(
        f"event loop thread CPU: {loop_cpu:.2f} s = {loop_cpu / per * 1e6:,.0f} us/job, "
        f"{loop_cpu / seconds:.0%} of wall (near 100% = the loop is the bottleneck)"
    )
    print("statements per job (writer and readers):")
    for stmt, count in tracer.statements.most_common(12):
        print(f"  {count / per:7.3f}  {stmt}")
    if tracer.read_hops:
        hops = sum(tracer.read_hops.values())
        print(f"aiosqlite (read) hops per job: {hops / per:.3f}")
        for name, count in tracer.read_hops.most_common(8):
            us = tracer.read_hop_seconds[name] / max(count, 1) * 1e6
            print(f"  {count / per:7.3f}  {us:8.1f} us each  {name}")


def _print_stats(prof: cProfile.Profile, title: str, key: str, top: int) -> None:
    out = io.StringIO()
    try:
        stats = pstats.Stats(prof, stream=out)
    except TypeError:  # nothing was recorded
        print(f"\n--- {title}: nothing recorded ---")
        return
    stats.strip_dirs().sort_stats(key).print_stats(top)
    print(f"\n--- {title}, by {key} ---")
    print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))


def profile(
    path: str, n: int, durability: str, backlog: int, top: int, use_pyinstrument: bool
) -> None:
    """cProfile of the event loop, then (a second run) of the writer thread.

    Two runs, not one: from Python 3.12 cProfile sits on ``sys.monitoring``, which allows one
    active profiler per process.
    """
    loop_prof = cProfile.Profile()

    async def around(work: Callable[[], Awaitable[int]]) -> int:
        loop_prof.enable()
        try:
            return await work()
        finally:
            loop_prof.disable()

    anyio.run(_run, path, n, durability, backlog, around)
    _print_stats(loop_prof, f"cProfile {path}: event loop thread", "tottime", top)
    _print_stats(loop_prof, f"cProfile {path}: event loop thread", "cumulative", top)

    writer_prof = cProfile.Profile()
    tracer = Tracer(writer_prof)
    tracer.install()

    async def around_writer(work: Callable[[], Awaitable[int]]) -> int:
        tracer.enabled = True
        try:
            return await work()
        finally:
            tracer.enabled = False

    try:
        anyio.run(_run, path, n, durability, backlog, around_writer)
    finally:
        tracer.uninstall()
    _print_stats(writer_prof, f"cProfile {path}: writer thread", "tottime", max(12, top // 2))
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

        anyio.run(_run, path, n, durability, backlog, around_pi)
        print(profiler.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    """Trace, then profile, each chosen path."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="jobs per path")
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    parser.add_argument("--backlog", type=int, default=0, help="extra jobs waiting (cycle/pool)")
    parser.add_argument("--top", type=int, default=25, help="cProfile rows to print")
    parser.add_argument("--path", action="append", choices=PATHS, help="default: all")
    parser.add_argument(
        "--pyinstrument", action="store_true", help="also print a pyinstrument tree"
    )
    parser.add_argument("--no-cprofile", action="store_true", help="only the trace")
    args = parser.parse_args()
    for path in args.path or PATHS:
        trace(path, args.n, args.durability, args.backlog)
        if not args.no_cprofile:
            profile(path, args.n, args.durability, args.backlog, args.top, args.pyinstrument)


if __name__ == "__main__":
    main()
