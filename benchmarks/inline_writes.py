"""CPU per job, split by thread, with and without inline SQLite writes (durability "normal").

Usage::

    python benchmarks/inline_writes.py [--jobs N] [--repeats R] [--durability normal|full]
                                       [--base DIR] [--only lone,pool,producers,raw]

Three scenarios: a lone consumer looping ``job = await q.get_nowait(); await job.ack()``, a
Supervisor pool (64 slots, no-op handler) draining a pre-filled queue, and 100 producers each
awaiting ``put`` in turn; besides, raw ``sqlite3`` claim+done and single-row insert (the issue's
baselines, from ``baselines.py``). Each measurement runs in a child process, interleaved by
variant within a repeat, and reports jobs/s and, per thread (from ``/proc/self/task``), the CPU
per job split into user and system time:

- ``new``: this checkout (small batches run on the event loop's thread when the writer's thread
  is idle);
- ``thread``: this checkout with ``writer.INLINE_MAX_OPS = 0`` (every batch on the thread);
- ``maxN``: this checkout with ``INLINE_MAX_OPS = INLINE_MAX_ROWS = N`` (``--max N``);
- ``base``: ``--base DIR``, a directory holding another version's ``persistq_async`` package
  (``git archive <commit> persistq_async | tar -x -C DIR``), when given.

On a shared machine only the CPU per job and the ratios within one repeat mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _threads() -> dict[str, tuple[str, int, int]]:
    """CPU ticks (user, system) of every thread of this process, by thread id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                stat = fh.read()
        except FileNotFoundError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = (tid, int(fields[11]), int(fields[12]))
    return out


def _split(before: dict[str, Any], after: dict[str, Any], jobs: int) -> dict[str, list[float]]:
    """CPU per job (us) by thread role: the event loop, the writer, anything else."""
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    roles: dict[str, list[float]] = {}
    for tid, (_, user, system) in after.items():
        _, user0, system0 = before.get(tid, (tid, 0, 0))
        name = names.get(tid, "other")
        role = {"MainThread": "loop", "persistq-writer": "writer"}.get(name, "other")
        cell = roles.setdefault(role, [0.0, 0.0])
        cell[0] += (user - user0) * tick / jobs
        cell[1] += (system - system0) * tick / jobs
    return roles


async def _lone(q: Any, jobs: int) -> None:
    for _ in range(jobs):
        job = await q.get_nowait()
        await job.ack()


def child(scenario: str, jobs: int, durability: str) -> None:
    """Run one measurement in this process and print it as JSON."""
    if os.environ.get("INLINE_MAX"):  # --max N: the threshold under test
        from persistq_async.store import writer

        writer.INLINE_MAX_OPS = writer.INLINE_MAX_ROWS = int(os.environ["INLINE_MAX"])
    import anyio

    import persistq_async as pq

    tmp = Path(tempfile.mkdtemp(prefix="inline-bench-"))
    result: dict[str, Any] = {}

    async def noop(job: Any) -> None:
        return None

    async def main() -> None:
        async with pq.Queue(tmp / "q.db", name="bench", durability=durability) as q:
            if scenario in ("lone", "pool"):
                for first in range(0, jobs, 1000):
                    await q.put_many(
                        [{"i": i, "pad": "x" * 40} for i in range(first, first + 1000)]
                    )
            before = _threads()
            start = time.perf_counter()
            if scenario == "lone":
                await _lone(q, jobs)
            elif scenario == "pool":
                async with pq.Supervisor(grace=1.0) as sup:
                    await sup.add(q, noop, concurrency=64)
                    await q.join()
            else:
                per = jobs // 100

                async def producer(first: int) -> None:
                    for i in range(first, first + per):
                        await q.put({"i": i, "pad": "x" * 40})

                async with anyio.create_task_group() as tg:
                    for p in range(100):
                        tg.start_soon(producer, p * per)
            seconds = time.perf_counter() - start
            result["rate"] = jobs / seconds
            result["cpu"] = _split(before, _threads(), jobs)

    anyio.run(main)
    print(json.dumps(result))


def raw(jobs: int, durability: str) -> dict[str, float]:
    """The raw sqlite3 baselines: claim+done and single-row insert, jobs/s."""
    sys.path.insert(0, str(HERE))
    import baselines
    from common import Sizes

    sync = "FULL" if durability == "full" else "NORMAL"
    sizes = Sizes(
        seq_puts=jobs,
        producers=100,
        puts_per_producer=jobs // 100,
        put_many_rows=jobs,
        put_many_batch=1000,
        cycles=jobs,
        consumers=1,
        time_cap=30.0,
    )
    out = {}
    for key, make in (("cycle", baselines.sqlite3_cycle), ("insert", baselines.sqlite3_insert)):
        with tempfile.TemporaryDirectory() as tmp:
            sample = make(sync)(Path(tmp), sizes)
        out[key] = sample.ops / sample.seconds
    return out


def _run(variant: str, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if variant == "base":
        env["PYTHONPATH"] = str(args.base)
    else:
        env["PYTHONPATH"] = str(HERE.parent)
    if variant == "thread":
        env["INLINE_MAX"] = "0"
    elif variant.startswith("max"):
        env["INLINE_MAX"] = variant[3:]
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            *("--child", scenario, "--jobs", str(args.jobs)),
            *("--durability", args.durability),
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--durability", default="normal", choices=("normal", "full"))
    parser.add_argument("--base", type=Path, default=None)
    parser.add_argument("--only", default="lone,pool,producers,raw")
    parser.add_argument(
        "--max",
        type=int,
        action="append",
        default=[],
        help="also run with INLINE_MAX_OPS = INLINE_MAX_ROWS = N",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.jobs, args.durability)
        return
    variants = ["new", "thread"] + (["base"] if args.base else [])
    variants += [f"max{n}" for n in args.max]
    wanted = args.only.split(",")
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    raws: list[dict[str, float]] = []
    for _ in range(args.repeats):
        if "raw" in wanted:
            raws.append(raw(args.jobs, args.durability))
        for scenario in ("lone", "pool", "producers"):
            if scenario in wanted:
                for variant in variants:
                    rows.setdefault((scenario, variant), []).append(_run(variant, scenario, args))
    baseline = {}
    if raws:
        baseline = {k: statistics.median(r[k] for r in raws) for k in raws[0]}
        print(
            f"raw sqlite3 ({args.durability}): "
            + ", ".join(f"{k} {v:,.0f}/s" for k, v in baseline.items())
        )
    print(
        f"{'scenario':10} {'variant':7} {'jobs/s':>8} {'x raw':>6}  loop user/sys"
        f"   writer user/sys  other  (us/job, medians of {args.repeats})"
    )
    for (scenario, variant), runs in rows.items():
        rate = statistics.median(r["rate"] for r in runs)

        def med(role: str, i: int, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r["cpu"].get(role, [0.0, 0.0])[i] for r in runs)

        ref = baseline.get("insert" if scenario == "producers" else "cycle")
        ratio = f"{rate / ref:6.2f}" if ref else "     -"
        other = med("other", 0) + med("other", 1)
        print(
            f"{scenario:10} {variant:7} {rate:8,.0f} {ratio}  "
            f"{med('loop', 0):6.0f} {med('loop', 1):5.0f}    "
            f"{med('writer', 0):6.0f} {med('writer', 1):5.0f}   {other:5.0f}"
        )


if __name__ == "__main__":
    main()
