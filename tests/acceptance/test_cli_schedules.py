"""`persistq schedules` in a subprocess: every schedule with its spec and next run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import persistq_async as pq
from tests.acceptance._cli_support import run_cli
from tests.conftest import private_pg_database

pytestmark = pytest.mark.timeout(60)


async def declare(url: str) -> None:
    async with pq.Queue(url, name="emails") as q:
        await q.schedule("digest", cron="0 8 * * MON-FRI", timezone="Europe/Paris")
        await q.schedule("heartbeat", every=30)
        await q.pause_schedule("heartbeat")
    async with pq.Queue(url, name="reports") as q:
        await q.schedule("nightly", cron="30 2 * * *")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An SQLite file, or a PostgreSQL database of its own (the listing shows every queue)."""
    if request.param == "sqlite":
        yield str(tmp_path / "jobs.db")
    else:
        with private_pg_database("persistq_cli_schedules") as pg:
            yield pg


def test_persistq_schedules_lists_name_queue_spec_and_next_run(tmp_path: Path, url: str) -> None:
    anyio.run(declare, url)
    done = run_cli("schedules", "--url", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["name", "queue", "spec", "next", "run"]
    rows = [line.split(None, 2) for line in lines[1:]]
    assert [r[:2] for r in rows] == [
        ["digest", "emails"],
        ["heartbeat", "emails"],
        ["nightly", "reports"],
    ]
    assert "cron '0 8 * * MON-FRI' Europe/Paris" in rows[0][2]
    assert rows[1][2].split() == ["every", "30s", "paused"]
    assert rows[2][2].startswith("cron '30 2 * * *' UTC")
    assert rows[2][2].endswith("02:30:00+00:00")

    done = run_cli("schedules", "--url", url, "--queue", "reports", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (only,) = json.loads(done.stdout)
    assert (only["name"], only["queue"], only["paused"]) == ("nightly", "reports", False)
    assert only["next_run_at"].endswith("T02:30:00+00:00")


def test_persistq_schedules_on_a_database_without_any(tmp_path: Path) -> None:
    # Nothing found is exit 1, like every listing (README: the persistq command).
    anyio.run(open_and_close, str(tmp_path / "empty.db"))
    done = run_cli("schedules", "--url", str(tmp_path / "empty.db"), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip() == "no schedules"


def test_persistq_schedules_creates_no_database(tmp_path: Path) -> None:
    done = run_cli("schedules", "--url", str(tmp_path / "typo.db"), cwd=tmp_path)
    assert done.returncode == 1
    assert "no database at" in done.stderr
    assert not (tmp_path / "typo.db").exists()


async def open_and_close(url: str) -> None:
    async with pq.Queue(url, name="emails"):
        pass
