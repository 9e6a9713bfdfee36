"""Helpers shared by the pool, supervisor and service tests (not a test module).

The second half serves the kill -9 chaos tests of real worker processes (SQLite in
``test_worker_chaos.py``, PostgreSQL in ``test_postgres_workers.py``): the worker process, the
handlers' per-process event logs, and the checks of a finished run against the audit trail.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import subprocess
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

import persistq_async as pq


def records(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    """The captured log records whose structured ``action`` is ``action``."""
    return [r for r in caplog.records if getattr(r, "action", None) == action]


async def info(q: pq.Queue, job_id: int) -> pq.JobInfo:
    """The job, which must exist."""
    found = await q.job(job_id)
    assert found is not None, f"job {job_id} vanished"
    return found


class Gauge:
    """Counts running handlers and remembers the peak; ``reached(n)`` fires when n run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self._waiters: list[tuple[int, anyio.Event]] = []

    def enter(self) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        for n, event in self._waiters:
            if self.running >= n:
                event.set()

    def leave(self) -> None:
        self.running -= 1

    def reached(self, n: int) -> anyio.Event:
        event = anyio.Event()
        if self.running >= n:
            event.set()
        else:
            self._waiters.append((n, event))
        return event


def run_in_other_loop(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``fn`` in a fresh event loop on another thread: like another process, this loop's
    in-process wake-ups (cancel listeners, work events) do not reach the caller's loop."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = anyio.run(fn)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the other event loop did not finish within 30 s"
    if "error" in box:
        raise box["error"]
    return box.get("result")


# ---------------------------------------------------------------------- worker processes

#: Longest a worker may take to exit after SIGTERM (nothing runs by then), or to be reaped.
EXIT_TIMEOUT = 15.0

#: The start of a handler module for worker processes: ``event(kind, job, *extra)`` appends
#: ``start|stop <job id> <pid> <lease token> <attempt> <time.time()> [how]`` to the process's
#: own log in ``$CHAOS_LOG_DIR``, flushed at once. A line cut by a SIGKILL in mid-write has no
#: newline, and :func:`read_logs` ignores it.
EVENT_LOG_MODULE = textwrap.dedent(
    """
    import os
    import random
    import time

    import anyio

    _log = None


    def record(*parts):
        global _log
        if _log is None:
            path = os.path.join(os.environ["CHAOS_LOG_DIR"], f"{os.getpid()}.log")
            _log = open(path, "a", encoding="utf-8")
        _log.write(" ".join(str(p) for p in parts) + "\\n")
        _log.flush()


    def event(kind, job, *extra):
        record(kind, job.id, os.getpid(), job.lease_token, job.attempts, repr(time.time()), *extra)
    """
)


class WorkerProcess:
    """One ``persistq worker`` process; its stdout and stderr go to a file."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str], out_path: Path) -> None:
        self.out_path = out_path
        self._out = out_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        self.started_at = time.time()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self._out.flush()
        return self.out_path.read_text(errors="replace")

    def kill(self) -> float:
        """SIGKILL and reap it; returns the time.time() at which it was certainly dead."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=EXIT_TIMEOUT)
        return time.time()

    def terminate(self, timeout: float = EXIT_TIMEOUT) -> int:
        """SIGTERM, then the exit status (fails the test if it does not exit in time)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"worker {self.pid} still running {timeout}s after SIGTERM:\n{self.output()}"
            )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # also ends a SIGSTOPped process
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=EXIT_TIMEOUT)
        self._out.close()


def wait_for_output(worker: WorkerProcess, fragment: str, within: float) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        output = worker.output()
        if fragment in output:
            return output
        time.sleep(0.05)
    pytest.fail(
        f"worker {worker.pid} did not log {fragment!r} within {within}s:\n{worker.output()}"
    )


def all_output(workdir: Path) -> str:
    """The stdout and stderr of every worker started so far, killed ones included."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(workdir.glob("worker-*.out")))


# ---------------------------------------------------------------------- logs and audit trail


@dataclass
class Run:
    """One handler run, from a worker's log, keyed by its lease token."""

    job_id: int
    pid: int
    token: str
    attempt: int
    start: float
    stop: float | None = None
    how: str | None = None  # "returned" or "cancelled"


@dataclass
class AttemptRow:
    attempt: int
    token: str
    outcome: str
    started_at: float
    finished_at: float


@dataclass
class Logs:
    # (job id, lease token) -> run; one claim statement leases a batch under one token
    runs: dict[tuple[int, str], Run] = field(default_factory=dict)
    by_pid: dict[int, list[Run]] = field(default_factory=dict)


def read_logs(log_dir: Path) -> Logs:
    logs = Logs()
    for path in sorted(log_dir.glob("*.log")):
        text = path.read_text()
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        for line in complete.splitlines():
            kind, job_id, pid, token, attempt, at, *rest = line.split()
            key = (int(job_id), token)
            if kind == "start":
                assert key not in logs.runs, f"delivery {key} started twice: {line}"
                run = Run(int(job_id), int(pid), token, int(attempt), float(at))
                logs.runs[key] = run
                logs.by_pid.setdefault(run.pid, []).append(run)
            else:
                assert kind == "stop", line
                run = logs.runs[key]
                assert run.stop is None, f"delivery {key} stopped twice"
                assert run.pid == int(pid)
                run.stop, run.how = float(at), rest[0]
    return logs


async def all_jobs(q: pq.Queue) -> list[pq.JobInfo]:
    out: list[pq.JobInfo] = []
    while True:
        page = await q.list_jobs(limit=1000, offset=len(out))
        out += page
        if len(page) < 1000:
            return out


def check_deliveries(
    ids: list[int],
    infos: dict[int, pq.JobInfo],
    rows: dict[int, list[AttemptRow]],
    logs: Logs,
    killed: dict[int, float],
    context: str,
) -> tuple[int, int]:
    """Check a chaos run whose handlers never fail; returns (redeliveries, interrupted runs).

    ``infos`` are the queue's jobs, ``rows`` the audit trail (job id -> attempt rows in order),
    ``logs`` the handlers' event logs, ``killed`` maps each SIGKILLed pid to the time it was
    certainly dead; ``context`` (e.g. the seed) goes into every failure message.
    """
    # None lost, every job done, none dead, attempts within bounds.
    assert set(infos) == set(ids)
    assert Counter(i.state for i in infos.values()) == {pq.JobState.DONE: len(ids)}
    redelivered = 0
    for job_id, info in infos.items():
        history = rows.get(job_id, [])
        where = f"job {job_id} ({context}): {history}"
        assert 1 <= info.attempts <= info.max_attempts, where
        # Every delivery left one audit row, numbered 1..n; only the last was acked, and
        # every earlier one expired (no nack, no release: handlers never fail here).
        assert [r.attempt for r in history] == list(range(1, info.attempts + 1)), where
        assert [r.outcome for r in history] == ["expired"] * (info.attempts - 1) + ["acked"], where
        redelivered += info.attempts - 1
        acked = history[-1]

        # The acked delivery ran to completion in the process that the result names.
        run = logs.runs.get((job_id, acked.token))
        assert run is not None, f"acked token never ran a handler: {where}"
        assert (run.job_id, run.attempt, run.how) == (job_id, acked.attempt, "returned"), where
        assert info.result == {"pid": run.pid}, where
        assert run.stop is not None
        assert run.stop <= acked.finished_at, where

        # An expired delivery belonged to a process that was killed (its heartbeat kept
        # the lease of a live one); a handler that started under it did not finish it.
        for row in history[:-1]:
            expired_run = logs.runs.get((job_id, row.token))
            if expired_run is None:
                continue  # killed between the claim's commit and the handler's first line
            assert expired_run.pid in killed, (
                f"lease of live worker {expired_run.pid} expired: {where}"
            )
            assert expired_run.job_id == job_id
            assert row.finished_at >= killed[expired_run.pid], where

        # Never in two places at once: a run lasts from its start to its stop, or to the
        # death of its process; the runs of one job, in attempt order, do not overlap.
        job_runs = sorted(
            (logs.runs[job_id, r.token] for r in history if (job_id, r.token) in logs.runs),
            key=lambda r: r.attempt,
        )
        for earlier, later in itertools.pairwise(job_runs):
            ended = earlier.stop if earlier.stop is not None else killed.get(earlier.pid)
            assert ended is not None, f"run {earlier} never ended, its process alive: {where}"
            assert later.start >= ended, f"{earlier} overlaps {later}: {where}"

    # Every handler run is a delivery the database knows, of the right job and attempt.
    known = {(job_id, r.token): r.attempt for job_id, h in rows.items() for r in h}
    for key, run in logs.runs.items():
        assert known.get(key) == run.attempt, run
    # Every job whose holder was killed mid-run shows that delivery as expired.
    interrupted = 0
    for pid in killed:
        for run in logs.by_pid.get(pid, []):
            if run.stop is None:
                interrupted += 1
                outcome = {r.token: r.outcome for r in rows[run.job_id]}[run.token]
                assert outcome == "expired", (run, rows[run.job_id])
    return redelivered, interrupted
