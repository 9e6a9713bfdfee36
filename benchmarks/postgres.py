"""The throughput benchmark on PostgreSQL, beside SQLite's figures from the same run (issue #5).

Usage::

    python benchmarks/postgres.py [--url URL] [--quick] [--repeats N] [--durability D]
                                  [--json PATH] [--markdown PATH]

``--url`` defaults to ``$PERSISTQ_TEST_PG_URL``; without either, start a throwaway server with
``source .ci/start-postgres.sh start`` (it exports the variable) and run this again.

The same code and sizes run on PostgreSQL (``postgresql+asyncpg://...``) and on a temporary
SQLite file:

- put, 1 caller awaiting each ``put`` in turn;
- put, 100 concurrent producers;
- ``put_many`` in batches of 1000;
- the full put-claim-ack cycle across processes: ``pool_jobs`` jobs pre-filled with
  ``put_many``, then drained by N worker processes (``pg_worker_child.py``; N = 1, 4, 8), each
  running a ``Supervisor`` pool with a no-op handler, concurrency 16. The workers are started
  and open their queue first (interpreter start-up and imports are not the queue's cost); the
  clock starts when they are all told to add their pools and stops when this process's polls of
  ``Queue.stats()`` (every 20 ms, bounded by ``pool_cap``) see every job finished. The start-up
  time is kept in the results as ``spawn_s``.

Every figure is jobs/s; the table shows medians over the repeats (3; ``--quick``: 1) and the
ratio PostgreSQL/SQLite. Each repeat goes through every scenario in turn, SQLite then
PostgreSQL, so a slow patch of the machine hits both alike. On PostgreSQL each measurement uses a
fresh queue name, whose jobs are purged afterwards; SQLite gets a fresh file each time.

Results go to ``benchmarks/results/postgres.json`` (the layout of ``run.py``'s JSON) and the
table as markdown to ``benchmarks/results/postgres.md``. Not part of the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from common import Comparison, Deadline, Sample, Scenario, Sizes, Skipped, payload, workdir
from pool_scenarios import prefill
from report import Result, ratios, write_json

import persistq_async as pq

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CHILD = HERE / "pg_worker_child.py"
ENV_URL = "PERSISTQ_TEST_PG_URL"
START_HINT = (
    "no PostgreSQL URL: pass --url postgresql+asyncpg://USER@HOST:PORT/DB, or start a throwaway "
    "server with\n    source .ci/start-postgres.sh start\n"
    f"(it exports {ENV_URL}) and run this again"
)
BACKENDS = ("sqlite", "postgresql")
BACKEND_LABEL = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
WORKERS = (1, 4, 8)
#: Pool slots in each worker process.
WORKER_CONCURRENCY = 16
#: How often the parent polls ``Queue.stats()`` while the workers drain.
STATS_POLL = 0.02
#: Bounds on the worker processes' start-up and shut-down.
SPAWN_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

#: One measurement on an open queue: (queue, target, temp dir, sizes) -> sample.
Measure = Callable[["pq.Queue", "Target", Path, Sizes], Awaitable[Sample]]


def sizes_for(quick: bool) -> Sizes:
    """``run.py``'s sizes for the puts; 4,000 jobs (2,000 with --quick) for each cycle."""
    if quick:
        return dataclasses.replace(Sizes.quick(), pool_jobs=2_000, pool_cap=15.0)
    return dataclasses.replace(Sizes.full(), pool_jobs=4_000, pool_cap=20.0)


# ---------------------------------------------------------------------------- where the queue lives


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One backend: a PostgreSQL URL, or (``url`` None) a fresh SQLite file per measurement."""

    backend: str
    url: str | None
    durability: str

    def where(self, tmp: Path) -> str:
        """The queue's URL for a measurement running in ``tmp``."""
        return self.url if self.url is not None else str(tmp / "persistq.db")


@asynccontextmanager
async def open_queue(target: Target, tmp: Path, scenario: str) -> AsyncIterator[pq.Queue]:
    """A queue of a fresh name; on PostgreSQL its jobs are purged on the way out."""
    name = f"bench-{scenario}-{uuid.uuid4().hex[:12]}"
    try:
        async with pq.Queue(target.where(tmp), name=name, durability=target.durability) as q:
            try:
                yield q
            finally:
                if target.url is not None:
                    with anyio.CancelScope(shield=True):
                        for state in pq.JobState:
                            await q.purge(state)
                quiet_close(True)
    finally:
        quiet_close(False)


def quiet_close(on: bool) -> None:
    """Hide the library's warnings while a queue closes (closing its notification listener
    logs "disconnected; reconnecting"); warnings while measuring still show."""
    logging.getLogger("persistq_async").setLevel(logging.ERROR if on else logging.NOTSET)


