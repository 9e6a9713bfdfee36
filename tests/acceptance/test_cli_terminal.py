"""``persistq`` on a pseudo-terminal: rich tables and colour, a progress bar, the live view
(starts, shows the queues, refreshes in place, quits on q or Ctrl-C), and plain text on a
terminal when ``rich`` is not installed."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

import persistq_async as pq

from ._cli_support import NO_RICH, seed, start_in_terminal

pytestmark = pytest.mark.timeout(120)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """The text without terminal escapes."""
    return ANSI.sub("", text)


def test_stats_and_jobs_are_rich_tables_on_a_terminal(tmp_path: Path) -> None:
    seed(str(tmp_path / "jobs.db"))
    term = start_in_terminal("stats", "--url", "jobs.db", cwd=tmp_path)
    assert term.finish() == 0
    assert "\x1b[" in term.output  # styled
    text = plain(term.output)
    assert "┏" in text  # a rich table's box
    assert re.search(r"│ mail\s+│\s+1 │\s+0 │\s+0 │\s+2 │\s+0 │\s+3 │", text), text

    jobs = start_in_terminal("jobs", "--state", "dead", "--url", "jobs.db", cwd=tmp_path)
    assert jobs.finish() == 0
    assert "\x1b[1;31mdead" in jobs.output  # the dead state in bold red
    assert '{"to": "<script>"}' in plain(jobs.output)  # shown as text, not markup


def test_plain_text_on_a_terminal_without_rich(tmp_path: Path) -> None:
    seed(str(tmp_path / "jobs.db"))
    env = {"PYTHONPATH": str(NO_RICH)}
    term = start_in_terminal("stats", "--url", "jobs.db", cwd=tmp_path, env=env)
    assert term.finish() == 0
    assert "\x1b[" not in term.output
    lines = term.output.replace("\r\n", "\n").splitlines()
    assert lines[0].split()[:7] == [
        "queue",
        "queued",
        "running",
        "done",
        "dead",
        "cancelled",
        "total",
    ]
    assert lines[2].split()[:7] == ["mail", "1", "0", "0", "2", "0", "3"]

    purge = start_in_terminal("purge", "dead", "--url", "jobs.db", cwd=tmp_path, env=env)
    assert purge.finish() == 0
    assert purge.output.strip() == "2 dead jobs deleted (default: 0, mail: 2, reports: 0)"

    watch = start_in_terminal(
        "watch", "--interval", "0.2s", "--url", "jobs.db", cwd=tmp_path, env=env
    )
    watch.wait_for(lambda out: out.count("persistq watch") >= 2)  # printed again and again
    watch.send(b"\x03")  # Ctrl-C
    assert watch.finish() == 0
    assert re.search(r"^mail\s+1\s+0\s+0\s+0\s+1\s", watch.output.replace("\r", ""), re.MULTILINE)


def test_a_bulk_operation_shows_a_progress_bar(tmp_path: Path) -> None:
    url = str(tmp_path / "jobs.db")

    async def dead() -> None:
        async with pq.Queue(url, name="emails", max_attempts=1) as q:
            await q.put_many(range(1100))
            jobs, _ = await q.claim(1100)
            for job in jobs:
                await job.fail(error="boom")

    anyio.run(dead)
    term = start_in_terminal(
        "requeue", "--state", "dead", "--queue", "emails", "--url", url, cwd=tmp_path
    )
    assert term.finish() == 0
    text = plain(term.output)
    assert "requeue dead in emails" in text
    assert "1100/1100" in text
    assert "━" in text  # the bar
    assert "1100 dead jobs requeued (queue emails)" in text


def _put(url: str, queue: str, count: int) -> None:
    async def run() -> None:
        async with pq.Queue(url, name=queue) as q:
            await q.put_many(range(count))

    anyio.run(run)


def test_watch_shows_the_queues_refreshes_in_place_and_quits_on_q(tmp_path: Path) -> None:
    url = str(tmp_path / "jobs.db")
    seed(url)
    term = start_in_terminal("watch", "--interval", "0.2s", "--url", url, cwd=tmp_path)
    term.wait_for(lambda out: re.search(r"│ mail\s+│\s+1 │", plain(out)) is not None)
    assert "q or Ctrl-C to quit" in plain(term.output)
    _put(url, "mail", 4)  # the view follows: queued 1 -> 5
    term.wait_for(lambda out: re.search(r"│ mail\s+│\s+5 │", plain(out)) is not None)
    # In place: the view moves the cursor back up over itself instead of scrolling.
    assert "\x1b[1A" in term.output or "\x1b[2K" in term.output
    term.send(b"q")
    assert term.finish(timeout=10) == 0


def test_watch_quits_on_ctrl_c_and_waits_for_jobs_on_an_empty_database(tmp_path: Path) -> None:
    url = str(tmp_path / "jobs.db")
    _put(url, "mail", 0)  # a database with no jobs yet
    term = start_in_terminal("watch", "--interval", "0.2s", "--url", url, cwd=tmp_path)
    term.wait_for(lambda out: "no jobs in the database yet" in plain(out))
    _put(url, "fresh", 2)
    term.wait_for(lambda out: re.search(r"│ fresh\s+│\s+2 │", plain(out)) is not None)
    term.send(b"\x03")
    assert term.finish(timeout=10) == 0
