"""Schedules and results across real processes, on SQLite and PostgreSQL.

Five worker processes, each with a Supervisor (whose scheduler fires the queue's schedules),
share one database and one per-second schedule for more than 30 seconds; the one that enqueued
the latest tick is killed with SIGKILL half way. Every second of the run must be exactly one job:
no gap, no duplicate. And a result acked in another process wakes its awaiter here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue

import anyio
import pytest
from sqlalchemy import text

import persistq_async as pq
from persistq_async.testing import read_connection

from ._scheduler_child import SCHEDULE

CHILD = Path(__file__).with_name("_scheduler_child.py")
#: Longest a child may take to print a line (five start at once, importing SQLAlchemy).
LINE_TIMEOUT = 60.0
#: Seconds of ticks before and after the kill.
HALF_RUN = 16.0


class Child:
    """A child process whose stdout lines are read by a thread; every wait is bounded."""

    def __init__(self, args: list[str], cwd: Path, stderr_path: Path) -> None:
        self.args = args
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._lines: Queue[str | None] = Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.endswith("\n"):
                self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout: float = LINE_TIMEOUT) -> str:
        try:
            got = self._lines.get(timeout=timeout)
        except Empty:
            pytest.fail(f"child {self.args} printed nothing for {timeout}s:\n{self.stderr()}")
        if got is None:
            pytest.fail(f"child {self.args} ended ({self.proc.poll()}):\n{self.stderr()}")
        return got

    async def aline(self, timeout: float = LINE_TIMEOUT) -> str:  # noqa: ASYNC109
        return await anyio.to_thread.run_sync(self.line, timeout)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)
        self._reader.join(timeout=60)
        if self.proc.stdout is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.close()


def start(children: list[Child], tmp_path: Path, *args: str) -> Child:
    child = Child(list(args), tmp_path, tmp_path / f"child-{len(children)}.stderr")
    children.append(child)
    return child


async def latest_tick(q: pq.Queue) -> tuple[float, str] | None:
    async with read_connection(q) as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT tick_at, fired_by FROM persistq_ticks WHERE queue = :q "
                    "ORDER BY tick_at DESC LIMIT 1"
                ),
                {"q": q.name},
            )
        ).one_or_none()
    return None if row is None else (float(row[0]), str(row[1]))


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_five_supervisors_fire_a_per_second_schedule_once_per_tick_through_a_kill(
    backend_url: str, queue_name: str, tmp_path: Path, children: list[Child]
) -> None:
    async with pq.Queue(backend_url, name=queue_name) as q:
        procs = [start(children, tmp_path, "tick", backend_url, queue_name) for _ in range(5)]
        pids = {}
        for child in procs:
            word, pid = (await child.aline()).split()
            assert word == "ready"
            pids[int(pid)] = child
        started = time.time()
        await anyio.sleep(HALF_RUN)
        # Kill the process that enqueued the latest tick, right after it did. (Polled: the
        # tick is another process's commit, with no event here to wait on.)
        with anyio.fail_after(10):
            before = await latest_tick(q)
            while (now := await latest_tick(q)) == before:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        assert now is not None
        killed_tick, fired_by = now
        victim = pids[int(fired_by.split("@")[0])]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=30)
        await anyio.sleep(HALF_RUN)
        stopping = time.time()
        for child in procs:
            if child is not victim:
                child.proc.send_signal(signal.SIGTERM)
        for child in procs:
            if child is not victim:
                assert await child.aline() == "stopped", child.stderr()
                assert await anyio.to_thread.run_sync(child.proc.wait, 30) == 0
        found = await q.list_jobs(limit=10_000)
        async with read_connection(q) as conn:
            ticks = (
                await conn.execute(
                    text(
                        "SELECT tick_at, job_id, fired_by FROM persistq_ticks WHERE queue = :q "
                        "ORDER BY tick_at"
                    ),
                    {"q": q.name},
                )
            ).all()
    runs = sorted(job.run_at.timestamp() for job in found)
    assert runs, "no tick was enqueued"
    # One job per second: consecutive whole seconds, none missing, none twice.
    assert runs == [runs[0] + k for k in range(len(runs))]
    assert runs[-1] - runs[0] >= 30
    # ... covering the run: the first tick came soon after the children were ready, and the
    # last one shortly before they were told to stop.
    assert runs[0] <= started + 2
    assert runs[-1] >= stopping - 3
    assert killed_tick in runs
    assert killed_tick + 1 in runs  # the next second, by another process
    assert {job.dedupe_key for job in found} == {
        f"schedule:{SCHEDULE}@{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(r))}Z" for r in runs
    }
    assert [float(t.tick_at) for t in ticks] == runs
    assert {t.job_id for t in ticks} == {job.id for job in found}
    firers = {t.fired_by for t in ticks}
    assert len(firers) >= 2, firers  # no leader: whoever looks first fires
    assert fired_by in firers


@pytest.mark.timeout(120)
async def test_a_result_acked_in_another_process_wakes_the_awaiter(
    backend_url: str, queue_name: str, tmp_path: Path, children: list[Child]
) -> None:
    async with pq.Queue(backend_url, name=queue_name, poll_interval=0.05) as q:
        job_id = await q.put(21)
        got: list[object] = []

        async def wait() -> None:
            got.append(await q.result(job_id, timeout=60))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            child = start(children, tmp_path, "ack", backend_url, queue_name)
            assert await child.aline() == f"acked {job_id}"
            acked_at = anyio.current_time()
        woken_after = anyio.current_time() - acked_at
        assert got == [{"doubled": 42}]
        # Within poll_interval and a bit, however the other process committed.
        assert woken_after < 2.0
