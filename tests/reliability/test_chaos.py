"""Processes killed with SIGKILL, crashing at named points, and crowding one SQLite file: the
histories they log must check valid (:mod:`tests.reliability._history`).

- ``test_kill9_chaos``: 2 producers and 3 workers on one file; every 0.2-0.6 s a random one is
  SIGKILLed and restarted, for ``PERSISTQ_CHAOS_SECONDS`` (60 by default, the CI run; ``nox -s
  chaos`` runs 1800). Then the producers stop, the workers drain the queue and stop (SIGTERM),
  and the checker must find nothing lost, unexpected, duplicated or acked twice, and
  ``integrity_check`` ok. At least ``ceil(5/3 x seconds)`` kills are required (100 in 60 s,
  3,000 in 30 minutes; the killer averages 2.5 a second).
- ``test_named_crash_point``: for each point of :data:`persistq_async._crash.POINTS`, 20 runs of
  a child that kills itself there (``PERSISTQ_CRASH_AT``, after a random 0-3 passes), each
  followed by a check of the history so far; then a clean worker drains the queue and every job
  must end ``done``.
- ``test_many_processes``: 4 producers and 4 consumers for 10 s: every child exits 0 with a clean
  stderr (no ``database is locked`` or any other error reached a caller), and while a backlog
  exists consumers claim at least a quarter as many jobs as producers put.

The figures of each run are printed (``pytest -s``), written to a JSON file under the test's
``tmp_path`` (its path is printed), and repeated in any assertion message. Every wait is bounded;
bounds are generous (CI machines are slow and shared), the invariants strict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import persistq_async as pq
from persistq_async._crash import POINTS

from ._history import HistoryLog, Report, check, read_events, throughput_windows

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: Read at import: the autouse fixture of tests/conftest.py removes PERSISTQ_* variables.
CHAOS_SECONDS = float(os.environ.get("PERSISTQ_CHAOS_SECONDS", "60"))
#: The queue the children use (``_chaos_child.QUEUE_NAME``; not imported: importing the child
#: module would install its SIGTERM handler in this process).
QUEUE_NAME = "chaos"
#: Longest a child may take to exit after SIGTERM (or after SIGKILL, to be reaped).
EXIT_TIMEOUT = 60.0


# ---------------------------------------------------------------------- helpers


class Child:
    """A ``_chaos_child`` process; stderr goes to a file of its own."""

    def __init__(
        self,
        role: str,
        tag: str,
        workdir: Path,
        db: Path,
        args: list[str],
        env: dict[str, str] | None = None,
    ) -> None:
        self.role = role
        self.tag = tag
        (workdir / "stderr").mkdir(exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        self.stderr_path = workdir / "stderr" / f"{role}-{tag}.txt"
        python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.reliability._chaos_child",
                    role,
                    "--db",
                    str(db),
                    "--log-dir",
                    str(workdir / "logs"),
                    "--tag",
                    tag,
                    *args,
                ],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "PYTHONPATH": python_path, **(env or {})},
            )
        self.history_path = workdir / "logs" / f"{role}-{tag}-{self.proc.pid}.jsonl"

    def __repr__(self) -> str:
        return f"<{self.role} {self.tag} pid={self.proc.pid} rc={self.proc.returncode}>"

    def stderr(self, tail: int = 3000) -> str:
        return self.stderr_path.read_text(errors="replace")[-tail:]

    def peak_rss_kib(self) -> int | None:
        """The process's peak resident set (VmHWM), while it is alive."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=EXIT_TIMEOUT)

    def terminate(self) -> int:
        """SIGTERM, once the child's own handler is set; returns its exit status."""
        # The child sets its SIGTERM handler before it creates its history file.
        deadline = time.monotonic() + EXIT_TIMEOUT
        while not self.history_path.exists() and self.proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT)
            pytest.fail(f"{self} still running {EXIT_TIMEOUT}s after SIGTERM:\n{self.stderr()}")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT)
            pytest.fail(f"{self} did not exit within {timeout}s:\n{self.stderr()}")


def create_db(db: Path) -> None:
    async def run() -> None:
        async with pq.Queue(db, name=QUEUE_NAME):
            pass

    asyncio.run(run())


