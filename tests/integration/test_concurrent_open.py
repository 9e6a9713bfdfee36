"""Several processes opening a brand-new database at once create the schema exactly once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import make_url

import persistq_async as pq
from persistq_async.testing import read_connection
from tests.conftest import pg_admin

pytestmark = pytest.mark.timeout(90)

OPEN_AND_PUT = textwrap.dedent(
    """
    import sys, anyio, persistq_async as pq

    async def main() -> None:
        async with pq.Queue(sys.argv[1], name="race") as q:
            await q.put({"pid": sys.argv[2]})

    anyio.run(main)
    """
)


def _open_at_once(url: str, count: int) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_PUT, url, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(count)
    ]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()


async def _check(url: str, count: int) -> None:
    async with pq.Queue(url, name="race") as q:
        assert (await q.stats()).queued == count
        async with read_connection(q) as conn:
            rows = (await conn.exec_driver_sql("SELECT key FROM persistq_meta")).all()
        assert sorted(r[0] for r in rows) == ["application", "schema_version"]


async def test_sqlite_processes_create_the_schema_once(tmp_path: Path) -> None:
    url = str(tmp_path / "fresh.db")
    await anyio.to_thread.run_sync(_open_at_once, url, 6)
    await _check(url, 6)


@pytest.mark.postgres
async def test_postgres_processes_create_the_schema_once(pg_url: str) -> None:
    name = f"persistq_race_{uuid.uuid4().hex[:10]}"
    await pg_admin(pg_url, f'CREATE DATABASE "{name}"')
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        await anyio.to_thread.run_sync(_open_at_once, url, 6)
        await _check(url, 6)
    finally:
        await pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
