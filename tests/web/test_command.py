"""``persistq dashboard`` in a subprocess: what it says when it starts, and what it refuses."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

import persistq_async as pq
from tests.acceptance._cli_support import run_cli
from tests.web.conftest import free_port, start_server

pytestmark = pytest.mark.timeout(90)


def test_a_missing_database_is_refused_in_one_line_and_not_created(tmp_path: Path) -> None:
    done = run_cli("dashboard", "--url", "typo.db", "--port", str(free_port()), cwd=tmp_path)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "typo.db" in done.stderr
    assert not (tmp_path / "typo.db").exists()


def test_a_bad_port_or_token_is_a_usage_error(tmp_path: Path) -> None:
    for args in (["--port", "70000"], ["--port", "http"], ["--token", "  "]):
        done = run_cli("dashboard", "--url", "jobs.db", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done)
        assert "Traceback" not in done.stderr


async def test_without_a_token_it_starts_read_only_and_says_so(tmp_path: Path) -> None:
    async with pq.Queue(tmp_path / "jobs.db", name="mail") as q:
        job_id = await q.put({"to": "a@example.org"})
    port = free_port()
    server = start_server(
        [
            sys.executable,
            "-m",
            "persistq_async",
            "dashboard",
            "--url",
            "jobs.db",
            "--port",
            str(port),
        ],
        f"http://127.0.0.1:{port}",
        str(tmp_path / "jobs.db"),
        tmp_path,
    )
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            info = (await client.get("/api/info")).json()
            refused = await client.post(
                f"/api/jobs/{job_id}/cancel",
                headers={"Content-Type": "application/json", "X-PersistQ-Token": "anything"},
            )
            # only loopback names are answered (DNS rebinding)
            rebound = await client.get("/api/info", headers={"Host": "attacker.example"})
    finally:
        output = server.stop()
    assert info["writable"] is False
    assert refused.status_code == 403
    assert rebound.status_code == 400
    assert f"persistq dashboard on http://127.0.0.1:{port}/" in output
    assert "read-only: no token configured" in output
    assert "Traceback" not in output