# ---------------------------------------------------------------------------- scenarios


async def put_sequential(q: pq.Queue, sizes: Sizes) -> Sample:
    """One caller awaiting each ``put`` in turn."""
    done = 0
    deadline = Deadline(sizes.time_cap)
    start = time.perf_counter()
    for i in range(sizes.seq_puts):
        await q.put(payload(i))
        done += 1
        if deadline.passed():
            break
    return Sample(done, time.perf_counter() - start)


async def put_concurrent(q: pq.Queue, sizes: Sizes) -> Sample:
    """``sizes.producers`` tasks calling ``put`` at once."""
    done = 0
    deadline = Deadline(sizes.time_cap)

    async def producer(first: int) -> None:
        nonlocal done
        for i in range(first, first + sizes.puts_per_producer):
            await q.put(payload(i))
            done += 1
            if deadline.passed():
                return

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for p in range(sizes.producers):
            tg.start_soon(producer, p * sizes.puts_per_producer)
    return Sample(done, time.perf_counter() - start)


async def put_many(q: pq.Queue, sizes: Sizes) -> Sample:
    """``put_many`` in batches of ``sizes.put_many_batch``."""
    done = 0
    deadline = Deadline(sizes.time_cap)
    start = time.perf_counter()
    for first in range(0, sizes.put_many_rows, sizes.put_many_batch):
        batch = range(first, min(first + sizes.put_many_batch, sizes.put_many_rows))
        await q.put_many([payload(i) for i in batch])
        done += len(batch)
        if deadline.passed():
            break
    return Sample(done, time.perf_counter() - start)


async def _read_line(stream: BufferedByteReceiveStream, who: str) -> str:
    try:
        return (await stream.receive_until(b"\n", 1 << 16)).decode().strip()
    except (anyio.IncompleteRead, anyio.EndOfStream):
        raise RuntimeError(f"{who} exited early (its stderr is above)") from None


