"""Real ``python -m persistq_async worker`` processes on one SQLite file: kill -9 chaos and pause.

1. *Chaos*: three supervised worker processes (concurrency 4, 1 s leases) drain 300 jobs (due in
   six waves, 1.5 s apart) while the test SIGKILLs a random one every 0.3-0.6 s and restarts
   it. Every job ends done, none is lost, no job ran in two places while its lease was valid, and
   every job whose holder was killed shows an ``expired`` attempt.
2. *Pause (zombie)*: a worker holding a job is SIGSTOPped past its lease; another worker takes the
   job and acks it; once resumed, the paused worker's outcome is refused (``LeaseLost``), the job
   is done exactly once, and the paused worker keeps working and stops cleanly on SIGTERM.

The handler (written into ``tmp_path``) appends one line per event to a per-process log, flushed
at once: ``start|stop <job id> <pid> <lease token> <attempt> <time.time()> [how]``. A line cut by a
SIGKILL in mid-write has no newline and is ignored. The database's own audit trail (the
``persistq_attempts`` rows, read with plain sqlite3) is checked against those logs token by token.
Every wait is bounded; every child is killed and reaped at teardown.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

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

pytestmark = [pytest.mark.timeout(120)]

QUEUE = "chaos"
LEASE_SECONDS = 1.0
JOBS = 300
WORKERS = 3
CONCURRENCY = 4
MIN_KILLS = 6
#: After this many kills the survivors drain the rest undisturbed (bounds a slow machine's run).
MAX_KILLS = 30
#: The jobs become due in waves, 1.5 s apart, so that work is in flight for several seconds
#: however fast this machine drains them: every kill of the first ones lands on a busy worker.
WAVES = 6
WAVE_SECONDS = 1.5
#: The chaos phase (kills and drain) must be over within this many seconds.
CHAOS_BUDGET = 40.0

HANDLER_MODULE = EVENT_LOG_MODULE + textwrap.dedent(
    """

    async def chaos(job):
        event("start", job)
        how = "cancelled"
        try:
            # Long enough that a wave keeps every slot busy for most of its 1.5 s: a kill
            # then nearly always lands mid-handler (at 20-50 ms it often found them all idle).
            await anyio.sleep(random.uniform(0.1, 0.3))
            how = "returned"
        finally:
            event("stop", job, how)
        return {"pid": os.getpid()}


    async def zombie(job):
        # The first delivery waits for a flag file; later ones return at once.
        event("start", job)
        how = "cancelled"
        try:
            if job.attempts == 1:
                flag = os.path.join(os.environ["CHAOS_LOG_DIR"], "release")
                with anyio.fail_after(30):
                    while not os.path.exists(flag):
                        await anyio.sleep(0.05)
            how = "returned"
        finally:
            event("stop", job, how)
        return {"pid": os.getpid()}
    """
)


# ---------------------------------------------------------------------- processes

Launch = Callable[..., WorkerProcess]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "chaos_jobs.py").write_text(HANDLER_MODULE)
    (tmp_path / "logs").mkdir()
    return tmp_path


@pytest.fixture
def launch(workdir: Path) -> Iterator[Launch]:
    """Start worker processes; every one is killed (if still running) and reaped at teardown."""
    started: list[WorkerProcess] = []
    env = {
        **os.environ,
        "PERSISTQ_LEASE_SECONDS": str(LEASE_SECONDS),
        "CHAOS_LOG_DIR": str(workdir / "logs"),
        "PYTHONUNBUFFERED": "1",
    }

    def start(handler: str, *, concurrency: int, grace: float = 5.0) -> WorkerProcess:
        cmd = [
            sys.executable,
            "-m",
            "persistq_async",
            "worker",
            f"chaos_jobs:{handler}",
            "--queue",
            QUEUE,
            "--url",
            str(workdir / "jobs.db"),
            "--concurrency",
            str(concurrency),
            "--grace",
            str(grace),
        ]
        worker = WorkerProcess(cmd, workdir, env, workdir / f"worker-{len(started)}.out")
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.close()


# ---------------------------------------------------------------------- logs and database


def attempt_rows(db: Path) -> dict[int, list[AttemptRow]]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        rows = conn.execute(
            "SELECT job_id, attempt, lease_token, outcome, started_at, finished_at "
            "FROM persistq_attempts ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    found: dict[int, list[AttemptRow]] = {}
    for job_id, *rest in rows:
        found.setdefault(job_id, []).append(AttemptRow(*rest))
    return found


def state_counts(db: Path) -> Counter[str]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return Counter(
            dict(conn.execute("SELECT state, count(*) FROM persistq_jobs GROUP BY state"))
        )
    finally:
        conn.close()


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def write_lock_free(db: Path, timeout: float) -> bool:
    """Whether plain sqlite3 gets the write lock within ``timeout`` (then lets it go)."""
    conn = sqlite3.connect(db, timeout=timeout, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return False
        raise
    finally:
        conn.close()


# ---------------------------------------------------------------------- 1. kill -9 chaos


async def test_kill_9_chaos_three_worker_processes_every_job_done_once(
    workdir: Path, launch: Launch
) -> None:
    db = workdir / "jobs.db"
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    async with pq.Queue(db, name=QUEUE) as q:
        ids: list[int] = []
        per_wave = JOBS // WAVES
        for wave in range(WAVES):
            ids += await q.put_many(
                [{"n": n} for n in range(wave * per_wave, (wave + 1) * per_wave)],
                delay=wave * WAVE_SECONDS,
                # Only a kill of its holder expires a delivery, so no job can spend more
                # attempts than there are kills: none can end dead, every one must end done.
                max_attempts=MAX_KILLS + 1,
            )
        assert len(ids) == JOBS

    slots = [launch("chaos", concurrency=CONCURRENCY) for _ in range(WORKERS)]
    killed: dict[int, float] = {}  # pid -> time.time() once it was certainly dead
    kills_with_backlog = 0
    began = time.monotonic()
    while (counts := state_counts(db))["done"] < JOBS:
        elapsed = time.monotonic() - began
        assert not counts["dead"], f"a job ended dead (seed {seed}): {dict(counts)}"
        assert elapsed < CHAOS_BUDGET, (
            f"chaos not over after {elapsed:.1f}s (seed {seed}): {dict(counts)}, "
            f"{len(killed)} kills"
        )
        for worker in slots:
            assert worker.proc.poll() is None, (
                f"worker {worker.pid} exited by itself ({worker.proc.returncode}):\n"
                + worker.output()
            )
        await anyio.sleep(rng.uniform(0.3, 0.6))
        if len(killed) >= MAX_KILLS:
            continue  # enough: let the survivors drain what is left
        # Kill a worker that is up (a booting one holds no job); on a slow machine restarts
        # take longer, and killing booting workers would only starve the queue.
        up = [i for i, worker in enumerate(slots) if "worker started" in worker.output()]
        if not up:
            continue
        slot = rng.choice(up)
        backlog = state_counts(db)["done"] < JOBS
        killed[slots[slot].pid] = slots[slot].kill()
        kills_with_backlog += backlog
        slots[slot] = launch("chaos", concurrency=CONCURRENCY)
    chaos_seconds = time.monotonic() - began

    # Every survivor stops cleanly on SIGTERM (nothing is running any more), once it is up:
    # before its signal handler is installed, SIGTERM kills a Python process outright.
    for worker in slots:
        wait_for_output(worker, "worker started", within=20)
        assert worker.terminate() == 0, worker.output()

    assert integrity(db) == "ok"
    logs = read_logs(workdir / "logs")
    rows = attempt_rows(db)
    async with pq.Queue(db, name=QUEUE) as q:
        infos = {i.id: i for i in await all_jobs(q)}

    redelivered, interrupted = check_deliveries(ids, infos, rows, logs, killed, f"seed {seed}")

    # Every worker's output, the killed ones' included.
    outputs = all_output(workdir)
    assert "Traceback" not in outputs
    assert "outcome not applied" not in outputs  # no live worker lost a lease
    # The chaos had teeth: kills while jobs were waiting, some of them mid-handler.
    assert kills_with_backlog >= MIN_KILLS, (kills_with_backlog, len(killed), seed)
    assert interrupted >= 1
    assert redelivered >= 1
    print(
        f"chaos (seed {seed}): {JOBS} jobs, {len(killed)} kills "
        f"({kills_with_backlog} with a backlog), {interrupted} handlers interrupted, "
        f"{redelivered} redeliveries, lost 0, double-acked 0, {chaos_seconds:.1f}s"
    )


# ---------------------------------------------------------------------- 2. pause (zombie)


def wait_for_line(log: Path, prefix: str, within: float) -> str:
    """The first complete line of ``log`` starting with ``prefix`` (fails after ``within`` s)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines(keepends=True):
                if line.startswith(prefix) and line.endswith("\n"):
                    return line.strip()
        time.sleep(0.02)
    pytest.fail(f"no line starting {prefix!r} in {log} within {within}s")


