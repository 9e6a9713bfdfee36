"""How persistq_async's throughput changes as the work grows (issue #11), on SQLite and PostgreSQL.

Usage::

    python benchmarks/scaling.py [--private-server | --url URL] [--quick] [--only CURVE ...]
                                 [--backend sqlite|postgresql ...] [--charts DIR]
                                 [--json PATH] [--markdown PATH]

The curves, each point on a fresh SQLite file or a fresh PostgreSQL database, no-op handler:

- ``concurrency``: one Supervisor pool of 1, 4, 16, 64, 256 slots draining pre-filled jobs;
- ``payload``: payloads of 100 B, 10 KB and 1 MB: puts from 16 concurrent producers, and a
  16-slot pool draining them (fewer jobs for the big payloads: a byte budget per point);
- ``queues``: 1, 100 and 1,000 queues (``Queue`` objects of different names) in one database,
  100 producers spreading their puts over all of them; the time to open the queues is kept
  apart (``open_s``), and a point that fails (too many connections, open files) is recorded
  with its error rather than ending the run;
- ``workers`` (PostgreSQL only): 1, 2, 4, 8 worker processes of 16 slots draining pre-filled
  jobs (``pg_worker_child.py``; their start-up is not timed).

One measurement per point (``--repeats`` for more; the chart shows the median). A timed loop
stops after its jobs or a time cap and reports the rate over what it did. PostgreSQL comes from
``--private-server`` (a throwaway server started with ``.ci/start-postgres.sh``, fsync on) or
``--url`` / ``$PERSISTQ_TEST_PG_URL``; without either only SQLite runs. Charts (PNG, matplotlib)
go to ``--charts`` (default ``benchmarks/results``), one per curve, the figures to ``--json``
and a markdown report to ``--markdown``. Not part of the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from pg_run import run_workers
from pg_systems import PERSISTQ, database_url
from pgserver import Databases, git_commit, private_server, server_facts, shown_argv
from scaling_report import draw_charts, write_json, write_markdown

import persistq_async as pq

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ENV_URL = "PERSISTQ_TEST_PG_URL"
CURVES = ("concurrency", "payload", "queues", "workers")
BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """The points of each curve and the work at each point."""

    concurrency: tuple[int, ...] = (1, 4, 16, 64, 256)
    payload_bytes: tuple[int, ...] = (100, 10_000, 1_000_000)
    queues: tuple[int, ...] = (1, 100, 1_000)
    workers: tuple[int, ...] = (1, 2, 4, 8)
    jobs: int = 3_000
    #: Jobs at most this many payload bytes in all, at each payload point.
    payload_budget: int = 64_000_000
    producers: int = 100
    time_cap: float = 5.0

    @classmethod
    def quick(cls) -> Sizes:
        """A smoke run: every point, small work."""
        return cls(jobs=300, payload_budget=8_000_000, time_cap=1.5)


@dataclass(slots=True)
class Point:
    """All measurements of one (curve, backend, x, series)."""

    curve: str
    backend: str
    x: int
    series: str
    rates: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None

    @property
    def median(self) -> float | None:
        """Median jobs/s, None when it failed."""
        return statistics.median(self.rates) if self.rates else None


async def _noop(job: pq.Job) -> None:
    """The no-op handler: returning acks the job."""


def make_payload(size: int) -> Callable[[int], dict[str, Any]]:
    """Job ``i``'s payload: about ``size`` bytes of JSON."""
    filler = "x" * max(0, size - 24)
    return lambda i: {"n": i, "data": filler}


