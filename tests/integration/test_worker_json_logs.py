"""`persistq worker --log-format json`: the real command in a subprocess, JSON lines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

import persistq_async as pq
from tests.conftest import open_queue

pytestmark = pytest.mark.timeout(60)

HANDLER = textwrap.dedent(
    """
    async def handler(job):
        if job.payload.get("fail"):
            raise ValueError("mailbox does not exist")
        return {"sent": job.id}
    """
)


class JSONLines:
    """The worker's stderr, parsed line by line; every line must be one JSON object."""

    def __init__(self, stream: Any) -> None:
        self._text = TextReceiveStream(stream)
        self._buffer = ""
        self.objects: list[dict[str, Any]] = []

    def _take_lines(self) -> None:
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if line.strip():
                obj = json.loads(line)  # a line that is not JSON fails the test here
                assert isinstance(obj, dict), line
                self.objects.append(obj)

    async def expect(self, action: str, within: float = 20) -> dict[str, Any]:
        with anyio.fail_after(within):
            while True:
                self._take_lines()
                for obj in self.objects:
                    if obj.get("action") == action:
                        return obj
                self._buffer += await self._text.receive()

    async def finish(self, within: float) -> None:
        with anyio.fail_after(within):
            async for chunk in self._text:
                self._buffer += chunk
        self._buffer += "\n"
        self._take_lines()


@pytest.mark.parametrize("where", ["after", "before"])
async def test_worker_logs_one_json_object_per_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "json_mod.py").write_text(HANDLER)
    db = tmp_path / "jobs.db"
    command = [sys.executable, "-m", "persistq_async"]
    worker = ["worker", "json_mod:handler", "--queue", "emails", "--url", str(db)]
    if where == "after":  # persistq worker ... --log-format json, as the issue writes it
        command += [*worker, "--log-format", "json"]
    else:
        command += ["--log-format", "json", *worker]
    async with open_queue(db, "emails") as q:
        ok = await q.put({"to": "a@example.org"})
        bad = await q.put({"fail": True}, max_attempts=1)
        process = await anyio.open_process(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        async with process:
            lines = JSONLines(process.stderr)
            try:
                started = await lines.expect("worker_started")
                await q.join(timeout=20)
                await lines.expect("job_dead")
                process.send_signal(signal.SIGTERM)
                await lines.finish(within=15)
                code = await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
        assert (await q.job(ok)).state == pq.JobState.DONE  # type: ignore[union-attr]

    assert code == 0
    assert started["queue"] == "emails"
    assert started["level"] == "INFO"
    assert started["logger"] == "persistq_async.cli"
    assert "worker started" in started["message"]
    for obj in lines.objects:
        assert {"time", "level", "logger", "message"} <= obj.keys()
        assert obj["time"].endswith("+00:00")
    by_action = {obj.get("action"): obj for obj in lines.objects}
    acked = by_action["job_acked"]
    assert (acked["job_id"], acked["queue"], acked["pool"], acked["attempts"]) == (
        ok,
        "emails",
        "emails",
        1,
    )
    nacked = by_action["job_nacked"]
    assert nacked["job_id"] == bad
    assert nacked["error"] == "ValueError: mailbox does not exist"
    assert {"pool_started", "worker_stopping", "pool_stopped", "worker_stopped"} <= by_action.keys()
    actions = {obj["action"] for obj in lines.objects if "action" in obj}
    assert actions <= pq.monitoring.ACTIONS  # every action the worker logged is documented


def test_log_format_rejects_an_unknown_format(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "persistq_async", "worker", "m:h", "--log-format", "yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "--log-format" in done.stderr
    assert "Traceback" not in done.stderr
