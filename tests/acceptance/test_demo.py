"""`python -m persistq_async demo` in a subprocess: priorities, retries, a dead job, its audit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def run_demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persistq_async", "demo", *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )


def test_the_demo_prints_stats_and_an_audit_trail(tmp_path: Path) -> None:
    done = run_demo(tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "stats: queued=0 running=0 done=5 dead=1 cancelled=0" in out, out
    assert "Traceback" not in done.stderr

    # Delivery order at concurrency 1: priority 10, then 0 (FIFO), then -1.
    deliveries = re.findall(r"attempt 1/3 priority (-?\d+): \{'task': 'email', 'to': '(\w+)@", out)
    assert [to for _, to in deliveries][:3] == ["urgent", "normal", "low"], out

    flaky = out.split("(flaky), now done:", 1)
    assert len(flaky) == 2, out
    trail = flaky[1].split("audit trail of job", 1)[0]
    assert re.findall(r"attempt (\d): (\w+)", trail) == [
        ("1", "nacked"),
        ("2", "nacked"),
        ("3", "acked"),
    ]
    assert "ConnectionError: smtp server not answering" in trail

    doomed = out.split("(doomed), now dead:", 1)
    assert len(doomed) == 2, out
    assert re.findall(r"attempt (\d): (\w+)", doomed[1]) == [
        ("1", "nacked"),
        ("2", "nacked"),
        ("3", "nacked"),
    ]
    assert "ValueError: mailbox does not exist" in doomed[1]
    assert list(tmp_path.iterdir()) == []  # the default demo leaves no file behind


def test_the_demo_keeps_the_database_it_was_given(tmp_path: Path) -> None:
    db = tmp_path / "kept.db"
    done = run_demo(tmp_path, "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert "done=5 dead=1" in done.stdout
    assert db.exists()


def test_the_demo_shows_a_schedule_firing_and_a_result_awaited(tmp_path: Path) -> None:
    done = run_demo(tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "awaited result of a job: {'total': 6}" in out, out
    ticks = re.findall(r"heartbeat tick (\d\d):(\d\d):(\d\d) enqueued as job (\d+)", out)
    assert len(ticks) >= 2, out
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s, _ in ticks]
    assert len(set(seconds)) == len(seconds), out  # one job per tick
    assert "schedule 'heartbeat' fired" in out