def worker_cycle(workers: int) -> Measure:
    """Pre-fill ``sizes.pool_jobs``, then time ``workers`` processes draining them."""

    async def run(q: pq.Queue, target: Target, tmp: Path, sizes: Sizes) -> Sample:
        total = sizes.pool_jobs
        await prefill(q, total, sizes.put_many_batch)
        cmd = [
            sys.executable,
            str(CHILD),
            target.where(tmp),
            q.name,
            str(WORKER_CONCURRENCY),
            target.durability,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs: list[Process] = []
        try:
            began = time.perf_counter()
            for _ in range(workers):
                procs.append(
                    await anyio.open_process(
                        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env
                    )
                )
            outs = [BufferedByteReceiveStream(p.stdout) for p in procs if p.stdout is not None]
            with anyio.fail_after(SPAWN_TIMEOUT):
                for i, out in enumerate(outs):
                    line = await _read_line(out, f"worker {i}")
                    if line != "ready":
                        raise RuntimeError(f"worker {i} said {line!r}, not 'ready'")
            spawn_s = time.perf_counter() - began

            start = time.perf_counter()
            for p in procs:
                assert p.stdin is not None
                await p.stdin.send(b"go\n")
            deadline = Deadline(sizes.pool_cap)
            while True:
                stats = await q.stats()
                finished = stats.done + stats.dead + stats.cancelled
                if finished >= total or deadline.passed():
                    break
                await anyio.sleep(STATS_POLL)
            seconds = time.perf_counter() - start

            for p in procs:
                assert p.stdin is not None
                await p.stdin.send(b"stop\n")
            reports = []
            with anyio.fail_after(STOP_TIMEOUT):
                for i, out in enumerate(outs):
                    reports.append(json.loads(await _read_line(out, f"worker {i}")))
                for p in procs:
                    await p.wait()
        finally:
            for p in procs:
                if p.returncode is None:
                    p.kill()
                with anyio.CancelScope(shield=True):
                    await p.aclose()
        processed = [r["processed"] for r in reports]
        return Sample(
            finished,
            seconds,
            {
                "workers": float(workers),
                "spawn_s": spawn_s,
                "dead": float(stats.dead),
                "failed": float(sum(r["failed"] for r in reports)),
                "min_per_worker": float(min(processed)),
                "max_per_worker": float(max(processed)),
                # CPU milliseconds all workers used from "go" to "stop", per job finished.
                "worker_cpu_ms_per_job": sum(r["cpu_s"] for r in reports) * 1e3 / max(1, finished),
            },
        )

    return run


def _puts(
    fn: Callable[[pq.Queue, Sizes], Awaitable[Sample]],
) -> Measure:
    async def run(q: pq.Queue, target: Target, tmp: Path, sizes: Sizes) -> Sample:
        return await fn(q, sizes)

    return run


#: (key, label, measurement) in the order of the table.
MEASUREMENTS: list[tuple[str, str, Measure]] = [
    ("put.sequential", "put, 1 caller", _puts(put_sequential)),
    ("put.concurrent", "put, 100 producers", _puts(put_concurrent)),
    ("put_many", "put_many, batches of 1000", _puts(put_many)),
    *(
        (
            f"cycle.workers{n}",
            f"put-claim-ack cycle, {n} worker process{'es' if n > 1 else ''} x "
            f"{WORKER_CONCURRENCY} slots",
            worker_cycle(n),
        )
        for n in WORKERS
    ),
]


def scenario(target: Target, key: str, label: str, measure: Measure) -> Scenario:
    """One (backend, measurement) as ``run.py``'s :class:`Scenario`; PostgreSQL's rows are
    compared with SQLite's."""

    async def main(tmp: Path, sizes: Sizes) -> Sample:
        async with open_queue(target, tmp, key) as q:
            return await measure(q, target, tmp, sizes)

    compare: tuple[Comparison, ...] = ()
    if target.backend == "postgresql":
        compare = (Comparison(f"sqlite.{key}", "SQLite"),)
    return Scenario(
        key=f"{target.backend}.{key}",
        system=target.backend,
        label=label,
        durability=target.durability if target.backend == "sqlite" else None,
        run=lambda tmp, sizes: anyio.run(main, tmp, sizes),
        compare=compare,
        notes="pre-filled with put_many; timed from 'go' to every job finished"
        if key.startswith("cycle")
        else "",
    )


# ---------------------------------------------------------------------------- the server


async def _server_facts(url: str) -> dict[str, Any]:
    """Open a queue once (so a bad URL fails here, with the library's message), then read the
    server's version and durability settings."""
    try:
        async with pq.Queue(url, name=f"bench-probe-{uuid.uuid4().hex[:12]}"):
            quiet_close(True)
    finally:
        quiet_close(False)
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            facts = {}
            for setting in ("server_version", "fsync", "synchronous_commit", "max_connections"):
                facts[setting] = (await conn.execute(text(f"SHOW {setting}"))).scalar_one()
            return facts
    finally:
        await engine.dispose()


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ---------------------------------------------------------------------------- presenting


def _pg_ratio(result: Result, by_key: dict[str, Result]) -> str:
    found = ratios(result, by_key)
    return f"{found[0]['ratio']:.2f}x" if found else ""


def _cycle_details(result: Result) -> str:
    spawn, cpu = result.figure("spawn_s"), result.figure("worker_cpu_ms_per_job")
    if spawn is None or cpu is None:
        return ""
    return f"workers up in {spawn:.1f} s; worker CPU {cpu:.2f} ms/job"


def format_table(results: list[Result]) -> str:
    """Scenario, backend, median jobs/s, jobs done (median), PostgreSQL/SQLite."""
    by_key = {r.scenario.key: r for r in results}
    head = ("scenario", "backend", "jobs/s (median)", "n", "PG/SQLite", "details")
    rows = []
    for r in results:
        backend = BACKEND_LABEL[r.scenario.system]
        if r.skipped is not None:
            rows.append((r.scenario.label, backend, "skipped", "", "", r.skipped))
            continue
        if not r.samples:
            rows.append((r.scenario.label, backend, "not run", "", "", ""))
            continue
        ops = statistics.median(s.ops for s in r.samples)
        rows.append(
            (
                r.scenario.label,
                backend,
                r.headline(),
                f"{ops:,.0f}",
                _pg_ratio(r, by_key),
                _cycle_details(r),
            )
        )
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(5)]
    lines = []
    for row in [head, *rows]:
        cells = [
            row[0].ljust(widths[0]),
            row[1].ljust(widths[1]),
            row[2].rjust(widths[2]),
            row[3].rjust(widths[3]),
            row[4].rjust(widths[4]),
            row[5],
        ]
        lines.append("  ".join(cells).rstrip())
        if row is head:
            lines.append("  ".join("-" * w for w in [*widths, len(head[5])]))
    return "\n".join(lines)


