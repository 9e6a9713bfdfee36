"""Several real OS processes on one SQLite file: kill -9, lease expiry, concurrent consumers.

Every child is ``tests/integration/_worker.py`` started with ``sys.executable``; it prints one
flushed line per event, so what the parent read is exactly what had returned in the child before
it was killed. Every wait is bounded: child output by a per-line timeout, child exits by
``Popen.wait(timeout)``, queue calls by their own ``timeout`` or ``anyio.fail_after``.
"""

from __future__ import annotations

import contextlib
import os
import queue as stdlib_queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

import persistq_async as pq

from ._support import all_jobs
from ._worker import QUEUE_NAME

pytestmark = pytest.mark.timeout(120)

WORKER = Path(__file__).with_name("_worker.py")
#: Longest a child may take to print its next line (its start imports SQLAlchemy).
LINE_TIMEOUT = 20.0
#: Longest a child may take to exit once it should.
EXIT_TIMEOUT = 60.0


class Child:
    """A worker process whose stdout lines arrive through a reader thread, each wait bounded."""

    def __init__(self, args: list[str], cwd: Path, stderr_path: Path) -> None:
        self.args = args
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._lines: stdlib_queue.Queue[str | None] = stdlib_queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._eof = False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            # A line without its newline was cut by a kill in mid-write: it was never printed.
            if line.endswith("\n"):
                self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout: float = LINE_TIMEOUT) -> str:
        """The next stdout line; fails when none comes within ``timeout`` or the child ended."""
        try:
            got = self._lines.get(timeout=timeout)
        except stdlib_queue.Empty:
            pytest.fail(
                f"child {self.args} printed nothing for {timeout}s; stderr:\n{self.stderr()}"
            )
        if got is None:
            self._eof = True
            status = self.proc.poll()
            pytest.fail(
                f"child {self.args} ended (status {status}) early; stderr:\n{self.stderr()}"
            )
        return got

    async def aline(self, timeout: float = LINE_TIMEOUT) -> str:  # noqa: ASYNC109
        """:meth:`line` without blocking the event loop."""
        return await anyio.to_thread.run_sync(self.line, timeout)

    def send(self, text: str) -> None:
        """Write a line to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL, then reap it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=EXIT_TIMEOUT)

    def rest(self) -> list[str]:
        """Every complete line printed before the child ended (call after it ended)."""
        self._reader.join(timeout=EXIT_TIMEOUT)
        assert not self._reader.is_alive(), "stdout reader did not finish"
        out: list[str] = []
        while not self._eof:
            got = self._lines.get_nowait()
            if got is None:
                self._eof = True
            else:
                out.append(got)
        return out

    def wait_ok(self, timeout: float = EXIT_TIMEOUT) -> list[str]:
        """Wait for a clean exit (status 0); returns the lines not read yet."""
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"child {self.args} still running after {timeout}s; stderr:\n{self.stderr()}"
            )
        assert status == 0, f"child {self.args} exited {status}; stderr:\n{self.stderr()}"
        return self.rest()

    async def await_ok(self, timeout: float = EXIT_TIMEOUT) -> list[str]:  # noqa: ASYNC109
        """:meth:`wait_ok` without blocking the event loop."""
        return await anyio.to_thread.run_sync(self.wait_ok, timeout)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        """Kill it if it still runs; close every pipe and file (no ResourceWarning)."""
        if self.proc.poll() is None:
            self.kill()
        self._reader.join(timeout=EXIT_TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
        self._stderr.close()


Spawn = Callable[..., Child]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start ``_worker.py ROLE ARGS...`` children; every one is killed and reaped at teardown."""
    children: list[Child] = []

    def start(*args: object) -> Child:
        strs = [str(a) for a in args]
        child = Child(strs, tmp_path, tmp_path / f"child-{len(children)}-{strs[0]}.stderr")
        children.append(child)
        return child

    yield start
    for child in children:
        child.close()


def integrity(db_path: Path) -> str:
    conn = sqlite3.connect(db_path, timeout=2)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def begin_immediate_seconds(db_path: Path, timeout: float = 2.0) -> float:
    """How long plain sqlite3 took to get the write lock (raises if it could not)."""
    conn = sqlite3.connect(db_path, timeout=timeout, isolation_level=None)
    try:
        start = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        took = time.monotonic() - start
        conn.execute("ROLLBACK")
        return took
    finally:
        conn.close()


