"""The README's dashboard section, run as a user would: the mounting example under uvicorn."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

import persistq_async as pq
from tests.acceptance.test_readme import README, example
from tests.web.conftest import TOKEN, free_port, start_server

pytestmark = pytest.mark.timeout(90)


def test_the_readme_shows_the_commands_the_done_when_test_runs() -> None:
    section = README.read_text(encoding="utf-8").split("## The dashboard", 1)[1]
    assert "persistq demo --db demo.db" in section
    assert "persistq dashboard --url demo.db --token" in section
    assert "(docs/dashboard.png)" in section
    assert (README.parent / "docs" / "dashboard.png").stat().st_size > 10_000


async def test_the_mounting_example_serves_the_dashboard_under_its_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "app.py").write_text(example("## The dashboard"), encoding="utf-8")
    async with pq.Queue(tmp_path / "jobs.db", name="emails") as q:
        job_id = await q.put({"to": "a@example.org"})
    monkeypatch.setenv("PERSISTQ_DASHBOARD_TOKEN", TOKEN)
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--app-dir", "."]
    server = start_server(argv, f"http://127.0.0.1:{port}/queues", "jobs.db", tmp_path)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            overview = (await client.get("/api/overview")).json()
            page = await client.get("/")
            cancel = await client.post(
                f"/api/jobs/{job_id}/cancel",
                headers={"Content-Type": "application/json", "X-PersistQ-Token": TOKEN},
            )
    finally:
        output = server.stop()
    assert [q["name"] for q in overview["queues"]] == ["emails"]
    assert 'src="/queues/static/dashboard.js"' in page.text
    assert cancel.json() == {"touched": 1}
    assert "Traceback" not in output, output
