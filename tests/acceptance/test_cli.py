"""The ``persistq`` command in a subprocess, piped (plain text and JSON), on each backend where
it touches the database: exit codes, no tracebacks, no database created by a look, every queue
by default, ids without --queue, bulk requeue and purge, config and health."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

import persistq_async as pq
from tests.conftest import private_pg_database

from ._cli_support import run_cli, seed, states

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for this test alone (the listings cover every queue)."""
    if request.param == "sqlite":
        yield str(tmp_path / "jobs.db")
        return
    with private_pg_database("persistq_cli") as pg:
        yield pg


# ---------------------------------------------------------------------- no database created

LOOKS = [
    ["stats"],
    ["stats", "--queue", "mail"],
    ["queues"],
    ["jobs", "--state", "dead"],
    ["show", "1"],
    ["requeue", "1"],
    ["requeue", "--state", "dead"],
    ["cancel", "1"],
    ["delete", "1"],
    ["purge", "done", "--older-than", "7d"],
    ["health"],
    ["watch", "--once"],
]


@pytest.mark.parametrize("command", LOOKS, ids=lambda c: " ".join(c))
def test_a_mistyped_sqlite_path_is_no_database_and_stays_so(
    tmp_path: Path, command: list[str]
) -> None:
    done = run_cli(*command, "--url", "typo.db", cwd=tmp_path)
    assert done.returncode == 1, done
    assert f"no database at {tmp_path / 'typo.db'}" in done.stderr + done.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_configured_default_file_is_not_created_either(tmp_path: Path) -> None:
    done = run_cli("stats", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == f"persistq: error: no database at {tmp_path / 'persistq.db'}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
def test_a_postgres_database_without_our_tables_is_no_database(tmp_path: Path) -> None:
    with private_pg_database("persistq_cli_empty") as pg:
        for command in (["stats"], ["jobs"], ["purge", "dead"]):
            done = run_cli(*command, "--url", pg, cwd=tmp_path)
            assert done.returncode == 1, done
            assert "no persistq database at" in done.stderr

        async def still_empty() -> None:
            with pytest.raises(pq.DatabaseNotFound):
                async with pq.Queue(pg, create=False):
                    pass

        anyio.run(still_empty)


# ---------------------------------------------------------------------- every queue, ids


def test_listings_cover_every_queue(url: str, tmp_path: Path) -> None:
    seeded = seed(url)
    dead = run_cli("jobs", "--state", "dead", "--url", url, cwd=tmp_path)
    assert dead.returncode == 0, dead.stderr
    lines = dead.stdout.splitlines()
    assert lines[0].split() == [
        "id",
        "queue",
        "state",
        "priority",
        "attempts",
        "created",
        "payload",
        "error",
    ]
    assert [line.split()[:3] for line in lines[1:]] == [
        [str(i), "mail", "dead"] for i in seeded.dead
    ]
    assert "SMTPError: mailbox unavailable" in lines[1]
    assert "\x1b[" not in dead.stdout  # piped: no colour
    assert "│" not in dead.stdout

    as_json = json.loads(run_cli("jobs", "--json", "--url", url, cwd=tmp_path).stdout)
    assert [(j["id"], j["queue"], j["state"]) for j in as_json] == sorted(
        [(i, "mail", "dead") for i in seeded.dead]
        + [(i, "mail", "queued") for i in seeded.queued]
        + [(i, "default", "done") for i in seeded.done]
        + [(i, "reports", "queued") for i in seeded.delayed]
    )
    page = json.loads(
        run_cli(
            "jobs",
            "--json",
            "--limit",
            "2",
            "--after",
            str(seeded.dead[0]),
            "--url",
            url,
            cwd=tmp_path,
        ).stdout
    )
    assert [j["id"] for j in page] == [seeded.dead[1], seeded.queued[0]]

    stats = json.loads(run_cli("stats", "--json", "--url", url, cwd=tmp_path).stdout)
    assert [(s["queue"], s["queued"], s["dead"], s["done"], s["total"]) for s in stats] == [
        ("default", 0, 0, 1, 1),
        ("mail", 1, 2, 0, 3),
        ("reports", 1, 0, 0, 1),
    ]
    one = json.loads(
        run_cli("stats", "--json", "--queue", "mail", "--url", url, cwd=tmp_path).stdout
    )
    assert [s["queue"] for s in one] == ["mail"]
    plain = run_cli("stats", "--url", url, cwd=tmp_path).stdout.splitlines()
    assert plain[0].split()[:7] == [
        "queue",
        "queued",
        "running",
        "done",
        "dead",
        "cancelled",
        "total",
    ]
    assert plain[2].split()[:7] == ["mail", "1", "0", "0", "2", "0", "3"]

    queues = run_cli("queues", "--json", "--url", url, cwd=tmp_path)
    assert [q["queue"] for q in json.loads(queues.stdout)] == ["default", "mail", "reports"]
    assert run_cli("queues", "--url", url, cwd=tmp_path).stdout.splitlines()[0].split() == [
        "queue",
        "ready",
        "scheduled",
        "running",
        "dead",
        "total",
        "lag",
        "throughput",
        "paused",
    ]
    watch = run_cli("watch", "--once", "--url", url, cwd=tmp_path)
    assert watch.returncode == 0
    assert re.search(r"^mail\s+1\s+0\s+0\s+2\s+3\s", watch.stdout, re.MULTILINE), watch.stdout
    assert re.search(r"^reports\s+0\s+1\s+0\s+0\s+1\s", watch.stdout, re.MULTILINE)


def test_a_job_id_needs_no_queue(url: str, tmp_path: Path) -> None:
    seeded = seed(url)
    job = str(seeded.dead[1])
    shown = run_cli("show", job, "--url", url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^queue\s+mail$", shown.stdout, re.MULTILINE)
    assert re.search(r"^state\s+dead$", shown.stdout, re.MULTILINE)
    assert '{"to": "<script>"}' in shown.stdout
    assert re.search(
        r"^\s*1\s.*nacked\s+SMTPError: mailbox unavailable", shown.stdout, re.MULTILINE
    )
    detail = json.loads(run_cli("show", job, "--json", "--url", url, cwd=tmp_path).stdout)
    assert (detail["queue"], detail["state"], detail["payload"]) == (
        "mail",
        "dead",
        {"to": "<script>"},
    )
    assert [a["outcome"] for a in detail["history"]] == ["nacked"]

    elsewhere = run_cli("show", job, "--queue", "reports", "--url", url, cwd=tmp_path)
    assert elsewhere.returncode == 1
    assert elsewhere.stderr.strip() == f"persistq: error: no job {job} in queue 'reports'"

    requeued = run_cli("requeue", job, "--url", url, cwd=tmp_path)
    assert (requeued.returncode, requeued.stdout.strip()) == (0, f"job {job} (queue mail) requeued")
    assert states(url, "mail")[int(job)] == "queued"
    again = run_cli("requeue", job, "--url", url, cwd=tmp_path)
    assert again.returncode == 1  # refused: it is queued
    assert "only done, dead or cancelled jobs can be requeued" in again.stderr

    cancelled = run_cli("cancel", job, "--json", "--url", url, cwd=tmp_path)
    assert cancelled.returncode == 0
    assert json.loads(cancelled.stdout) == {"id": int(job), "queue": "mail", "cancelled": True}
    refused = run_cli("cancel", job, "--url", url, cwd=tmp_path)
    assert refused.returncode == 1
    assert "had already finished; not cancelled" in refused.stderr

    deleted = run_cli("delete", job, "--url", url, cwd=tmp_path)
    assert (deleted.returncode, deleted.stdout.strip()) == (0, f"job {job} (queue mail) deleted")
    gone = run_cli("show", job, "--url", url, cwd=tmp_path)
    assert (gone.returncode, gone.stderr.strip()) == (1, f"persistq: error: no job {job}")


# ---------------------------------------------------------------------- exit codes


USAGE_ERRORS = [
    ([], "the following arguments are required"),
    (["stats", "--bogus"], "unrecognized arguments: --bogus"),
    (["jobs", "--limit", "many"], "invalid int value"),
    (["jobs", "--limit", "0"], "limit"),
    (["jobs", "--offset", "5"], "--offset: only with --queue"),
    (["jobs", "--after", "1", "--before", "3"], "--after and --before"),
    (["jobs", "--state", "lost"], "invalid choice"),
    (["purge", "done", "--older-than", "7x"], "invalid duration '7x'"),
    (["put", "{not json", "--queue", "mail"], "payload: not valid JSON"),
    (["put", "1", "--delay", "soon"], "invalid duration 'soon'"),
    (["requeue"], "give a job id, or --state"),
    (["requeue", "3", "--state", "dead"], "give a job id, or --state"),
    (["requeue", "--state", "queued"], "invalid choice"),
    (["worker", "mod:fn", "--grace", "7x"], "invalid duration '7x'"),
]


@pytest.mark.parametrize(
    ("command", "message"), USAGE_ERRORS, ids=lambda c: " ".join(c) if isinstance(c, list) else ""
)
def test_usage_errors_exit_2_with_a_message(
    tmp_path: Path, command: list[str], message: str
) -> None:
    seed(str(tmp_path / "jobs.db"))
    done = run_cli(*command, *(["--url", "jobs.db"] if command else []), cwd=tmp_path)
    assert done.returncode == 2, done
    assert message in done.stderr


def test_usage_errors_are_found_before_the_database_is_opened(tmp_path: Path) -> None:
    for command in (["requeue"], ["jobs", "--offset", "3"], ["purge", "done", "--older-than", "x"]):
        done = run_cli(*command, "--url", "missing.db", cwd=tmp_path)
        assert done.returncode == 2, done
        assert "no database" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_configuration_errors_exit_2(tmp_path: Path) -> None:
    seed(str(tmp_path / "jobs.db"))
    env = run_cli("stats", "--url", "jobs.db", cwd=tmp_path, env={"PERSISTQ_LEASE_SECONDS": "soon"})
    assert env.returncode == 2
    assert "PERSISTQ_LEASE_SECONDS" in env.stderr
    assert env.stderr.count("\n") == 1  # one line
    scheme = run_cli("stats", "--url", "mysql://db/x", cwd=tmp_path)
    assert scheme.returncode == 2
    assert "unsupported database 'mysql'" in scheme.stderr
    unreachable = run_cli(
        "stats", "--url", "postgresql+asyncpg://postgres@127.0.0.1:1/x", cwd=tmp_path
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.count("\n") == 1, unreachable.stderr
    assert unreachable.stderr.startswith("persistq: error: ")
    (tmp_path / "persistq.toml").write_text('durability = "fast"\n')
    toml = run_cli("config", cwd=tmp_path)
    assert toml.returncode == 2
    assert "persistq.toml" in toml.stderr


def test_nothing_found_and_refusals_exit_1(tmp_path: Path) -> None:
    seed(str(tmp_path / "jobs.db"))
    for command, message in [
        (["show", "999"], "no job 999"),
        (["cancel", "999"], "no job 999"),
        (["jobs", "--state", "cancelled"], "no cancelled jobs in any queue"),
        (["jobs", "--queue", "nobody"], "no jobs in queue 'nobody'"),
    ]:
        done = run_cli(*command, "--url", "jobs.db", cwd=tmp_path)
        assert done.returncode == 1, done
        assert message in done.stderr
    empty_json = run_cli("jobs", "--state", "cancelled", "--json", "--url", "jobs.db", cwd=tmp_path)
    assert (empty_json.returncode, json.loads(empty_json.stdout)) == (1, [])
    foreign = tmp_path / "other.db"
    import sqlite3

    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE accounts (id INTEGER)")
    conn.commit()
    conn.close()
    refused = run_cli("stats", "--url", str(foreign), cwd=tmp_path)
    assert refused.returncode == 1
    assert "refusing" in refused.stderr


# ---------------------------------------------------------------------- bulk


def _dead_jobs(url: str, queue: str, count: int, *, clock: list[float] | None = None) -> None:
    async def run() -> None:
        now = clock or [0.0]
        options = {"clock": (lambda: now[0])} if clock else {}
        async with pq.Queue(url, name=queue, max_attempts=1, **options) as q:
            await q.put_many(range(count))
            jobs, _ = await q.claim(count)
            for job in jobs:
                await job.fail(error="boom")

    anyio.run(run)


def test_bulk_requeue_by_state_and_queue(url: str, tmp_path: Path) -> None:
    _dead_jobs(url, "emails", 1203)
    _dead_jobs(url, "other", 2)
    done = run_cli(
        "requeue", "--state", "dead", "--queue", "emails", "--json", "--url", url, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "requeued": 1203,
        "state": "dead",
        "queues": {"emails": 1203},
    }
    assert set(states(url, "emails").values()) == {"queued"}
    assert set(states(url, "other").values()) == {"dead"}
    every = run_cli("requeue", "--state", "dead", "--url", url, cwd=tmp_path)
    assert every.stdout.strip() == "2 dead jobs requeued (emails: 0, other: 2)"


def test_purge_older_than_a_duration_on_every_queue(url: str, tmp_path: Path) -> None:
    import time

    old = [time.time() - 8 * 86400]
    _dead_jobs(url, "a", 3, clock=old)
    _dead_jobs(url, "b", 2, clock=old)
    _dead_jobs(url, "b", 1)  # dead now
    done = run_cli("purge", "dead", "--older-than", "7d", "--json", "--url", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "deleted": 5,
        "state": "dead",
        "older_than": 604800.0,
        "queues": {"a": 3, "b": 2},
    }
    assert list(states(url, "b").values()) == ["dead"]
    plain = run_cli("purge", "dead", "--older-than", "1h30m", "--url", url, cwd=tmp_path)
    assert plain.stdout.strip() == "0 dead jobs older than 1h30m deleted (queue b)"
    now = run_cli("purge", "dead", "--queue", "b", "--url", url, cwd=tmp_path)
    assert now.stdout.strip() == "1 dead jobs deleted (queue b)"


# ---------------------------------------------------------------------- put, config, health


def test_put_creates_the_database_and_takes_a_duration(url: str, tmp_path: Path) -> None:
    done = run_cli(
        "put",
        '{"to": "a"}',
        "--queue",
        "mail",
        "--delay",
        "15m",
        "--json",
        "--url",
        url,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["queue"] == "mail"
    shown = json.loads(
        run_cli("show", str(created["id"]), "--json", "--url", url, cwd=tmp_path).stdout
    )
    from datetime import datetime

    ahead = (
        datetime.fromisoformat(shown["run_at"]) - datetime.fromisoformat(shown["created_at"])
    ).total_seconds()
    assert ahead == pytest.approx(900, abs=1)
    tagged = run_cli(
        "put", "2", "--queue", "mail", "--tag", "urgent", "--tag", "vip", "--url", url, cwd=tmp_path
    )
    tagged_id = int(tagged.stdout)
    found = json.loads(
        run_cli("jobs", "--tag", "urgent", "--json", "--url", url, cwd=tmp_path).stdout
    )
    assert [(j["id"], j["tags"]) for j in found] == [(tagged_id, ["urgent", "vip"])]
    none = run_cli("jobs", "--tag", "urgent", "--tag", "other", "--url", url, cwd=tmp_path)
    assert none.returncode == 1


def test_config_shows_each_value_and_its_source(tmp_path: Path) -> None:
    (tmp_path / "persistq.toml").write_text('durability = "normal"\n')
    done = run_cli(
        "config", "--json", "--url", "x.db", cwd=tmp_path, env={"PERSISTQ_LEASE_SECONDS": "12"}
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["url"] == {"value": "x.db", "source": "--url"}
    assert data["lease_seconds"] == {
        "value": 12.0,
        "source": "environment variable PERSISTQ_LEASE_SECONDS",
    }
    assert data["durability"] == {"value": "normal", "source": str(tmp_path / "persistq.toml")}
    assert data["max_attempts"] == {"value": 5, "source": "default"}
    plain = run_cli("config", cwd=tmp_path, env={"PERSISTQ_RETENTION_SECONDS": "3d"}).stdout
    assert re.search(
        r"^retention_seconds\s+3d\s+environment variable PERSISTQ_RETENTION_SECONDS$",
        plain,
        re.MULTILINE,
    ), plain
    assert re.search(r"^lease_seconds\s+30s\s+default$", plain, re.MULTILINE), plain
    assert re.search(
        r"^url\s+persistq\.db\s+default \(in the working directory\)$", plain, re.MULTILINE
    )
    assert not (tmp_path / "x.db").exists()
    assert not (tmp_path / "persistq.db").exists()


def test_health_is_an_exit_code(url: str, tmp_path: Path) -> None:
    seed(url)
    ok = run_cli("health", "--url", url, cwd=tmp_path)
    assert ok.returncode == 0
    assert ok.stdout.splitlines()[-1] == "degraded"  # usable, but no worker
    assert re.search(r"^mail\s+database\s+ok\s+answered in", ok.stdout, re.MULTILINE)
    report = json.loads(run_cli("health", "--json", "--url", url, cwd=tmp_path).stdout)
    assert report["ok"] is True
    assert report["status"] == "degraded"  # no live worker
    assert [q["queue"] for q in report["queues"]] == ["default", "mail", "reports"]
    strict = run_cli("health", "--strict", "--url", url, cwd=tmp_path)
    assert strict.returncode == 1
    assert strict.stdout.splitlines()[-1] == "degraded"
    relaxed = run_cli(
        "health", "--no-workers-needed", "--queue", "mail", "--strict", "--url", url, cwd=tmp_path
    )
    assert relaxed.returncode == 0, relaxed.stdout
    lagging = run_cli(
        "health",
        "--no-workers-needed",
        "--max-lag",
        "1ms",
        "--queue",
        "mail",
        "--json",
        "--url",
        url,
        cwd=tmp_path,
    )
    assert json.loads(lagging.stdout)["status"] == "degraded"
    down = run_cli(
        "health",
        "--json",
        "--timeout",
        "10s",
        "--url",
        "postgresql+asyncpg://postgres@127.0.0.1:1/x",
        cwd=tmp_path,
    )
    assert down.returncode == 1
    assert json.loads(down.stdout)["status"] == "failing"


# ---------------------------------------------------------------------- workers

HANDLER = """
import anyio


async def handler(job):
    await anyio.sleep(0.01)
    return "ok"
"""


def _until(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.2)


def test_workers_lists_a_running_worker_and_its_pool(url: str, tmp_path: Path) -> None:
    seed(url)
    none = run_cli("workers", "--url", url, cwd=tmp_path)
    assert none.returncode == 1
    assert none.stderr.strip() == "persistq: error: no workers registered in the database"
    (tmp_path / "handlers.py").write_text(HANDLER)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "persistq_async",
            "worker",
            "handlers:handler",
            "--queue",
            "mail",
            "--concurrency",
            "3",
            "--url",
            url,
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        found: list[dict[str, object]] = []

        def listed() -> bool:
            done = run_cli("workers", "--json", "--url", url, cwd=tmp_path)
            found[:] = json.loads(done.stdout) if done.returncode == 0 else []
            return bool(found)

        _until(listed)
        (info,) = found
        assert info["pid"] == worker.pid
        assert info["alive"] is True
        pools = info["pools"]
        assert isinstance(pools, list)
        assert [(p["queue"], p["concurrency"]) for p in pools] == [("mail", 3)]
        plain = run_cli("workers", "--url", url, cwd=tmp_path)
        assert plain.returncode == 0
        assert re.search(rf"\s{worker.pid}\s.*\syes\s+mail\(mail\) \d/3 busy", plain.stdout)
        elsewhere = run_cli("workers", "--queue", "reports", "--url", url, cwd=tmp_path)
        assert elsewhere.returncode == 1
        watch = run_cli("watch", "--once", "--url", url, cwd=tmp_path)
        assert re.search(rf"\s{worker.pid}\s", watch.stdout), watch.stdout
        healthy = run_cli("health", "--queue", "mail", "--strict", "--url", url, cwd=tmp_path)
        assert healthy.returncode == 0, healthy.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        _, errors = worker.communicate(timeout=30)
    assert worker.returncode == 0, errors