def attempt_rows(db_path: Path) -> dict[int, list[tuple[int, str, str | None]]]:
    """job id -> [(attempt, lease_token, outcome)], read straight from the file."""
    conn = sqlite3.connect(db_path, timeout=5)
    try:
        rows = conn.execute(
            "SELECT job_id, attempt, lease_token, outcome FROM persistq_attempts ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    found: dict[int, list[tuple[int, str, str | None]]] = {}
    for job_id, attempt, token, outcome in rows:
        found.setdefault(job_id, []).append((attempt, token, outcome))
    return found


# ---------------------------------------------------------------------- 1. put survives kill -9


async def test_returned_puts_survive_sigkill_of_the_producer(db_path: Path, spawn: Spawn) -> None:
    async with pq.Queue(db_path, name=QUEUE_NAME):
        pass  # create the schema before the child races for it
    child = spawn("put", db_path, 1_000_000)
    printed = [int(await child.aline()) for _ in range(40)]
    child.kill()  # mid-way: it is putting as fast as it can
    assert child.proc.returncode == -signal.SIGKILL
    printed += [int(line) for line in child.rest()]

    assert integrity(db_path) == "ok"
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        for position, job_id in enumerate(printed):
            info = await q.job(job_id)
            assert info is not None, f"put of job {job_id} returned, but the job is gone"
            assert info.state == pq.JobState.QUEUED
            assert info.attempts == 0
            assert info.payload == {"i": position}
        # Jobs whose put committed but whose id was not printed yet may exist; none beyond that.
        stats = await q.stats()
        assert stats.queued >= len(printed)
        assert stats.queued == stats.total


# ---------------------------------------------------------------------- 2. lease of a killed holder


async def test_lease_of_a_killed_consumer_expires_and_the_job_comes_back(
    db_path: Path, spawn: Spawn
) -> None:
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        job_id = await q.put({"n": 1})
        child = spawn("lease", db_path, 1.0)
        assert await child.aline() == f"leased {job_id} 1"
        child.kill()
        killed_at = time.monotonic()

        assert (await q.stats()).running == 1  # still leased to the dead process
        job = await q.get(timeout=5)
        waited = time.monotonic() - killed_at
        assert job.id == job_id
        assert job.attempts == 2
        assert job.payload == {"n": 1}
        assert waited < 5

        info = await q.job(job_id)
        assert info is not None
        assert [(a.attempt, a.outcome) for a in info.history] == [(1, "expired"), (2, None)]
        assert info.history[0].finished_at is not None
        await job.ack()
        info = await q.job(job_id)
        assert info is not None
        assert info.state == pq.JobState.DONE
        assert [a.outcome for a in info.history] == ["expired", "acked"]


# ---------------------------------------------------------------------- 3. several consumers


def parse_consumer_logs(logs: list[Path]) -> tuple[dict[int, list[tuple[int, str]]], Counter[int]]:
    """job id -> [(consumer, token)] of its claims, and how often each job was acked."""
    claims: dict[int, list[tuple[int, str]]] = {}
    acks: Counter[int] = Counter()
    for consumer, log in enumerate(logs):
        open_claim: int | None = None
        for line in log.read_text().splitlines():
            kind, job_id, *rest = line.split()
            if kind == "claimed":
                # A consumer holds one job at a time: a claim, then its ack.
                assert open_claim is None, (
                    f"consumer {consumer} claimed {job_id} holding {open_claim}"
                )
                open_claim = int(job_id)
                claims.setdefault(int(job_id), []).append((consumer, rest[0]))
            else:
                assert kind == "acked"
                assert open_claim == int(job_id)
                open_claim = None
                acks[int(job_id)] += 1
        assert open_claim is None, f"consumer {consumer} exited holding job {open_claim}"
    return claims, acks


def check_drained(
    db_path: Path,
    infos: list[pq.JobInfo],
    logs: list[Path],
    expected_ids: set[int],
    consumers: list[Child],
) -> None:
    claims, acks = parse_consumer_logs(logs)
    assert {i.id for i in infos} == expected_ids
    assert all(i.state == pq.JobState.DONE for i in infos), Counter(i.state for i in infos)
    # Each job acked exactly once, and (no lease ever expired) claimed exactly once: so no two
    # consumers ever held one job, at the same time or otherwise.
    assert set(acks) == expected_ids
    assert set(acks.values()) == {1}
    assert set(claims) == expected_ids
    assert {len(c) for c in claims.values()} == {1}
    assert all(i.attempts == 1 for i in infos)
    # The database's audit trail agrees with the consumers' logs, token for token.
    rows = attempt_rows(db_path)
    for job_id, [(_consumer, token)] in claims.items():
        assert rows[job_id] == [(1, token, "acked")]
    tokens = [token for c in claims.values() for _, token in c]
    assert len(set(tokens)) == len(tokens)
    # Every consumer did some of the work (the file really was shared).
    by_consumer = Counter(consumer for c in claims.values() for consumer, _ in c)
    assert set(by_consumer) == set(range(len(consumers))), by_consumer
    for child in consumers:
        assert "locked" not in child.stderr()


async def test_three_consumer_processes_drain_600_jobs_each_once(
    db_path: Path, spawn: Spawn, tmp_path: Path
) -> None:
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        ids = await q.put_many([{"n": n} for n in range(600)])
        stops = await q.put_many([{"stop": True}] * 3)
        logs = [tmp_path / f"consumer-{k}.log" for k in range(3)]
        consumers = [spawn("consume", db_path, log) for log in logs]
        for child in consumers:
            await child.await_ok()

        infos = await all_jobs(q)
        check_drained(db_path, infos, logs, set(ids) | set(stops), consumers)
        stats = await q.stats()
        assert (stats.queued, stats.running, stats.done, stats.dead) == (0, 0, 603, 0)
        assert integrity(db_path) == "ok"


async def test_a_producer_process_and_three_consumer_processes_at_once(
    db_path: Path, spawn: Spawn, tmp_path: Path
) -> None:
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        logs = [tmp_path / f"consumer-{k}.log" for k in range(3)]
        consumers = [spawn("consume", db_path, log) for log in logs]
        producer = spawn("produce", db_path, 400, 3)
        # Consumers are already consuming while the producer puts: its last lines come after
        # consumers acked some of its first jobs (checked below through timestamps of the file).
        produced = [int(x) for line in await producer.await_ok() for x in line.split()]
        for child in consumers:
            await child.await_ok()
        assert "locked" not in producer.stderr()

        assert len(produced) == 403
        assert len(set(produced)) == 403
        infos = await all_jobs(q)
        check_drained(db_path, infos, logs, set(produced), consumers)
        first_finished = min(i.finished_at for i in infos if i.finished_at is not None)
        last_created = max(i.created_at for i in infos)
        assert first_finished < last_created, "consumers did not consume while the producer put"
        assert integrity(db_path) == "ok"


# ---------------------------------------------------------------------- 4. cross-process wake-up


async def test_a_put_in_another_process_wakes_a_waiting_get_quickly(
    db_path: Path, spawn: Spawn
) -> None:
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        assert q.options.poll_interval == 0.1
        child = spawn("put-wait", db_path)
        assert await child.aline() == "ready"
        for _ in range(3):
            got: list[tuple[pq.Job, float]] = []

            async def wait_for_job(got: list[tuple[pq.Job, float]]) -> None:
                job = await q.get(timeout=10)
                got.append((job, time.monotonic()))

            with anyio.fail_after(15):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait_for_job, got)
                    await anyio.sleep(0.3)  # the get is waiting, past its first claim
                    assert not got
                    sent_at = time.monotonic()
                    child.send("go")
                    kind, job_id, put_at = (await child.aline()).split()
            assert kind == "put"
            [(job, got_at)] = got
            assert job.id == int(job_id)
            # CLOCK_MONOTONIC is system-wide on Linux, so the child's reading compares with ours.
            latency = got_at - float(put_at)
            assert latency < 1.0, f"get returned {latency:.3f}s after another process's put"
            assert got_at - sent_at < 5.0
            await job.ack()
        child.proc.stdin.close()  # type: ignore[union-attr]
        await child.await_ok()