def job_state(db: Path, job_id: int) -> tuple[str, str | None]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        state, token = conn.execute(
            "SELECT state, lease_token FROM persistq_jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return str(state), token
    finally:
        conn.close()


def stop_outside_a_write(worker: WorkerProcess, db: Path) -> float:
    """SIGSTOP the worker at a moment it holds no SQLite write lock; returns when it stopped.

    A process frozen inside a write transaction would freeze every other writer too: that is
    SQLite, not the queue's lease logic, which is what this test is about.
    """
    for _ in range(20):
        os.kill(worker.pid, signal.SIGSTOP)
        stopped_at = time.time()
        if write_lock_free(db, timeout=0.5):
            return stopped_at
        os.kill(worker.pid, signal.SIGCONT)
        time.sleep(0.05)
    pytest.fail("the worker held the write lock at every one of 20 SIGSTOPs")


async def test_a_paused_worker_past_its_lease_loses_the_job_and_its_outcome_is_refused(
    workdir: Path, launch: Launch
) -> None:
    db = workdir / "jobs.db"
    logs = workdir / "logs"
    async with pq.Queue(db, name=QUEUE) as q:
        job_id = await q.put({"zombie": True})

    a = launch("zombie", concurrency=1)
    line = wait_for_line(logs / f"{a.pid}.log", f"start {job_id} ", within=20)
    token_a = line.split()[3]
    assert line.split()[4] == "1"  # attempt 1
    assert job_state(db, job_id) == ("running", token_a)

    # Freeze A (its heartbeat with it) for longer than its lease, while B starts.
    stopped_at = stop_outside_a_write(a, db)
    b = launch("zombie", concurrency=1)
    deadline = time.monotonic() + 20
    while job_state(db, job_id)[0] != "done":
        assert time.monotonic() < deadline, f"B never finished the job:\n{b.output()}"
        await anyio.sleep(0.05)
    # Keep A frozen for at least 1.5x its lease plus the rescue interval (1 s).
    await anyio.sleep(max(0.0, stopped_at + 1.5 * LEASE_SECONDS + 1.0 - time.time()))

    b_line = wait_for_line(logs / f"{b.pid}.log", f"stop {job_id} ", within=5)
    _, _, _, token_b, attempt_b, _, how_b = b_line.split()
    assert (attempt_b, how_b) == ("2", "returned")
    assert token_b != token_a
    b_start = float(wait_for_line(logs / f"{b.pid}.log", f"start {job_id} ", within=5).split()[5])
    assert b_start >= stopped_at + 0.5 * LEASE_SECONDS  # not before A's lease could expire
    a_log_frozen = (logs / f"{a.pid}.log").read_text()
    assert a_log_frozen.count("\n") == 1  # only A's start: it was frozen mid-handler

    # Resume A, its handler free to finish at once: its outcome must be refused, whether its
    # ack loses (LeaseLost: "outcome not applied") or its heartbeat finds the lease gone first.
    (logs / "release").touch()
    os.kill(a.pid, signal.SIGCONT)
    output_a = wait_for_output(a, "lease lost", within=10)
    a_stop = wait_for_line(logs / f"{a.pid}.log", f"stop {job_id} ", within=10).split()
    assert a_stop[3] == token_a
    refused_ack = f"job {job_id}: outcome not applied" in output_a
    if a_stop[6] == "returned":
        assert refused_ack, output_a
    else:
        assert a_stop[6] == "cancelled"
        assert f"job {job_id} stopped: lease lost" in output_a, output_a
    assert f"job {job_id} done in" not in output_a

    history = attempt_rows(db)[job_id]
    assert [(r.attempt, r.token, r.outcome) for r in history] == [
        (1, token_a, "expired"),
        (2, token_b, "acked"),
    ]
    async with pq.Queue(db, name=QUEUE) as q:
        info = await q.job(job_id)
        assert info is not None
        assert (info.state, info.attempts, info.result) == (pq.JobState.DONE, 2, {"pid": b.pid})
        assert [a.outcome for a in info.history] == ["expired", "acked"]

        # A is still a working worker: with B gone, it runs a fresh job to the end.
        assert b.terminate() == 0, b.output()
        fresh = await q.put({"after": "resume"})
        await q.join(timeout=20)
        info = await q.job(fresh)
        assert info is not None
        assert (info.state, info.attempts, info.result) == (pq.JobState.DONE, 1, {"pid": a.pid})
    assert a.terminate() == 0, a.output()
    assert "Traceback" not in a.output()
    assert "Traceback" not in b.output()
    assert integrity(db) == "ok"
    print(
        f"pause: A frozen {b_start - stopped_at:.2f}s before B started the job; A's outcome "
        f"refused by {'a refused ack' if a_stop[6] == 'returned' else 'its heartbeat'}"
    )
