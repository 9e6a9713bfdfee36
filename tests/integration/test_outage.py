"""Database outages shorter than a lease: every job done, no finished handler run again.

PostgreSQL: a private server (never the shared one) is stopped (``pg_ctl stop -m fast``: every
connection closed, open transactions rolled back) and started again while two ``persistq
worker`` processes drain a queue. SQLite: another process holds the write lock (``BEGIN
IMMEDIATE``) for longer than ``busy_timeout`` while a pool drains a queue.

Each handler appends one line to a log when it finishes (``O_APPEND``, one ``write``: lines of
several processes never mix), so a job whose handler finished twice shows twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import persistq_async as pq
from tests.conftest import pool_counted

from ._private_pg import PrivatePostgres, find_bindir

QUEUE = "outage"

HANDLER_MODULE = textwrap.dedent(
    """
    import os

    import anyio


    async def handler(job):
        await anyio.sleep(job.payload["sleep"])
        line = f"{job.id} {os.getpid()} {job.attempts}\\n".encode()
        fd = os.open(os.environ["OUTAGE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    """
)


def finished(log: Path) -> Counter[int]:
    """How many times each job's handler finished, from the handlers' log."""
    if not log.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in log.read_text().splitlines() if line)


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``predicate`` (a file another process writes) until it holds, for ``within`` s."""
    try:
        with anyio.fail_after(within):
            while not predicate():  # noqa: ASYNC110 - another process writes what it reads
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {within}s: {what}") from None


@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_postgres_stopped_and_started_under_two_workers_reruns_nothing(
    tmp_path: Path,
) -> None:
    bindir = find_bindir()
    assert bindir is not None, "no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
    jobs, lease = 800, 12.0  # heartbeats every 4 s: an outage under 8 s loses no lease
    (tmp_path / "outage_jobs.py").write_text(HANDLER_MODULE)
    log = tmp_path / "finished.log"
    server = PrivatePostgres(bindir)
    workers: list[subprocess.Popen[bytes]] = []
    outputs = [tmp_path / f"worker{i}.out" for i in range(2)]
    try:
        server.start()
        async with pq.Queue(server.url, name=QUEUE) as q:
            # One job runs longer than its lease, across the outage: only heartbeats that go on
            # extending its lease once the server is back keep it from being delivered again.
            long_id = await q.put({"sleep": lease + 4.0}, priority=1)
            await q.put_many([{"sleep": 0.02 + (n % 7) * 0.01} for n in range(jobs - 1)])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
            "OUTAGE_LOG": str(log),
            "PERSISTQ_LEASE_SECONDS": str(lease),
        }
        for out in outputs:
            with out.open("wb") as sink:
                command = [sys.executable, "-m", "persistq_async", "worker", "outage_jobs:handler"]
                command += ["--queue", QUEUE, "--url", server.url, "--concurrency", "16"]
                workers.append(
                    subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; waits are bounded
                        [*command, "--grace", "5"],
                        env=env,
                        cwd=tmp_path,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                )
        put_ids: list[int] = []
        async with pq.Queue(server.url, name=QUEUE, lease_seconds=lease) as producer:
            await producer.put({"sleep": 0.01})  # its pool holds a connection to lose

            async def put_during_outage(dedupe_key: str | None) -> None:
                put_ids.append(await producer.put({"sleep": 0.01}, dedupe_key=dedupe_key))

            await wait_until(lambda: sum(finished(log).values()) >= jobs // 4, 60, "1/4 done")
            began = time.monotonic()
            await anyio.to_thread.run_sync(server.stop, "fast")
            during = sum(finished(log).values())
            # Puts that meet the outage: one that cannot have committed (connection refused)
            # and one under a dedupe key; both are tried again until the server is back.
            async with anyio.create_task_group() as tg:
                tg.start_soon(put_during_outage, None)
                tg.start_soon(put_during_outage, "put-in-the-outage")
                await anyio.sleep(2.0)
                await anyio.to_thread.run_sync(server.start)
            outage = time.monotonic() - began
        jobs += 3
        assert len(set(put_ids)) == 2
        assert outage < lease * 2 / 3, f"the outage took {outage:.1f}s, too long for the test"
        assert during < jobs, "every job finished before the server stopped: nothing was tested"
        await wait_until(lambda: len(finished(log)) >= jobs, 120, "every job finished")
        async with pq.Queue(server.url, name=QUEUE) as q:
            await q.join(timeout=60)
            stats = await q.stats()
            long_job = await q.job(long_id)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            assert worker.wait(timeout=60) == 0
        text = "\n".join(out.read_text(errors="replace") for out in outputs)
        counts = finished(log)
        again = {job_id: n for job_id, n in counts.items() if n > 1}
        print(f"outage {outage:.1f}s; {during} of {jobs} finished before it; re-runs {again}")
        assert (stats.done, stats.queued, stats.running, stats.dead) == (jobs, 0, 0, 0)
        assert len(counts) == jobs
        assert long_job is not None
        assert [(a.attempt, a.outcome) for a in long_job.history] == [(1, "acked")]
        notable = "\n".join(line for line in text.splitlines() if " done in " not in line)
        assert again == {}, f"handlers finished again after the restart: {again}\n{notable}"
        # The outage met writes in flight, and they were tried again rather than given up.
        assert "trying again" in text, text[-3000:]
        assert "gave up" not in text, notable
        assert "recording the outcome failed" not in text, notable
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)
        server.destroy()


async def test_sqlite_writer_locked_out_past_busy_timeout_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "jobs.db"
    jobs, lease, busy, held = 200, 20.0, 0.2, 12.0
    runs: Counter[int] = Counter()
    async with pq.Queue(
        db, name=QUEUE, lease_seconds=lease, busy_timeout=busy, poll_interval=0.05
    ) as q:
        await q.put_many([{"n": n} for n in range(jobs)])
        lock_out = anyio.Event()

        async def handler(job: pq.Job) -> None:
            await anyio.sleep(0.02)
            runs[job.id] += 1
            if sum(runs.values()) == jobs // 4:
                lock_out.set()

        holder = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
            [sys.executable, "-c", _HOLD_LOCK, str(db), str(held)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            async with pq.Supervisor(grace=5, rescue_interval=0.5) as sup:
                pool = await sup.add(q, handler, concurrency=8)
                with anyio.fail_after(30):
                    await lock_out.wait()
                assert holder.stdin is not None
                assert holder.stdout is not None
                holder.stdin.write("go\n")  # take the lock now
                holder.stdin.flush()
                began = time.monotonic()
                line = await anyio.to_thread.run_sync(holder.stdout.readline)
                assert line.strip() == "locked"
                locked_runs = sum(runs.values())
                await q.join(timeout=90)
                waited = time.monotonic() - began
                assert await anyio.to_thread.run_sync(holder.wait, 30) == 0
            stats = await q.stats()
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(timeout=10)
            for pipe in (holder.stdin, holder.stdout):
                if pipe is not None:
                    pipe.close()
        again = {job_id: n for job_id, n in runs.items() if n > 1}
        infos = await q.list_jobs(limit=jobs)
        print(f"locked out {held}s (busy_timeout {busy}s); joined after {waited:.1f}s")
        assert waited >= held - 1, "the lock did not hold the writer out"
        assert locked_runs < jobs
        assert (stats.done, stats.queued, stats.running, stats.dead) == (jobs, 0, 0, 0)
        await pool_counted(lambda: pool.processed >= jobs)
        assert pool.processed == jobs
        assert again == {}
        assert len(runs) == jobs
        assert all(i.attempts == 1 for i in infos)


# Reads one line on stdin, takes the write lock with BEGIN IMMEDIATE, says "locked", holds it for
# argv[2] seconds, then commits: a writer of another process that is not the library's.
_HOLD_LOCK = textwrap.dedent(
    """
    import sqlite3, sys, time

    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    sys.stdin.readline()
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
    conn.close()
    """
)