# ---------------------------------------------------------------------- 5. cancel, kill -9 a writer


async def test_sigkill_of_a_writing_process_leaves_the_file_writable_and_intact(
    db_path: Path, spawn: Spawn
) -> None:
    async with pq.Queue(db_path, name=QUEUE_NAME):
        pass
    for round_ in range(3):
        child = spawn("put", db_path, 1_000_000)
        for _ in range(10 + 7 * round_):
            await child.aline()
        child.kill()  # in a loop of puts: likely inside a transaction, fsync or checkpoint
        printed = [int(x) for x in child.rest()]
        took = begin_immediate_seconds(db_path, timeout=2.0)
        assert took < 2.0
        assert integrity(db_path) == "ok"
        async with pq.Queue(db_path, name=QUEUE_NAME) as q:
            for job_id in printed[-5:]:
                assert await q.job(job_id) is not None


async def test_sigkill_of_a_process_holding_the_write_lock_frees_it(
    db_path: Path, spawn: Spawn
) -> None:
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        job_id = await q.put({"n": 1})
        child = spawn("hold-lock", db_path)
        assert await child.aline() == "locked"
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            begin_immediate_seconds(db_path, timeout=0.2)  # the child really holds it
        child.kill()
        assert begin_immediate_seconds(db_path, timeout=2.0) < 2.0
        assert integrity(db_path) == "ok"
        with anyio.fail_after(5):
            job = await q.get(timeout=4)
            assert job.id == job_id
            await job.ack()
            assert (await q.put({"n": 2})) > job_id