def _summary(meta: dict[str, Any]) -> str:
    pg = meta.get("postgresql") or {}
    sizes = meta["sizes"]
    return (
        f"Medians over {meta['repeats']} repeat(s), one run of `python benchmarks/postgres.py"
        f"{' ' + ' '.join(meta['argv']) if meta['argv'] else ''}`, {meta['date']}, "
        f"Python {meta['python']}, {meta['cpus']} CPUs (load average {meta['loadavg_before']:.1f} "
        f"before, {meta['loadavg_after']:.1f} after), {meta['elapsed_seconds']} s in all. "
        f"PostgreSQL {pg.get('server_version', '?')} on {pg.get('host', '?')} "
        f"(fsync={pg.get('fsync', '?')}, synchronous_commit={pg.get('synchronous_commit', '?')}) "
        f"through asyncpg; SQLite {meta['sqlite']} on a temporary file in WAL mode, "
        f"durability {meta['durability']}. Puts stop after their N jobs or "
        f"{sizes['time_cap']:g} s; each cycle drains {sizes['pool_jobs']:,} pre-filled jobs "
        f"with N worker processes x {WORKER_CONCURRENCY} pool slots (no-op handler), timed "
        "from telling the started workers to go until every job is done."
    )


def write_markdown(path: Path, results: list[Result], meta: dict[str, Any]) -> None:
    """One row per measurement: SQLite's and PostgreSQL's medians and their ratio."""
    by_key = {r.scenario.key: r for r in results}
    lines = [
        "| scenario | SQLite jobs/s | PostgreSQL jobs/s | PostgreSQL / SQLite |",
        "|---|--:|--:|--:|",
    ]
    for key, label, _ in MEASUREMENTS:
        lite, pg = by_key.get(f"sqlite.{key}"), by_key.get(f"postgresql.{key}")
        if lite is None or pg is None:
            continue
        lines.append(
            f"| {label} | {lite.headline()} | {pg.headline()} | {_pg_ratio(pg, by_key) or '-'} |"
        )
    lines += ["", _summary(meta), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run every measurement on both backends ``--repeats`` times; print and write the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", default=None, help=f"PostgreSQL URL (default ${ENV_URL})")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 3; --quick 1)")
    parser.add_argument(
        "--durability",
        choices=("full", "normal"),
        default="full",
        help="SQLite's durability (default full, the library's default)",
    )
    parser.add_argument(
        "--json", type=Path, default=RESULTS / "postgres.json", help="where to write the results"
    )
    parser.add_argument(
        "--markdown", type=Path, default=RESULTS / "postgres.md", help="the table as markdown"
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    url = args.url or os.environ.get(ENV_URL)
    if not url:
        print(START_HINT, file=sys.stderr)
        return 2
    try:
        facts = anyio.run(_server_facts, url)
    except pq.PersistQError as exc:
        print(f"error: {exc}\n{START_HINT}", file=sys.stderr)
        return 2
    facts["host"] = _hide_password(url).split("@")[-1]
    sizes = sizes_for(args.quick)

    targets = [
        Target("sqlite", None, args.durability),
        Target("postgresql", url, args.durability),
    ]
    results = [
        Result(scenario(t, key, label, measure))
        for key, label, measure in MEASUREMENTS
        for t in targets
    ]
    load_before = os.getloadavg()
    began = time.perf_counter()
    for rep in range(1, args.repeats + 1):
        for result in results:
            if result.skipped is not None:
                continue
            gc.collect()
            with workdir(result.scenario.key) as tmp:
                try:
                    sample = result.scenario.run(tmp, sizes)
                except Skipped as exc:
                    result.skipped = str(exc)
                    continue
            result.samples.append(sample)
            spawn = sample.extra.get("spawn_s")
            print(
                f"[{rep}/{args.repeats} {time.perf_counter() - began:6.1f}s] "
                f"{result.scenario.key:30} {sample.rate:>10,.0f} jobs/s  ({sample.ops} jobs"
                + (f", workers started in {spawn:.1f} s" if spawn is not None else "")
                + ")",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - began
    load_after = os.getloadavg()

    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "quick": args.quick,
        "repeats": args.repeats,
        "durability": args.durability,
        "sizes": {k: getattr(sizes, k) for k in sizes.__dataclass_fields__},
        "worker_concurrency": WORKER_CONCURRENCY,
        "workers": list(WORKERS),
        "elapsed_seconds": round(elapsed, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        # 1-minute load average before and after: other work on the machine skews the figures.
        "loadavg_before": load_before[0],
        "loadavg_after": load_after[0],
        "sqlite": sqlite3.sqlite_version,
        "postgresql": facts,
        "versions": {
            d: _version(d) for d in ("persistq_async", "sqlalchemy", "asyncpg", "aiosqlite")
        },
    }
    print()
    print(format_table(results))
    print()
    print(_summary(meta))
    write_json(args.json, results, meta)
    print(f"results: {args.json}")
    write_markdown(args.markdown, results, meta)
    print(f"markdown: {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
