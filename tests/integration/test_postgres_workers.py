"""PostgreSQL: four real ``python -m persistq_async worker`` processes drain 10,000 jobs, kill -9.

The scale-out version of ``test_worker_chaos.py`` (same handler logs, same checks, imported from
``_support.py``): 10,000 jobs are put with ``put_many`` on a queue of its own, then four supervised
worker processes (concurrency 8, 1.5 s leases) drain them while the test SIGKILLs a random running
one every 0.5-1.0 s (while at least three are up) and restarts it. Afterwards: every job done, none
lost, each acked exactly once (its audit trail: ``expired`` deliveries, then one ``acked``), no job
ran in two places while its lease was valid, attempts within ``max_attempts``, and no live worker
lost a lease.

The database is this run's own (``session_pg_url``): the workers' rescuers act on every
queue of the database they use.
"""

from __future__ import annotations

import os
import random
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import persistq_async as pq
from tests.integration._support import (
    EVENT_LOG_MODULE,
    AttemptRow,
    WorkerProcess,
    all_jobs,
    all_output,
    check_deliveries,
    read_logs,
    wait_for_output,
)

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

LEASE_SECONDS = 1.5
JOBS = 10_000
WORKERS = 4
CONCURRENCY = 8
#: A worker is killed every KILL_EVERY seconds (uniform), at least MIN_KILLS times with a backlog.
KILL_EVERY = (0.5, 1.0)
MIN_KILLS = 8
#: After this many kills the survivors drain the rest undisturbed (bounds a slow machine's run).
MAX_KILLS = 100
#: The chaos phase (kills and drain) must be over within this many seconds.
CHAOS_BUDGET = 150.0

HANDLER_MODULE = EVENT_LOG_MODULE + textwrap.dedent(
    """

    async def work(job):
        event("start", job)
        how = "cancelled"
        try:
            # Long enough that the drain outlasts MIN_KILLS kill periods however fast the
            # queue itself is (32 slots: at most about 800 jobs/s).
            await anyio.sleep(random.uniform(0.02, 0.06))
            how = "returned"
        finally:
            event("stop", job, how)
        return {"pid": os.getpid()}
    """
)

Launch = Callable[[], WorkerProcess]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "pg_jobs.py").write_text(HANDLER_MODULE)
    (tmp_path / "logs").mkdir()
    return tmp_path


@pytest.fixture
def launch(workdir: Path, session_pg_url: str, queue_name: str) -> Iterator[Launch]:
    """Start worker processes; every one is killed (if still running) and reaped at teardown."""
    started: list[WorkerProcess] = []
    env = {
        **os.environ,
        "PERSISTQ_LEASE_SECONDS": str(LEASE_SECONDS),
        "CHAOS_LOG_DIR": str(workdir / "logs"),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "persistq_async",
        "worker",
        "pg_jobs:work",
        "--queue",
        queue_name,
        "--url",
        session_pg_url,
        "--concurrency",
        str(CONCURRENCY),
        "--grace",
        "5",
    ]

    def start() -> WorkerProcess:
        worker = WorkerProcess(cmd, workdir, env, workdir / f"worker-{len(started)}.out")
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.close()


