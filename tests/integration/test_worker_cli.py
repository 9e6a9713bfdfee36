"""The worker command in a subprocess: jobs run, one INFO line per outcome, signals, bad input."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

import persistq_async as pq
from tests.conftest import open_queue

from ._support import info

pytestmark = pytest.mark.timeout(60)

QUEUE = "emails"

HANDLER_MODULE = textwrap.dedent(
    """
    import anyio
    import persistq_async as pq


    async def handler(job):
        payload = job.payload
        print(f"started {job.id}", flush=True)
        if payload.get("fail"):
            raise ValueError("mailbox does not exist")
        if payload.get("reject"):
            raise pq.Reject("bad address")
        if payload.get("sleep"):
            await anyio.sleep(payload["sleep"])
        return {"sent": job.id}


    def sync_handler(job):
        return None


    async def gc_handler(job):
        import gc

        return {"frozen": gc.get_freeze_count()}
    """
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "jobs_mod.py").write_text(HANDLER_MODULE)
    return tmp_path


def worker_command(db: Path, *extra: str, handler: str = "jobs_mod:handler") -> list[str]:
    return [
        sys.executable,
        "-m",
        "persistq_async",
        "worker",
        handler,
        "--queue",
        QUEUE,
        "--url",
        str(db),
        *extra,
    ]


class Worker:
    """A worker process whose merged stdout and stderr is read line by line, each wait bounded."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._text = TextReceiveStream(process.stdout)
        self._buffer = ""
        self.lines: list[str] = []

    async def expect(self, fragment: str, within: float = 20) -> str:
        """The first line (after those already read) containing ``fragment``."""
        with anyio.fail_after(within):
            while True:
                while "\n" in self._buffer:
                    line, self._buffer = self._buffer.split("\n", 1)
                    self.lines.append(line)
                    if fragment in line:
                        return line
                try:
                    self._buffer += await self._text.receive()
                except anyio.EndOfStream:
                    raise AssertionError(
                        f"the worker exited before printing {fragment!r}:\n" + "\n".join(self.lines)
                    ) from None

    async def finish(self, within: float) -> int:
        """Read the rest of the output and wait for the exit status."""
        with anyio.fail_after(within):
            async for chunk in self._text:
                self._buffer += chunk
            self.lines.extend(line for line in self._buffer.split("\n") if line)
            self._buffer = ""
            return await self.process.wait()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


async def start_worker(
    workdir: Path, *extra: str, handler: str = "jobs_mod:handler"
) -> tuple[Worker, Process]:
    process = await anyio.open_process(
        worker_command(workdir / "jobs.db", *extra, handler=handler),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return Worker(process), process


async def test_worker_runs_jobs_logs_each_outcome_and_stops_on_sigterm(workdir: Path) -> None:
    async with open_queue(workdir / "jobs.db", QUEUE) as q:
        ok_ids = await q.put_many([{"to": f"user{i}@example.org"} for i in range(6)])
        failing = await q.put({"fail": True}, max_attempts=1)
        rejected = await q.put({"reject": True})
        worker, process = await start_worker(workdir, "--concurrency", "4", "--job-timeout", "5")
        async with process:
            try:
                await worker.expect("worker started")
                await q.join(timeout=20)
                process.send_signal(signal.SIGTERM)
                code = await worker.finish(within=15)
            finally:
                if process.returncode is None:
                    process.kill()
        assert code == 0, worker.output
        for job_id in ok_ids:
            found = await info(q, job_id)
            assert (found.state, found.result) == (pq.JobState.DONE, {"sent": job_id})
        assert (await info(q, failing)).state == pq.JobState.DEAD
        assert (await info(q, rejected)).state == pq.JobState.DEAD

    output = worker.output
    for job_id in ok_ids:
        assert f" INFO persistq_async.pool: job {job_id} done in " in output, output
    assert f" INFO persistq_async.pool: job {failing} failed in " in output
    assert "ValueError: mailbox does not exist" in output
    assert f" INFO persistq_async.pool: job {rejected} rejected" in output
    assert "stopping gracefully" in output
    assert "worker stopped" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        ("no_such_module_xyz:handler", "cannot import module 'no_such_module_xyz'"),
        ("jobs_mod:missing", "module 'jobs_mod' has no attribute 'missing'"),
        ("jobs_mod", "expected 'module.path:function'"),
        ("jobs_mod:sync_handler", "not a coroutine function"),
    ],
    ids=["module", "attribute", "malformed", "not-async"],
)
def test_a_bad_handler_path_exits_non_zero_with_a_clear_message(
    workdir: Path, handler: str, message: str
) -> None:
    done = subprocess.run(
        worker_command(workdir / "jobs.db", handler=handler),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert done.returncode == 2
    assert "persistq: error: handler:" in done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (workdir / "jobs.db").exists()  # refused before the database was opened


async def test_sigterm_with_a_short_grace_hands_the_running_job_back(workdir: Path) -> None:
    async with open_queue(workdir / "jobs.db", QUEUE) as q:
        job_id = await q.put({"sleep": 60})
        worker, process = await start_worker(workdir, "--concurrency", "2", "--grace", "0.5")
        async with process:
            try:
                await worker.expect(f"started {job_id}")
                process.send_signal(signal.SIGTERM)
                begun = anyio.current_time()
                code = await worker.finish(within=15)
            finally:
                if process.returncode is None:
                    process.kill()
        assert code == 0, worker.output
        assert anyio.current_time() - begun < 10
        found = await info(q, job_id)
    assert found.state == pq.JobState.QUEUED
    assert found.attempts == 0
    assert [a.outcome for a in found.history] == ["released"]
    assert f"job {job_id} released at shutdown" in worker.output


async def test_a_second_sigterm_stops_at_once(workdir: Path) -> None:
    async with open_queue(workdir / "jobs.db", QUEUE) as q:
        job_id = await q.put({"sleep": 60})
        worker, process = await start_worker(workdir, "--grace", "30")
        async with process:
            try:
                await worker.expect(f"started {job_id}")
                process.send_signal(signal.SIGTERM)
                await worker.expect("stopping gracefully")
                process.send_signal(signal.SIGTERM)
                begun = anyio.current_time()
                code = await worker.finish(within=10)  # far less than the 30 s grace
            finally:
                if process.returncode is None:
                    process.kill()
        assert code == 0, worker.output
        assert anyio.current_time() - begun < 5
        found = await info(q, job_id)
    assert found.state == pq.JobState.QUEUED
    assert found.attempts == 0
    assert [a.outcome for a in found.history] == ["released"]
    assert "stopping at once" in worker.output


@pytest.mark.parametrize(("extra", "frozen"), [((), True), (("--no-gc-freeze",), False)])
async def test_the_worker_freezes_its_start_up_heap_unless_told_not_to(
    workdir: Path, extra: tuple[str, ...], frozen: bool
) -> None:
    async with open_queue(workdir / "jobs.db", QUEUE) as q:
        job_id = await q.put({})
        worker, process = await start_worker(workdir, *extra, handler="jobs_mod:gc_handler")
        async with process:
            try:
                await q.join(timeout=20)
                process.send_signal(signal.SIGTERM)
                code = await worker.finish(within=15)
            finally:
                if process.returncode is None:
                    process.kill()
        assert code == 0, worker.output
        result = (await info(q, job_id)).result
    assert (result["frozen"] > 1000) is frozen, result
