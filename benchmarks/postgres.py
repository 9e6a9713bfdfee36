"""persistq_async against PgQueuer, procrastinate and raw asyncpg on one PostgreSQL server
(issue #11).

Usage::

    python benchmarks/postgres.py --private-server [--quick] [--repeats N] [--time-cap S]
                                  [--cycle-cap S] [--note TEXT] [--json PATH] [--markdown PATH]
    python benchmarks/postgres.py --url postgresql+asyncpg://USER@HOST:PORT/DB [...]

``--private-server`` starts a throwaway server the way CI does (``.ci/start-postgres.sh``, with
its own state file and port, so a developer's test server is left alone), turns ``fsync``,
``synchronous_commit`` and ``full_page_writes`` back on (``--no-fsync`` keeps CI's settings),
and stops it at the end. ``--url`` (default ``$PERSISTQ_TEST_PG_URL``) uses a running server as
it is configured; the run creates its databases there (``bench_*``) and drops them.

The systems (``pg_systems.py``): persistq_async, PgQueuer with its defaults and with a batch
sized to the pool, procrastinate, and raw asyncpg with one row per transaction. The scenarios,
with a small JSON job and a no-op handler:

- put, 1 caller awaiting each put (``--jobs``, 5,000);
- put, 100 concurrent producers (5,000 jobs in all);
- batch put: 50,000 jobs through each system's batch API, 1,000 per call;
- cycle, 1 and 4 worker processes of 16 slots each draining 5,000 pre-filled jobs, timed from
  telling the started workers to go until the parent sees every job finished (committed);
  the start-up of the processes, overlapping the pre-fill, is not timed (``spawn_s`` in the
  JSON).

Every measurement gets a fresh database of its own (created, schema installed, dropped after).
Each repeat goes through the scenarios in turn and, within one, through every system
(interleaved, the systems' order rotating between repeats), so a slow patch of a shared machine
hits all of them alike. The table shows medians (3 repeats; ``--quick``: 1) and, beside each
peer's figure, the ratio persistq_async / that peer. A timed loop stops after its jobs or
``--time-cap`` seconds and reports the rate over what it did.

CPU per put (the 1-caller scenario): this process's CPU time (``time.process_time``, every
thread of the client) plus the CPU time of the server's backend processes serving that
measurement's database (``/proc/PID/schedstat``, so only for a server on this machine), divided
by the puts. The cycles report the worker processes' CPU and the backends' the same way.

Results: ``benchmarks/results/postgres.json`` and the report as markdown in
``benchmarks/results/postgres.md``. Not part of the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
from common import Deadline, Sample, Scenario
from pg_report import format_report, write_markdown
from pg_run import run_workers
from pg_systems import CLIENT_POOL, SYSTEMS, Client, System, database_url
from pgserver import BackendCpu, Databases, git_commit, private_server, server_facts, shown_argv
from report import Result, write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ENV_URL = "PERSISTQ_TEST_PG_URL"
START_HINT = (
    "no PostgreSQL: pass --private-server (starts a throwaway server with .ci/start-postgres.sh)"
    f" or --url postgresql+asyncpg://USER@HOST:PORT/DB (default ${ENV_URL})"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """How much work each measurement does."""

    jobs: int
    producers: int
    batch_rows: int
    batch: int
    time_cap: float
    cycle_cap: float

    @classmethod
    def full(cls) -> Sizes:
        """The issue's sizes."""
        return cls(
            jobs=5_000, producers=100, batch_rows=50_000, batch=1_000, time_cap=10.0, cycle_cap=30.0
        )

    @classmethod
    def quick(cls) -> Sizes:
        """A smoke run."""
        return cls(
            jobs=400, producers=100, batch_rows=4_000, batch=1_000, time_cap=2.0, cycle_cap=10.0
        )


#: One measurement: (system, client, database URL, backend CPU, sizes) -> sample.
Measure = Callable[[System, Client, str, BackendCpu, Sizes], Awaitable[Sample]]


