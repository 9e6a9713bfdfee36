"""`persistq pause|resume --queue NAME` in a subprocess, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import persistq_async as pq
from tests.acceptance._cli_support import run_cli

pytestmark = pytest.mark.timeout(60)


async def test_pause_and_resume_from_the_command_line(
    backend_url: str, queue_name: str, tmp_path: Path
) -> None:
    async with pq.Queue(backend_url, name=queue_name) as q:
        await q.put("x")
        done = run_cli("pause", "--url", backend_url, "--queue", queue_name, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"queue {queue_name!r} paused"
        assert (await q.stats()).paused is True
        assert await q.get_nowait() is None
        done = run_cli("resume", "--url", backend_url, "--queue", queue_name, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert (await q.stats()).paused is False
        job = await q.get(timeout=5)
        await job.ack()


def test_pause_needs_a_queue(tmp_path: Path) -> None:
    done = run_cli("pause", "--url", str(tmp_path / "jobs.db"), cwd=tmp_path)
    assert done.returncode == 2
    assert "--queue" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_flow_option_in_the_environment_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "persistq_async", "pause", "--queue", "q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
        env={"PERSISTQ_MAX_RUNNING": "lots", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "persistq: error: option 'max_running' from environment variable PERSISTQ_MAX_RUNNING: "
        "expected an integer, got 'lots'"
    ]