async def attempt_rows(url: str, queue: str) -> dict[int, list[AttemptRow]]:
    """The audit trail of the queue's jobs, straight from the database."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT a.job_id, a.attempt, a.lease_token, a.outcome, a.started_at, "
                    "a.finished_at FROM persistq_attempts a "
                    "JOIN persistq_jobs j ON j.id = a.job_id "
                    "WHERE j.queue = :queue ORDER BY a.id"
                ),
                {"queue": queue},
            )
            rows = result.all()
    finally:
        await engine.dispose()
    found: dict[int, list[AttemptRow]] = {}
    for job_id, *rest in rows:
        found.setdefault(job_id, []).append(AttemptRow(*rest))
    return found


async def test_kill_9_chaos_four_worker_processes_on_postgres_10000_jobs_each_done_once(
    workdir: Path, launch: Launch, session_pg_url: str, queue_name: str
) -> None:
    url = session_pg_url
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    began_all = time.monotonic()
    async with pq.Queue(url, name=queue_name) as q:
        ids = await q.put_many([{"n": n} for n in range(JOBS)])
        put_seconds = time.monotonic() - began_all
        assert len(ids) == len(set(ids)) == JOBS
        assert q.options.max_attempts == 5

        slots = [launch() for _ in range(WORKERS)]
        killed: dict[int, float] = {}  # pid -> time.time() once it was certainly dead
        kills_with_backlog = 0
        began = time.monotonic()
        while (stats := await q.stats()).done < JOBS:
            elapsed = time.monotonic() - began
            assert elapsed < CHAOS_BUDGET, (
                f"chaos not over after {elapsed:.1f}s (seed {seed}): {stats}, {len(killed)} kills"
            )
            assert stats.dead == stats.cancelled == 0, stats
            for worker in slots:
                assert worker.proc.poll() is None, (
                    f"worker {worker.pid} exited by itself ({worker.proc.returncode}):\n"
                    + worker.output()
                )
            await anyio.sleep(rng.uniform(*KILL_EVERY))
            if len(killed) >= MAX_KILLS:
                continue  # enough: let the survivors drain what is left
            # Kill a worker that is up (a booting one holds no job), and only while at most one
            # other is booting: on a slow machine restarts take longer than the kill period, and
            # the freshly started worker, which picks up the jobs just rescued, would be killed
            # again and again until those jobs ran out of attempts.
            up = [i for i, worker in enumerate(slots) if "worker started" in worker.output()]
            if len(up) < WORKERS - 1:
                continue
            slot = rng.choice(up)
            backlog = (await q.stats()).done < JOBS
            killed[slots[slot].pid] = slots[slot].kill()
            kills_with_backlog += backlog
            slots[slot] = launch()
        chaos_seconds = time.monotonic() - began

        # Every survivor stops cleanly on SIGTERM (nothing is running any more), once it is up:
        # before its signal handler is installed, SIGTERM kills a Python process outright.
        for worker in slots:
            wait_for_output(worker, "worker started", within=20)
            assert worker.terminate() == 0, worker.output()

        stats = await q.stats()
        assert (stats.done, stats.queued, stats.running, stats.dead, stats.cancelled) == (
            JOBS,
            0,
            0,
            0,
            0,
        ), stats
        infos = {i.id: i for i in await all_jobs(q)}
    rows = await attempt_rows(url, queue_name)
    logs = read_logs(workdir / "logs")

    # None lost, each acked exactly once after only expired deliveries, attempts within bounds,
    # never in two places while a lease was valid, every interrupted run shown as expired.
    redelivered, interrupted = check_deliveries(ids, infos, rows, logs, killed, f"seed {seed}")
    assert sum(len(h) for h in rows.values()) == JOBS + redelivered
    assert sum(o.outcome == "acked" for h in rows.values() for o in h) == JOBS

    # Every worker's output, the killed ones' included.
    outputs = all_output(workdir)
    assert "Traceback" not in outputs
    assert "outcome not applied" not in outputs  # no live worker lost a lease
    # The chaos had teeth: kills while jobs were waiting, some of them mid-handler.
    assert kills_with_backlog >= MIN_KILLS, (kills_with_backlog, len(killed), seed)
    assert interrupted >= 1
    assert redelivered >= 1
    print(
        f"postgres chaos (seed {seed}): {JOBS} jobs put in {put_seconds:.1f}s, {WORKERS} workers "
        f"x {CONCURRENCY}, {len(killed)} kills ({kills_with_backlog} with a backlog), "
        f"{interrupted} handlers interrupted, {redelivered} redeliveries, "
        f"{len(logs.runs)} handler runs, lost 0, double-acked 0, drained in {chaos_seconds:.1f}s "
        f"({JOBS / chaos_seconds:.0f} jobs/s), whole test {time.monotonic() - began_all:.1f}s"
    )