async def _timed_puts(
    client: Client,
    cpu: BackendCpu,
    work: Callable[[Deadline], Awaitable[int]],
    sizes: Sizes,
    warm: int = 1,
) -> Sample:
    """Run ``work`` (which returns the jobs it put) and add the CPU figures per put.

    First ``warm`` concurrent puts, untimed: they open the connections the timed loop will
    use (one for one caller, up to the pool's size for many), which no system should pay
    for inside the timing.
    """
    async with anyio.create_task_group() as tg:
        for i in range(warm):
            tg.start_soon(client.put, -1 - i)
    await cpu.start()
    client_cpu = time.process_time()
    start = time.perf_counter()
    done = await work(Deadline(sizes.time_cap))
    seconds = time.perf_counter() - start
    client_cpu = time.process_time() - client_cpu
    server_cpu = await cpu.seconds()
    extra = {"client_cpu_ms_per_job": client_cpu * 1e3 / max(1, done)}
    if server_cpu is not None:
        extra["server_cpu_ms_per_job"] = server_cpu * 1e3 / max(1, done)
        extra["cpu_ms_per_job"] = (client_cpu + server_cpu) * 1e3 / max(1, done)
    return Sample(done, seconds, extra)


async def put_sequential(
    system: System, client: Client, url: str, cpu: BackendCpu, sizes: Sizes
) -> Sample:
    """One caller awaiting each put in turn."""

    async def work(deadline: Deadline) -> int:
        for i in range(sizes.jobs):
            await client.put(i)
            if deadline.passed():
                return i + 1
        return sizes.jobs

    return await _timed_puts(client, cpu, work, sizes)


async def put_concurrent(
    system: System, client: Client, url: str, cpu: BackendCpu, sizes: Sizes
) -> Sample:
    """``sizes.producers`` tasks putting ``sizes.jobs`` jobs between them."""
    each = sizes.jobs // sizes.producers

    async def work(deadline: Deadline) -> int:
        done = 0

        async def producer(first: int) -> None:
            nonlocal done
            for i in range(first, first + each):
                await client.put(i)
                done += 1
                if deadline.passed():
                    return

        async with anyio.create_task_group() as tg:
            for p in range(sizes.producers):
                tg.start_soon(producer, p * each)
        return done

    return await _timed_puts(client, cpu, work, sizes, warm=CLIENT_POOL)


async def put_batch(
    system: System, client: Client, url: str, cpu: BackendCpu, sizes: Sizes
) -> Sample:
    """``sizes.batch_rows`` jobs through the batch API, ``sizes.batch`` per call."""

    async def work(deadline: Deadline) -> int:
        done = 0
        for first in range(0, sizes.batch_rows, sizes.batch):
            ids = range(first, min(first + sizes.batch, sizes.batch_rows))
            await client.put_batch(ids)
            done += len(ids)
            if deadline.passed():
                break
        return done

    return await _timed_puts(client, cpu, work, sizes)


def cycle(workers: int) -> Measure:
    """Pre-fill ``sizes.jobs`` jobs, then time ``workers`` processes draining them."""

    async def run(
        system: System, client: Client, url: str, cpu: BackendCpu, sizes: Sizes
    ) -> Sample:
        async def prefill() -> None:
            for first in range(0, sizes.jobs, sizes.batch):
                await client.put_batch(range(first, min(first + sizes.batch, sizes.jobs)))

        return await run_workers(
            system.worker_cmd(url), workers, client, cpu, sizes.jobs, sizes.cycle_cap, prefill
        )

    return run


#: (key, column label, measurement, whether systems without puts take part).
SCENARIOS: list[tuple[str, str, Measure, bool]] = [
    ("put.sequential", "put, 1 caller", put_sequential, False),
    ("put.concurrent", "put, 100 producers", put_concurrent, False),
    ("put.batch", "batch put", put_batch, False),
    ("cycle.workers1", "cycle, 1 worker", cycle(1), True),
    ("cycle.workers4", "cycle, 4 workers", cycle(4), True),
]


async def measure_one(
    server_url: str, dbs: Databases, system: System, measure: Measure, sizes: Sizes
) -> Sample:
    """One measurement on a fresh database of its own, dropped afterwards."""
    db = await dbs.create(system.key)
    try:
        url = database_url(server_url, db)
        await system.install(url)
        async with system.client(url) as client:
            return await measure(system, client, url, BackendCpu(dbs.admin, db), sizes)
    finally:
        await dbs.drop(db)


def _scenario(system: System, key: str, label: str) -> Scenario:
    def cannot_run(tmp: Path, sizes: Any) -> Sample:
        raise NotImplementedError("measured through measure_one")

    return Scenario(
        key=f"{system.key}.{key}",
        system=system.key,
        label=label,
        durability=None,
        run=cannot_run,
        notes=system.notes,
    )