async def test_a_get_cancelled_while_waiting_leaves_no_lease_and_no_lock(
    db_path: Path, spawn: Spawn
) -> None:
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        child = spawn("put-wait", db_path)
        assert await child.aline() == "ready"
        with anyio.move_on_after(0.3) as scope:
            await q.get()
        assert scope.cancelled_caught
        # The cancelled wait holds no write transaction: another process can write at once.
        assert begin_immediate_seconds(db_path, timeout=2.0) < 1.0
        child.send("go")
        _, job_id, _ = (await child.aline()).split()
        info = await q.job(int(job_id))
        assert info is not None
        assert (info.state, info.attempts, info.history) == (pq.JobState.QUEUED, 0, [])
        job = await q.get(timeout=5)
        assert (job.id, job.attempts) == (int(job_id), 1)
        await job.ack()
        child.proc.stdin.close()  # type: ignore[union-attr]
        await child.await_ok()
        assert integrity(db_path) == "ok"


async def test_gets_cancelled_at_random_points_while_another_process_puts(
    db_path: Path, spawn: Spawn
) -> None:
    """A claim that committed for a cancelled get is handed back, never lost or counted."""
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        rng = random.Random(1234)
        producer = spawn("produce", db_path, 60, 0)
        acked: list[int] = []
        cancelled = 0
        with anyio.fail_after(60):
            while producer.proc.poll() is None or (await q.stats()).queued:
                job = None
                with anyio.move_on_after(rng.uniform(0.0, 0.03)) as scope:
                    job = await q.get(timeout=10)
                if scope.cancelled_caught:
                    cancelled += 1
                if job is not None:
                    await job.ack()
                    acked.append(job.id)
        produced = [int(x) for line in await producer.await_ok() for x in line.split()]
        while (job := await q.get_nowait()) is not None:
            await job.ack()
            acked.append(job.id)

        assert cancelled > 0
        assert sorted(acked) == sorted(produced)
        stats = await q.stats()
        assert (stats.queued, stats.running, stats.done) == (0, 0, 60)
        for info in await all_jobs(q):
            assert info.attempts == 1, info  # a handed-back lease is not an attempt
            outcomes = [a.outcome for a in info.history]
            assert outcomes[-1] == "acked"
            assert set(outcomes[:-1]) <= {"released"}


async def test_a_get_cancelled_after_its_claim_hands_the_lease_back_before_it_raises(
    db_path: Path, spawn: Spawn
) -> None:
    """DESIGN: a cancelled get hands the lease back *before* the CancelledError reaches the caller.

    So a process that dies right after the cancellation reached it leaves the job queued, its
    attempt not counted, and the job is at once available to others.
    """
    async with pq.Queue(db_path, name=QUEUE_NAME):
        pass
    child = spawn("cancel-get", db_path)
    lines = [await child.aline()]
    while lines[-1].startswith("got "):
        lines.append(await child.aline())
    kind, job_id = lines[-1].split()
    assert kind == "cancelled"
    child.proc.wait(timeout=EXIT_TIMEOUT)
    assert child.proc.returncode == -signal.SIGKILL
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        info = await q.job(int(job_id))
        assert info is not None
        assert (info.state, info.attempts) == (pq.JobState.QUEUED, 0), (
            f"job {job_id} is {info.state} with attempts={info.attempts} after its get was "
            f"cancelled; history {[(a.attempt, a.outcome) for a in info.history]}"
        )
        assert [a.outcome for a in info.history] == ["released"]
        job = await q.get(timeout=2)  # not after the 30 s lease
        assert (job.id, job.attempts) == (int(job_id), 1)
        await job.ack()
