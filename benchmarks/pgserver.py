"""The PostgreSQL server of a benchmark run: a private throwaway one, fresh databases, backend CPU.

- :func:`private_server` starts a server the way CI does (``.ci/start-postgres.sh``) but with its
  own state file, so a developer's test server (recorded in ``/tmp/persistq-pg.path``) is neither
  reused nor stopped; with ``durable=True`` it then turns ``fsync``, ``synchronous_commit`` and
  ``full_page_writes`` back on (CI's server runs without them to keep the tests fast; a
  benchmark of a job queue should pay for its commits). The server is stopped and its data
  directory deleted on the way out.
- :class:`Databases` creates a fresh database per measurement (names start with ``bench_``)
  and drops it afterwards.
- :class:`BackendCpu` reads the CPU time the server's backend processes for one database have
  used, from ``/proc/PID/schedstat`` (nanoseconds on CPU); it needs the server on this machine
  and a ``/proc`` we may read, and says so when it cannot.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
START_SCRIPT = ROOT / ".ci" / "start-postgres.sh"
#: The first port a private server tries (the shared and CI servers start at 54329).
PRIVATE_PORT = 55439


def git_commit() -> str:
    """The library code measured: the last commit that changed ``persistq_async/`` (and whether
    the checkout has uncommitted changes there)."""
    try:
        line = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", "--", "persistq_async"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "persistq_async"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return line + (" (+ uncommitted changes to persistq_async/)" if dirty else "")


def shown_argv(argv: list[str]) -> list[str]:
    """The command-line arguments as a report shows them: without ``--note`` and its text."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            out.append(arg)
    return out


def driver_dsn(url: str, database: str | None = None) -> str:
    """``url`` (a SQLAlchemy URL such as ``postgresql+asyncpg://...``) as a libpq URL that
    asyncpg and psycopg take, optionally pointing at another database."""
    u = make_url(url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


def sqlalchemy_url(url: str, database: str) -> str:
    """``url`` pointing at ``database``, with the asyncpg driver persistq_async uses."""
    u = make_url(url).set(drivername="postgresql+asyncpg", database=database)
    return u.render_as_string(hide_password=False)


@contextlib.contextmanager
def private_server(*, durable: bool) -> Iterator[str]:
    """Start a throwaway server with ``.ci/start-postgres.sh`` and yield its URL; stop it after."""
    state = Path(tempfile.mkdtemp(prefix="pqbench-pgstate-")) / "state"
    env = {**os.environ, "PERSISTQ_PG_STATE": str(state), "PERSISTQ_PG_PORT": str(PRIVATE_PORT)}
    try:
        url = subprocess.run(
            ["bash", str(START_SCRIPT), "start"],
            env=env,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout.strip()
        if durable:
            anyio.run(_make_durable, url)
        yield url
    finally:
        subprocess.run(["bash", str(START_SCRIPT), "stop"], env=env, check=False)
        with contextlib.suppress(OSError):
            state.parent.rmdir()


async def _make_durable(url: str) -> None:
    conn = await asyncpg.connect(driver_dsn(url, "postgres"))
    try:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            await conn.execute(f"ALTER SYSTEM SET {setting} = on")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def server_facts(url: str) -> dict[str, Any]:
    """The server's version and the settings that decide what a commit costs."""
    conn = await asyncpg.connect(driver_dsn(url, "postgres"))
    try:
        facts: dict[str, Any] = {}
        for setting in (
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "max_connections",
        ):
            facts[setting] = await conn.fetchval(f"SHOW {setting}")
        u = make_url(url)
        facts["host"] = f"{u.host}:{u.port}"
        return facts
    finally:
        await conn.close()


class Databases:
    """Creates and drops the run's fresh databases through one connection to ``postgres``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._admin: asyncpg.Connection | None = None

    async def __aenter__(self) -> Databases:
        self._admin = await asyncpg.connect(driver_dsn(self.url, "postgres"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._admin is not None:
            await self._admin.close()

    @property
    def admin(self) -> asyncpg.Connection:
        """The connection to the ``postgres`` database (not counted in any system's CPU)."""
        assert self._admin is not None, "use Databases in 'async with'"
        return self._admin

    async def create(self, tag: str) -> str:
        """A new empty database named ``bench_<tag>_<random>``; returns its name."""
        name = f"bench_{tag}_{uuid.uuid4().hex[:10]}".replace("-", "_")
        await self.admin.execute(f'CREATE DATABASE "{name}"')
        return name

    async def drop(self, name: str) -> None:
        """Drop ``name``, ending any connection a crashed worker left behind."""
        assert name.startswith("bench_")
        await self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _schedstat_ns(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class BackendCpu:
    """CPU seconds used by the server processes serving one database, between two snapshots.

    Every backend connected to the database at either snapshot is counted; one that connected
    in between counts from its start (its fork and authentication are part of the cost), one
    that ended in between is lost (none should: the pools stay open while measuring). The
    server's shared background processes (WAL writer, checkpointer) are not counted.
    """

    def __init__(self, admin: asyncpg.Connection, database: str) -> None:
        self.admin = admin
        self.database = database
        self._before: dict[int, int] = {}
        self.available = True

    async def _snapshot(self) -> dict[int, int]:
        pids = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.database,
        )
        out: dict[int, int] = {}
        for row in pids:
            ns = _schedstat_ns(row["pid"])
            if ns is None:
                self.available = False
            else:
                out[row["pid"]] = ns
        return out

    async def start(self) -> None:
        """Take the first snapshot."""
        self._before = await self._snapshot()

    async def seconds(self) -> float | None:
        """CPU seconds since :meth:`start`, or None when ``/proc`` could not be read."""
        after = await self._snapshot()
        if not self.available:
            return None
        return sum(ns - self._before.get(pid, 0) for pid, ns in after.items()) / 1e9