async def run_all(
    server_url: str, sizes: Sizes, repeats: int, only: list[str], systems: list[str]
) -> list[Result]:
    """Every (scenario, system) ``repeats`` times, interleaved; returns the results.

    ``only``: the scenarios whose key contains one of these (all when empty); ``systems``:
    these systems (all when empty).
    """
    results: dict[str, Result] = {}
    plan: list[tuple[str, Measure, list[System]]] = []
    for key, label, measure, all_systems in SCENARIOS:
        if only and not any(o in key for o in only):
            continue
        chosen = [
            s for s in SYSTEMS if (s.puts or all_systems) and (not systems or s.key in systems)
        ]
        if not chosen:
            continue
        for s in chosen:
            results[f"{s.key}.{key}"] = Result(_scenario(s, key, label))
        plan.append((key, measure, chosen))
    began = time.perf_counter()
    async with Databases(server_url) as dbs:
        for rep in range(repeats):
            for key, measure, chosen in plan:
                order = chosen[rep % len(chosen) :] + chosen[: rep % len(chosen)]
                for system in order:
                    gc.collect()
                    sample = await measure_one(server_url, dbs, system, measure, sizes)
                    results[f"{system.key}.{key}"].samples.append(sample)
                    cpu = sample.extra.get("cpu_ms_per_job")
                    print(
                        f"[{rep + 1}/{repeats} {time.perf_counter() - began:6.1f}s] "
                        f"{system.key + '.' + key:34} {sample.rate:>10,.0f} jobs/s "
                        f"({sample.ops} jobs"
                        + (f", {cpu:.2f} ms CPU/job" if cpu is not None else "")
                        + ")",
                        file=sys.stderr,
                        flush=True,
                    )
    return list(results.values())


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print the report and write the JSON and markdown."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default=None, help=f"a running server (default ${ENV_URL})")
    where.add_argument(
        "--private-server",
        action="store_true",
        help="start a throwaway server with .ci/start-postgres.sh, stop it at the end",
    )
    parser.add_argument(
        "--no-fsync", action="store_true", help="private server: keep CI's fsync=off settings"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 3; --quick 1)")
    parser.add_argument("--time-cap", type=float, default=None, help="seconds per timed put loop")
    parser.add_argument("--cycle-cap", type=float, default=None, help="seconds per cycle")
    parser.add_argument(
        "--only", action="append", default=[], help="scenarios whose key contains this"
    )
    parser.add_argument(
        "--system", action="append", default=[], choices=[s.key for s in SYSTEMS], help="a system"
    )
    parser.add_argument("--note", default="", help="a sentence for the report (the machine...)")
    parser.add_argument(
        "--json", type=Path, default=RESULTS / "postgres.json", help="where to write the results"
    )
    parser.add_argument(
        "--markdown", type=Path, default=RESULTS / "postgres.md", help="the report as markdown"
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.time_cap is not None:
        if args.time_cap <= 0:
            parser.error("--time-cap must be positive")
        sizes = dataclasses.replace(sizes, time_cap=args.time_cap)
    if args.cycle_cap is not None:
        if args.cycle_cap <= 0:
            parser.error("--cycle-cap must be positive")
        sizes = dataclasses.replace(sizes, cycle_cap=args.cycle_cap)
    url = None if args.private_server else (args.url or os.environ.get(ENV_URL))
    if not args.private_server and not url:
        print(START_HINT, file=sys.stderr)
        return 2

    with contextlib.ExitStack() as stack:
        if args.private_server:
            url = stack.enter_context(private_server(durable=not args.no_fsync))
        assert url is not None
        try:
            facts = anyio.run(server_facts, url)
        except (OSError, Exception) as exc:  # asyncpg's errors share no base class
            print(f"error: cannot reach PostgreSQL at {url}: {exc}\n{START_HINT}", file=sys.stderr)
            return 2
        load_before = os.getloadavg()
        began = time.perf_counter()
        results = anyio.run(run_all, url, sizes, args.repeats, args.only, args.system)
        elapsed = time.perf_counter() - began
        load_after = os.getloadavg()

    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": shown_argv(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "repeats": args.repeats,
        "sizes": dataclasses.asdict(sizes),
        "elapsed_seconds": round(elapsed, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before[0],
        "loadavg_after": load_after[0],
        "postgresql": facts,
        "private_server": args.private_server,
        "commit": git_commit(),
        "note": args.note,
        "systems": {s.key: s.notes for s in SYSTEMS},
        "versions": {
            d: _version(d)
            for d in ("persistq_async", "sqlalchemy", "asyncpg", "pgqueuer", "procrastinate")
        },
    }
    print()
    print(format_report(results, meta))
    write_json(args.json, results, meta)
    print(f"results: {args.json}")
    write_markdown(args.markdown, results, meta)
    print(f"markdown: {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
