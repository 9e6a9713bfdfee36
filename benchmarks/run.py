"""Benchmark persistq_async against raw sqlite3, raw aiosqlite, persist-queue and huey.

Usage::

    python benchmarks/run.py [--quick] [--repeats N] [--backlog N] [--only SUBSTR]
                             [--json out.json] [--markdown out.md] [--chart out.png]

What issue #4 lists, in one run: puts (1 caller, 100 producers, put_many), get_nowait+ack
loops, the full cycle through a Supervisor pool (no-op handler, 64 slots), put-to-handler-start
latency on an idle queue (same process and from a child process), the pool cycle with 10,000
and with --backlog jobs waiting (1,000,000 by default, 100,000 with --quick) with the drain's
peak RSS, and the baselines (raw sqlite3, raw aiosqlite, persist-queue, huey); every persistq
figure at durability "full" and "normal".

Everything runs in one process and one run, so the ratios compare like with like on this
machine today. Each repeat goes through every scenario in turn (interleaved rather than one
scenario N times in a row, so a slow patch of the machine hits all systems alike); the table
shows medians over the repeats and, beside each figure, its ratio to the relevant baselines
with issue #4's targets. Results go to ``benchmarks/results/latest.json`` (gitignored) and, when
matplotlib is importable, a chart to ``benchmarks/results/throughput.png``; the table as markdown
(for the README) goes to ``benchmarks/results/latest.md``.

Not part of the tests: pytest only collects ``tests/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import sqlite3
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import baselines
import pool_scenarios
import scenarios
from common import Comparison, Limit, Scenario, Sizes, Skipped, workdir
from report import Result, draw_chart, format_table, write_json, write_markdown

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DURABILITIES = ("full", "normal")
#: persistq's durability name -> the ``PRAGMA synchronous`` it uses, for the raw baselines.
SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
PEER_NOTE = "library defaults: WAL, synchronous=FULL"


def build_scenarios(sizes: Sizes) -> list[Scenario]:
    """Baselines first (they are what the persistq rows are divided by), then persistq."""
    out: list[Scenario] = []
    for d in DURABILITIES:
        sync = SYNCHRONOUS[d]
        out += [
            Scenario(
                key=f"sqlite3.insert.{d}",
                system="sqlite3",
                label="single-row insert+commit",
                durability=d,
                run=baselines.sqlite3_insert(sync),
            ),
            Scenario(
                key=f"sqlite3.executemany.{d}",
                system="sqlite3",
                label="executemany, one transaction",
                durability=d,
                run=baselines.sqlite3_executemany(sync),
            ),
            Scenario(
                key=f"sqlite3.cycle.{d}",
                system="sqlite3",
                label="claim+done cycle, commit each",
                durability=d,
                run=baselines.sqlite3_cycle(sync),
            ),
            Scenario(
                key=f"aiosqlite.insert.{d}",
                system="aiosqlite",
                label="single-row insert+commit",
                durability=d,
                run=baselines.aiosqlite_insert(sync),
                compare=(Comparison(f"sqlite3.insert.{d}", "sqlite3 insert"),),
            ),
        ]
    full_insert = Comparison("sqlite3.insert.full", "sqlite3 insert")
    full_cycle = Comparison("sqlite3.cycle.full", "sqlite3 cycle")
    out += [
        Scenario(
            key="persist-queue.put",
            system="persist-queue",
            label="SQLiteQueue put",
            durability="full",
            run=baselines.persistqueue_put(),
            compare=(full_insert,),
            notes=PEER_NOTE,
        ),
        Scenario(
            key="persist-queue.get",
            system="persist-queue",
            label="SQLiteQueue get (delete)",
            durability="full",
            run=baselines.persistqueue_get(),
            compare=(full_cycle,),
            notes=PEER_NOTE,
        ),
        Scenario(
            key="persist-queue.ack_cycle",
            system="persist-queue",
            label="SQLiteAckQueue get+ack",
            durability="full",
            run=baselines.persistqueue_ack_cycle(),
            compare=(full_cycle,),
            notes=PEER_NOTE,
        ),
        Scenario(
            key="huey.enqueue",
            system="huey",
            label="SqliteStorage enqueue",
            durability="full",
            run=baselines.huey_enqueue(),
            compare=(full_insert,),
            notes=PEER_NOTE,
        ),
        Scenario(
            key="huey.dequeue",
            system="huey",
            label="SqliteStorage dequeue",
            durability="full",
            run=baselines.huey_dequeue(),
            compare=(full_cycle,),
            notes=PEER_NOTE + "; dequeue deletes the row (at-most-once), no ack",
        ),
    ]
    for d in DURABILITIES:
        # Peers run at synchronous=FULL, so they are compared with the durability="full" rows only.
        put_peers = (
            (
                Comparison("persist-queue.put", "persist-queue put"),
                Comparison("huey.enqueue", "huey enqueue"),
            )
            if d == "full"
            else ()
        )
        cycle_peers = (
            (
                Comparison("persist-queue.ack_cycle", "persist-queue ack", 10.0),
                Comparison("huey.dequeue", "huey dequeue", 1.5),
            )
            if d == "full"
            else ()
        )
        # Issue 11's targets: at "full" group commit must keep the queue ahead of raw
        # single-row SQL; at "normal", where the fsync is cheap, the per-job Python shows.
        full = d == "full"
        insert = Comparison(f"sqlite3.insert.{d}", "sqlite3 insert")
        cycle = Comparison(f"sqlite3.cycle.{d}", "sqlite3 cycle", 1.5 if full else 0.6)
        out += [
            Scenario(
                key=f"persistq.put.sequential.{d}",
                system="persistq",
                label="put, 1 caller",
                durability=d,
                run=scenarios.put_sequential(d),
                compare=(
                    Comparison(f"aiosqlite.insert.{d}", "aiosqlite insert", 0.5),
                    insert,
                    *put_peers,
                ),
            ),
            Scenario(
                key=f"persistq.put.concurrent.{d}",
                system="persistq",
                label="put, 100 producers",
                durability=d,
                run=scenarios.put_concurrent(d),
                compare=(
                    Comparison(insert.baseline, insert.label, 2.0 if full else 1.0),
                    *put_peers,
                ),
            ),
            Scenario(
                key=f"persistq.put_many.{d}",
                system="persistq",
                label="put_many, batches of 1000",
                durability=d,
                run=scenarios.put_many(d),
                compare=(Comparison(f"sqlite3.executemany.{d}", "sqlite3 executemany", 0.3),),
            ),
            Scenario(
                key=f"persistq.cycle.sequential.{d}",
                system="persistq",
                label="get_nowait+ack, 1 consumer",
                durability=d,
                run=scenarios.cycle_sequential(d),
                compare=(
                    untargeted(cycle) if full else Comparison(cycle.baseline, cycle.label, 0.25),
                    *map(untargeted, cycle_peers),
                ),
            ),
            Scenario(
                key=f"persistq.cycle.concurrent.{d}",
                system="persistq",
                label="get_nowait+ack, 64 consumers",
                durability=d,
                run=scenarios.cycle_concurrent(d),
                compare=(untargeted(cycle), *map(untargeted, cycle_peers)),
            ),
            Scenario(
                key=f"persistq.pool.cycle.{d}",
                system="persistq",
                label=f"Supervisor pool cycle, {sizes.pool_concurrency} slots, no-op handler",
                durability=d,
                run=pool_scenarios.pool_cycle(d),
                compare=(cycle, *cycle_peers),
                notes="pre-filled with put_many; timed from Supervisor.add to q.join() returning",
            ),
            Scenario(
                key=f"persistq.latency.local.{d}",
                system="persistq",
                label="put -> handler start, idle queue, same process",
                durability=d,
                run=pool_scenarios.latency_local(d),
                metric="latency",
                limits=(Limit("p50_ms", 1.0, "p50 ms"), Limit("p99_ms", 20.0, "p99 ms")),
                show=(("max_ms", "max {:.1f} ms"),),
            ),
            Scenario(
                key=f"persistq.latency.remote.{d}",
                system="persistq",
                label="put -> handler start, idle queue, other process",
                durability=d,
                run=pool_scenarios.latency_remote(d),
                metric="latency",
                limits=(Limit("p50_ms", 50.0, "p50 ms"),),
                show=(("max_ms", "max {:.1f} ms"),),
                notes="time.time() in the payload, taken in the child before put",
            ),
            Scenario(
                key=f"persistq.backlog.small.{d}",
                system="persistq",
                label=(
                    f"pool cycle, {sizes.backlog_small:,} waiting, "
                    f"first {min(sizes.backlog_small, sizes.backlog_drain):,}"
                ),
                durability=d,
                run=pool_scenarios.backlog_cycle(d, "small"),
                compare=(untargeted(cycle),),
                limits=(Limit("peak_rss_mb", 200.0, "peak RSS MB"),),
                notes="drained in a child process; peak RSS is the child's while draining",
            ),
            Scenario(
                key=f"persistq.backlog.large.{d}",
                system="persistq",
                label=(
                    f"pool cycle, {sizes.backlog_large:,} waiting, "
                    f"first {min(sizes.backlog_large, sizes.backlog_drain):,}"
                ),
                durability=d,
                run=pool_scenarios.backlog_cycle(d, "large"),
                compare=(
                    Comparison(
                        f"persistq.backlog.small.{d}", f"{sizes.backlog_small:,} waiting", 0.8
                    ),
                    untargeted(cycle),
                ),
                limits=(Limit("peak_rss_mb", 200.0, "peak RSS MB"),),
                show=(
                    ("rss_before_mb", "RSS before drain {:.0f} MB"),
                    ("prefill_s", "pre-fill by put_many {:.1f} s ({prefill_rate:,.0f} jobs/s)"),
                ),
                notes="drained in a child process, up to the time cap; pre-filled once per run",
            ),
        ]
    return out


def untargeted(comp: Comparison) -> Comparison:
    """The same ratio, printed without a target (issue #4 sets it on another scenario)."""
    return dataclasses.replace(comp, target=None)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _meta(args: argparse.Namespace, sizes: Sizes, elapsed: float) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "quick": args.quick,
        "repeats": args.repeats,
        "sizes": {k: getattr(sizes, k) for k in sizes.__dataclass_fields__},
        "elapsed_seconds": round(elapsed, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "versions": {
            d: _version(d)
            for d in ("persistq_async", "sqlalchemy", "aiosqlite", "anyio", "persist-queue", "huey")
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Run every scenario ``--repeats`` times, print the table, write JSON and the chart."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (< 60 s)")
    parser.add_argument(
        "--backlog",
        type=int,
        default=None,
        help="jobs waiting in the large-backlog scenario (default 1,000,000; --quick 100,000)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 3; --quick 1)")
    parser.add_argument(
        "--json", type=Path, default=RESULTS / "latest.json", help="where to write the results"
    )
    parser.add_argument(
        "--chart", type=Path, default=RESULTS / "throughput.png", help="where to draw the chart"
    )
    parser.add_argument(
        "--markdown", type=Path, default=RESULTS / "latest.md", help="the table as markdown"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="run scenarios whose key contains this"
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.backlog is not None:
        if args.backlog < 1:
            parser.error("--backlog must be at least 1")
        sizes = dataclasses.replace(sizes, backlog_large=args.backlog)

    chosen = [
        s for s in build_scenarios(sizes) if not args.only or any(o in s.key for o in args.only)
    ]
    results = [Result(s) for s in chosen]
    began = time.perf_counter()
    for rep in range(1, args.repeats + 1):
        for result in results:
            if result.skipped is not None:
                continue
            gc.collect()  # start each measurement with no garbage left by the previous one
            with workdir(result.scenario.key) as tmp:
                try:
                    sample = result.scenario.run(tmp, sizes)
                except Skipped as exc:
                    result.skipped = str(exc)
                    print(f"note: skipping {result.scenario.key}: {exc}", file=sys.stderr)
                    continue
            result.samples.append(sample)
            if result.scenario.metric == "latency":
                figure = (
                    f"p50 {sample.extra['p50_ms']:7.2f} ms  p99 {sample.extra['p99_ms']:7.2f} ms"
                )
            else:
                figure = f"{sample.rate:>12,.0f} jobs/s"
            print(
                f"[{rep}/{args.repeats} {time.perf_counter() - began:6.1f}s] "
                f"{result.scenario.key:34} {figure}  ({sample.ops} jobs)",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - began

    print()
    print(format_table(results))
    print()
    print(
        f"medians over {args.repeats} repeat(s); each timed loop stops after its N jobs or "
        f"{sizes.time_cap:g} s; peers use {PEER_NOTE}; {elapsed:.0f} s in all"
    )
    meta = _meta(args, sizes, elapsed)
    write_json(args.json, results, meta)
    print(f"results: {args.json}")
    write_markdown(args.markdown, results, meta)
    print(f"markdown: {args.markdown}")
    why_not = draw_chart(args.chart, results)
    print(f"chart: {args.chart}" if why_not is None else f"note: {why_not}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