async def _prefill(q: pq.Queue, jobs: int, size: int) -> None:
    body = make_payload(size)
    batch = max(1, min(1_000, 8_000_000 // size))
    for first in range(0, jobs, batch):
        await q.put_many([body(i) for i in range(first, min(first + batch, jobs))])


async def pool_drain(
    where: str, jobs: int, concurrency: int, size: int, cap: float
) -> dict[str, float]:
    """Pre-fill ``jobs``, then time one pool of ``concurrency`` slots draining them."""
    async with pq.Queue(where, name="bench") as q:
        await _prefill(q, jobs, size)
        async with pq.Supervisor(grace=1.0) as sup:
            start = time.perf_counter()
            await sup.add(q, _noop, concurrency=concurrency)
            with anyio.move_on_after(cap):
                await q.join()
            seconds = time.perf_counter() - start
            # Count committed outcomes: join() can return before the pool's own counter moves.
            s = await q.stats()
            return {"jobs": float(s.done + s.dead + s.cancelled), "seconds": seconds}


async def puts(
    queues: list[pq.Queue], producers: int, jobs: int, size: int, cap: float
) -> dict[str, float]:
    """``producers`` tasks putting ``jobs`` jobs between them, spread over ``queues``."""
    body = make_payload(size)
    each = max(1, jobs // producers)
    done = 0
    end = time.perf_counter() + cap

    async def producer(p: int) -> None:
        nonlocal done
        for j in range(each):
            # Producer p's j-th job goes to queue p + producers * j: every queue gets jobs.
            await queues[(p + producers * j) % len(queues)].put(body(p * each + j))
            done += 1
            if time.perf_counter() >= end:
                return

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for p in range(producers):
            tg.start_soon(producer, p)
    return {"jobs": float(done), "seconds": time.perf_counter() - start}


@contextlib.asynccontextmanager
async def open_queues(where: str, count: int) -> AsyncIterator[tuple[list[pq.Queue], float]]:
    """``count`` open queues of different names in one database, and the seconds it took."""
    async with contextlib.AsyncExitStack() as stack:
        start = time.perf_counter()
        qs = [await stack.enter_async_context(pq.Queue(where, name=f"q{i}")) for i in range(count)]
        yield qs, time.perf_counter() - start


class Place:
    """Where a point runs: a fresh SQLite file, or a fresh database on the server."""

    def __init__(self, backend: str, server: str | None, dbs: Databases | None) -> None:
        self.backend = backend
        self.server = server
        self.dbs = dbs

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[str]:
        """A URL or path nobody has used."""
        if self.backend == "sqlite":
            tmp = Path(tempfile.mkdtemp(prefix="pqscaling-"))
            try:
                yield str(tmp / "persistq.db")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        assert self.server is not None
        assert self.dbs is not None
        db = await self.dbs.create("scaling")
        try:
            yield database_url(self.server, db)
        finally:
            await self.dbs.drop(db)


#: A point's measurement: (where, sizes, x) -> {"jobs", "seconds", extras...}.
Measure = Callable[[str, Sizes, int], Awaitable[dict[str, float]]]


def _payload_jobs(sizes: Sizes, size: int) -> int:
    return max(16, min(sizes.jobs, sizes.payload_budget // size))


async def _concurrency(where: str, sizes: Sizes, x: int) -> dict[str, float]:
    return await pool_drain(where, sizes.jobs, x, 40, sizes.time_cap)


async def _payload_put(where: str, sizes: Sizes, x: int) -> dict[str, float]:
    async with open_queues(where, 1) as (qs, _):
        return await puts(qs, 16, _payload_jobs(sizes, x), x, sizes.time_cap)


async def _payload_cycle(where: str, sizes: Sizes, x: int) -> dict[str, float]:
    return await pool_drain(where, _payload_jobs(sizes, x), 16, x, sizes.time_cap)


async def _queues(where: str, sizes: Sizes, x: int) -> dict[str, float]:
    async with open_queues(where, x) as (qs, open_s):
        out = await puts(qs, sizes.producers, sizes.jobs, 40, sizes.time_cap)
        return {**out, "open_s": open_s}


async def _workers(where: str, sizes: Sizes, x: int) -> dict[str, float]:
    async with PERSISTQ.client(where) as client:

        async def prefill() -> None:
            for first in range(0, sizes.jobs, 1_000):
                await client.put_batch(range(first, min(first + 1_000, sizes.jobs)))

        sample = await run_workers(
            PERSISTQ.worker_cmd(where), x, client, None, sizes.jobs, sizes.time_cap * 2, prefill
        )
    return {"jobs": float(sample.ops), "seconds": sample.seconds, **sample.extra}


def plan(sizes: Sizes) -> list[tuple[str, str, tuple[int, ...], Measure, tuple[str, ...]]]:
    """(curve, series, points, measurement, backends) in the order they run."""
    return [
        ("concurrency", "pool cycle", sizes.concurrency, _concurrency, BACKENDS),
        ("payload", "put, 16 producers", sizes.payload_bytes, _payload_put, BACKENDS),
        ("payload", "pool cycle, 16 slots", sizes.payload_bytes, _payload_cycle, BACKENDS),
        ("queues", "put, 100 producers", sizes.queues, _queues, BACKENDS),
        ("workers", "cycle, 16 slots per process", sizes.workers, _workers, ("postgresql",)),
    ]


async def run_all(
    sizes: Sizes, curves: list[str], backends: list[str], server: str | None, repeats: int
) -> list[Point]:
    """Every point of the chosen curves, backends alternating at each point."""
    points: dict[tuple[str, str, int, str], Point] = {}
    began = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        dbs = None
        if server is not None:
            dbs = await stack.enter_async_context(Databases(server))
        for rep in range(repeats):
            for curve, series, xs, measure, allowed in plan(sizes):
                if curve not in curves:
                    continue
                for x in xs:
                    for backend in [b for b in backends if b in allowed]:
                        key = (curve, backend, x, series)
                        point = points.setdefault(key, Point(curve, backend, x, series))
                        if point.error is not None:
                            continue
                        place = Place(backend, server, dbs)
                        try:
                            async with place.fresh() as where:
                                out = await measure(where, sizes, x)
                        except Exception as exc:  # a point that fails is a finding
                            point.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                            print(f"  {curve} {backend} {x}: FAILED {point.error}", file=sys.stderr)
                            continue
                        rate = out["jobs"] / out["seconds"] if out["seconds"] > 0 else 0.0
                        point.rates.append(rate)
                        for k, v in out.items():
                            point.extra.setdefault(k, []).append(v)
                        print(
                            f"[{rep + 1}/{repeats} {time.perf_counter() - began:6.1f}s] "
                            f"{curve:11} {series:28} {backend:10} {x:>9,} {rate:>10,.0f} jobs/s "
                            f"({out['jobs']:.0f} jobs)",
                            file=sys.stderr,
                            flush=True,
                        )
    return list(points.values())


def main(argv: list[str] | None = None) -> int:
    """Run the curves; print, chart and write them."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default=None, help=f"a running server (default ${ENV_URL})")
    where.add_argument(
        "--private-server", action="store_true", help="start a throwaway PostgreSQL server"
    )
    parser.add_argument("--quick", action="store_true", help="small work at every point")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per point")
    parser.add_argument("--only", action="append", choices=CURVES, default=[], help="a curve")
    parser.add_argument("--backend", action="append", choices=BACKENDS, default=[])
    parser.add_argument("--charts", type=Path, default=RESULTS, help="directory for the PNGs")
    parser.add_argument("--json", type=Path, default=RESULTS / "scaling.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "scaling.md")
    parser.add_argument("--note", default="", help="a sentence for the report")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    sizes = Sizes.quick() if args.quick else Sizes()
    curves = args.only or list(CURVES)
    backends = args.backend or list(BACKENDS)
    url = None if args.private_server else (args.url or os.environ.get(ENV_URL))
    if "postgresql" in backends and not (url or args.private_server):
        print("no PostgreSQL (--private-server or --url): SQLite only", file=sys.stderr)
        backends = [b for b in backends if b != "postgresql"]

    with contextlib.ExitStack() as stack:
        facts: dict[str, Any] = {}
        if "postgresql" in backends:
            if args.private_server:
                url = stack.enter_context(private_server(durable=True))
            assert url is not None
            facts = anyio.run(server_facts, url)
        load_before = os.getloadavg()
        began = time.perf_counter()
        server = url if "postgresql" in backends else None
        points = anyio.run(run_all, sizes, curves, backends, server, args.repeats)
        elapsed = time.perf_counter() - began
        load_after = os.getloadavg()

    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": shown_argv(sys.argv[1:] if argv is None else argv),
        "sizes": {k: getattr(sizes, k) for k in sizes.__dataclass_fields__},
        "repeats": args.repeats,
        "elapsed_seconds": round(elapsed, 1),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before[0],
        "loadavg_after": load_after[0],
        "postgresql": facts,
        "private_server": args.private_server,
        "commit": git_commit(),
        "note": args.note,
    }
    charts = draw_charts(args.charts, points)
    write_json(args.json, points, meta)
    write_markdown(args.markdown, points, meta, charts)
    print(args.markdown.read_text())
    print(f"results: {args.json}; charts: {', '.join(str(c) for c in charts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