def put_jobs(db: Path, log_path: Path, count: int, max_attempts: int = 50) -> None:
    """Put ``count`` jobs from this process (in batches of ten), logging the history."""

    async def run() -> None:
        async with pq.Queue(db, name=QUEUE_NAME, max_attempts=max_attempts) as q:
            with HistoryLog(log_path) as log:
                for start in range(0, count, 10):
                    keys = [f"parent:{n}" for n in range(start, min(count, start + 10))]
                    for key in keys:
                        log.write("put-begin", k=key, batch=f"parent:b{start}")
                    ids = await q.put_many([{"k": k} for k in keys])
                    for key, job_id in zip(keys, ids, strict=True):
                        log.write("put-ok", k=key, id=job_id)

    asyncio.run(run())


def active_jobs(db: Path) -> int:
    """Queued (delayed included) and running jobs, read with a short-lived connection."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(
            conn.execute(
                "SELECT count(*) FROM persistq_jobs WHERE state IN ('queued', 'running')"
            ).fetchone()[0]
        )
    finally:
        conn.close()


def wait_drained(db: Path, workers: list[Child], bound: float) -> float:
    """Until no job is active; returns the seconds it took. Fails past ``bound`` or when a
    worker exits."""
    start = time.monotonic()
    while (left := active_jobs(db)) > 0:
        for child in workers:
            if child.proc.poll() is not None:
                pytest.fail(f"{child} exited while draining:\n{child.stderr()}")
        if time.monotonic() - start > bound:
            pytest.fail(f"{left} jobs still active {bound}s after the producers stopped")
        time.sleep(0.2)
    return time.monotonic() - start


def wal_bytes(db: Path) -> int:
    try:
        return os.path.getsize(f"{db}-wal")
    except OSError:
        return 0


def stderr_errors(children: list[Child]) -> list[str]:
    """Lines that show an error reached a caller (or was logged as an error)."""
    found = []
    for child in children:
        for line in child.stderr(tail=10**6).splitlines():
            lowered = line.lower()
            if "traceback" in lowered or "error" in lowered.split(":")[0] or "locked" in lowered:
                found.append(f"{child.role}-{child.tag}: {line}")
    return found


def publish(tmp_path: Path, name: str, figures: dict[str, Any]) -> str:
    """Write the figures to ``tmp_path/name`` and print them; returns them as text."""
    path = tmp_path / name
    text = json.dumps(figures, indent=2, sort_keys=True, default=str)
    path.write_text(text + "\n")
    print(f"\n{name}: {path}\n{text}")
    return text


def _assert_valid(report: Report, context: str) -> None:
    assert report.valid, f"{context}: {report}"


# ---------------------------------------------------------------------- kill -9 chaos

PRODUCER_ARGS = ["--pause", "0.02", "--batch-every", "10"]
WORKER_ARGS = {
    "w0": ["--mode", "pool", "--concurrency", "4", "--work", "0.005"],
    "w1": ["--mode", "pool", "--concurrency", "4", "--work", "0.005"],
    "w2": ["--mode", "loop", "--work", "0.005"],
}


# The module's 900 s are for the CI run; a longer one (nox -s chaos) gets its duration and the
# drain bound on top.
@pytest.mark.timeout(max(900.0, 1.5 * CHAOS_SECONDS + 600.0))
def test_kill9_chaos(tmp_path: Path) -> None:
    duration = CHAOS_SECONDS
    required = math.ceil(duration * 5 / 3)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    db = tmp_path / "chaos.db"
    create_db(db)

    incarnations: dict[str, int] = {}
    everyone: list[Child] = []

    def start(slot: str) -> Child:
        incarnations[slot] = incarnations.get(slot, 0) + 1
        tag = f"{slot}i{incarnations[slot]}"
        if slot.startswith("p"):
            child = Child("producer", tag, tmp_path, db, PRODUCER_ARGS)
        else:
            child = Child("worker", tag, tmp_path, db, WORKER_ARGS[slot])
        everyone.append(child)
        return child

    slots = ["p0", "p1", "w0", "w1", "w2"]
    running = {slot: start(slot) for slot in slots}
    kills = 0
    kills_by_slot = dict.fromkeys(slots, 0)
    self_exits: list[str] = []
    peak_rss = 0
    wal_max = 0
    began = time.monotonic()
    try:
        while time.monotonic() - began < duration:
            time.sleep(rng.uniform(0.2, 0.6))
            for slot, child in running.items():
                if child.proc.poll() is not None:  # nobody killed it: an error reached a caller
                    self_exits.append(f"{child} exited by itself:\n{child.stderr()}")
                    running[slot] = start(slot)
            slot = rng.choice(slots)
            victim = running[slot]
            peak_rss = max(peak_rss, victim.peak_rss_kib() or 0)
            victim.kill()
            kills += 1
            kills_by_slot[slot] += 1
            running[slot] = start(slot)
            wal_max = max(wal_max, wal_bytes(db))
        chaos_seconds = time.monotonic() - began

        # Stop the producers, let the workers drain, stop the workers: all cleanly.
        statuses = {}
        for slot in ("p0", "p1"):
            peak_rss = max(peak_rss, running[slot].peak_rss_kib() or 0)
            statuses[slot] = running[slot].terminate()
        backlog = active_jobs(db)
        workers = [running[s] for s in ("w0", "w1", "w2")]
        drain_seconds = wait_drained(db, workers, bound=max(120.0, duration / 4))
        for slot in ("w0", "w1", "w2"):
            peak_rss = max(peak_rss, running[slot].peak_rss_kib() or 0)
            statuses[slot] = running[slot].terminate()
    finally:
        for child in everyone:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(timeout=EXIT_TIMEOUT)

    wal_end = wal_bytes(db)
    report = check(db, tmp_path / "logs", queue=QUEUE_NAME, final=True)
    errors = stderr_errors(everyone)
    figures = {
        "seconds": duration,
        "chaos_seconds": round(chaos_seconds, 1),
        "seed": seed,
        "kills": kills,
        "kills_required": required,
        "kills_by_process": kills_by_slot,
        "processes_started": len(everyone),
        "jobs_put": report.put_ok,
        "jobs_in_db": report.rows,
        "done": report.states.get("done", 0),
        "dead": report.states.get("dead", 0),
        "lost": report.lost,
        "duplicated": report.duplicated,
        "double_acked": report.double_acked,
        "recovered": report.recovered,
        "aborted_puts": report.aborted,
        "redelivered": report.redelivered,
        "redelivered_db": report.redelivered_db,
        "claims": report.claims,
        "acks": report.acks,
        "ack_refused": report.ack_refused,
        "backlog_at_stop": backlog,
        "drain_seconds": round(drain_seconds, 1),
        "wal_max_bytes": wal_max,
        "wal_end_bytes": wal_end,
        "db_bytes": db.stat().st_size,
        "max_rss_kib": peak_rss,
        "integrity": report.integrity,
        "exit_statuses": statuses,
        "self_exits": len(self_exits),
        "stderr_errors": len(errors),
        "checker": report.figures(),
    }
    text = publish(tmp_path, "chaos-figures.json", figures)
    assert not self_exits, f"children exited without being killed: {self_exits[:3]}\n{text}"
    assert statuses == dict.fromkeys(statuses, 0), f"unclean stops: {statuses}\n{text}"
    assert not errors, f"errors on the children's stderr: {errors[:20]}\n{text}"
    _assert_valid(report, f"chaos history\n{text}")
    assert report.put_ok > 0, text
    assert report.states.get("done", 0) > 0, text
    assert kills >= required, f"only {kills} kills in {duration}s (need {required})\n{text}"


# ---------------------------------------------------------------------- named crash points

CRASH_RUNS = 20
#: Jobs put up front for the worker crash points: more than 20 runs can use (at most 4 each).
CRASH_JOBS = 200
#: Longest one crash run may take (start-up, a lease expiry, the crash).
CRASH_RUN_TIMEOUT = 60.0


@pytest.mark.parametrize("point", sorted(POINTS))
def test_named_crash_point(point: str, tmp_path: Path) -> None:
    rng = random.Random()
    db = tmp_path / "crash.db"
    create_db(db)
    (tmp_path / "logs").mkdir()
    if point != "mid-put":
        put_jobs(db, tmp_path / "logs" / "parent.jsonl", CRASH_JOBS)
    began = time.monotonic()
    children: list[Child] = []
    for run in range(CRASH_RUNS):
        env = {"PERSISTQ_CRASH_AT": point, "PERSISTQ_CRASH_AFTER": str(rng.randint(0, 3))}
        if point == "mid-put":
            args = ["--count", "1000", "--batch-every", "3"]
            child = Child("producer", f"c{run}", tmp_path, db, args, env)
        else:
            mode = "pool" if point == "mid-handler" or run % 2 == 0 else "loop"
            args = ["--mode", mode, "--concurrency", "2"]
            child = Child("worker", f"c{run}", tmp_path, db, args, env)
        children.append(child)
        status = child.wait(CRASH_RUN_TIMEOUT)
        assert status == -signal.SIGKILL, (
            f"run {run}: {child} did not crash at {point} ({env}):\n{child.stderr()}"
        )
        _assert_valid(check(db, tmp_path / "logs", final=False), f"{point}, after crash {run}")
    crash_seconds = time.monotonic() - began

    drainer = Child("worker", "drain", tmp_path, db, ["--mode", "pool", "--concurrency", "4"])
    children.append(drainer)
    drain_seconds = wait_drained(db, [drainer], bound=120.0)
    assert drainer.terminate() == 0, drainer.stderr()
    report = check(db, tmp_path / "logs", final=True)
    errors = stderr_errors(children)
    figures = {
        "point": point,
        "crashes": CRASH_RUNS,
        "crash_seconds": round(crash_seconds, 1),
        "drain_seconds": round(drain_seconds, 1),
        **report.figures(),
    }
    text = publish(tmp_path, f"crash-{point}.json", figures)
    assert not errors, f"errors on the children's stderr: {errors[:20]}\n{text}"
    _assert_valid(report, f"{point}, final\n{text}")
    assert report.states == {"done": report.rows}, f"not every job is done\n{text}"
    if point == "mid-put":
        # Each crash came before its put committed: nothing of it may be in the database.
        assert report.recovered == 0, text
        assert report.aborted >= CRASH_RUNS, text
        assert report.rows == report.put_ok, text
    else:
        assert report.rows == CRASH_JOBS, text


# ---------------------------------------------------------------------- many processes

MANY_SECONDS = 10.0


def test_many_processes(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    create_db(db)
    producers = [
        Child(
            "producer",
            f"p{i}",
            tmp_path,
            db,
            ["--seconds", str(MANY_SECONDS), "--batch-every", "10", "--lease", "10"],
        )
        for i in range(4)
    ]
    consumers = [
        Child(
            "worker",
            f"c{i}",
            tmp_path,
            db,
            ["--mode", "pool" if i < 2 else "loop", "--concurrency", "4", "--lease", "10"],
        )
        for i in range(4)
    ]
    children = producers + consumers
    try:
        statuses = {p.tag: p.wait(MANY_SECONDS + EXIT_TIMEOUT) for p in producers}
        backlog = active_jobs(db)
        drain_seconds = wait_drained(db, consumers, bound=180.0)
        statuses.update({c.tag: c.terminate() for c in consumers})
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(timeout=EXIT_TIMEOUT)

    report = check(db, tmp_path / "logs", final=True)
    events = read_events(tmp_path / "logs")
    windows = throughput_windows(events, width=1.0)
    busy = [w for w in windows if w["backlog"] > 0]
    puts = sum(w["puts"] for w in busy)
    claims = sum(w["claims"] for w in busy)
    errors = stderr_errors(children)
    figures = {
        "seconds": MANY_SECONDS,
        "jobs_put": report.put_ok,
        "put_rate": round(report.put_ok / MANY_SECONDS, 1),
        "backlog_at_stop": backlog,
        "drain_seconds": round(drain_seconds, 1),
        "backlog_windows": len(busy),
        "puts_in_backlog_windows": puts,
        "claims_in_backlog_windows": claims,
        "claim_to_put_ratio": round(claims / puts, 3) if puts else None,
        "lowest_window_ratio": min(
            (round(w["claims"] / w["puts"], 3) for w in busy if w["puts"]), default=None
        ),
        "windows": [{k: round(v, 1) for k, v in w.items()} for w in windows],
        "exit_statuses": statuses,
        "wal_end_bytes": wal_bytes(db),
        "checker": report.figures(),
    }
    text = publish(tmp_path, "many-processes.json", figures)
    assert statuses == dict.fromkeys(statuses, 0), f"unclean exits: {statuses}\n{text}"
    assert not errors, f"errors reached the children: {errors[:20]}\n{text}"
    _assert_valid(report, f"many processes\n{text}")
    assert report.put_ok > 0, text
    assert claims * 4 >= puts, f"consumers starved: {claims} claims for {puts} puts\n{text}"
