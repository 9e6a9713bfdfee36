"""One evaluator per database across processes: three ``persistq worker`` processes with the
same ``[alerts]`` configuration, a rule that holds: exactly one ``alert_firing``; the evaluating
process killed with SIGKILL: another takes over without firing again, and resolves it once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from tests.conftest import open_queue, private_pg_database

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

CONFIG = textwrap.dedent(
    """
    poll_interval = 0.05

    [alerts]
    interval = 0.2
    lease_seconds = 1.5

    [alerts.rules.emails-lag]
    kind = "queue_lag"
    queue = "emails"
    above = 0.5
    """
)

HANDLER = "async def handler(job):\n    return None\n"


class Worker:
    """A worker process whose stderr (JSON log lines) is collected by a task."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.objects: list[dict[str, Any]] = []

    async def collect(self) -> None:
        assert self.process.stderr is not None
        buffer = ""
        async for chunk in TextReceiveStream(self.process.stderr):
            buffer += chunk
            while "\n" in buffer:
                line, buffer = buffer.split("\n", 1)
                if line.strip():
                    self.objects.append(json.loads(line))

    def actions(self, action: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("action") == action]


def total(workers: list[Worker], action: str) -> int:
    return sum(len(w.actions(action)) for w in workers)


async def wait_for(workers: list[Worker], action: str, n: int, within: float = 20) -> None:
    with anyio.fail_after(within):
        while total(workers, action) < n:  # noqa: ASYNC110 - several processes' logs
            await anyio.sleep(0.05)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "jobs.db")
    else:
        with private_pg_database("persistq_alertprocs") as pg:
            yield pg


async def test_three_workers_fire_once_and_a_takeover_does_not_fire_again(
    tmp_path: Path, url: str
) -> None:
    await _run(tmp_path, url)


async def _run(tmp_path: Path, url: str) -> None:
    (tmp_path / "persistq.toml").write_text(CONFIG)
    (tmp_path / "noop_mod.py").write_text(HANDLER)
    command = [
        sys.executable,
        "-m",
        "persistq_async",
        "worker",
        "noop_mod:handler",
        "--queue",
        "other",
        "--url",
        url,
        "--log-format",
        "json",
        "--grace",
        "1",
    ]
    async with open_queue(url, "emails") as emails, anyio.create_task_group() as tg:
        await emails.put({"to": "nobody consumes this queue yet"})
        workers: list[Worker] = []
        try:
            for _ in range(3):
                process = await anyio.open_process(
                    command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                worker = Worker(process)
                workers.append(worker)
                tg.start_soon(worker.collect)
            await wait_for(workers, "worker_started", 3)
            await wait_for(workers, "alert_firing", 1)
            await anyio.sleep(2.0)  # ten more evaluation intervals
            assert total(workers, "alert_firing") == 1
            assert total(workers, "alert_resolved") == 0
            (leader,) = [w for w in workers if w.actions("alert_lease_taken")]
            assert leader.actions("alert_firing")
            firing = leader.actions("alert_firing")[0]
            assert (firing["level"], firing["rule"], firing["queue"]) == (
                "WARNING",
                "emails-lag",
                "emails",
            )

            leader.process.kill()  # SIGKILL: its lease is left to expire
            await leader.process.wait()
            await wait_for(workers, "alert_lease_taken", 2)
            (successor,) = [
                w for w in workers if w is not leader and w.actions("alert_lease_taken")
            ]
            await anyio.sleep(1.0)
            assert total(workers, "alert_firing") == 1  # saved as firing: not fired again

            job = await emails.get(timeout=10)
            await job.ack()
            await wait_for(workers, "alert_resolved", 1)
            await anyio.sleep(1.0)
            assert total(workers, "alert_resolved") == 1
            assert successor.actions("alert_resolved")
        finally:
            for worker in workers:
                if worker.process.returncode is None:
                    worker.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                for worker in workers:
                    await worker.process.wait()
        assert [w.process.returncode for w in workers if w is not leader] == [0, 0]
