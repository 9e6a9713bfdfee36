"""The README's quickstart, run as a user would: its ```python block in a fresh directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

README = Path(__file__).resolve().parents[2] / "README.md"


def example(heading: str = "## Quickstart") -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split(heading, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"the README's {heading!r} has no ```python block"
    return match.group(1)


def quickstart() -> str:
    return example()


def test_the_quickstart_runs_and_prints_what_it_promises(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart(), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # the priority-5 job first, the delayed one after it
    assert lines[:2] == ["sending to a@example.org", "sending to b@example.org"], done.stdout
    assert lines[2] == "queued=0 running=0 done=2 dead=0", done.stdout
    assert len(lines) == 3
    assert (tmp_path / "jobs.db").exists()  # the queue lives in the file it named
    assert "Traceback" not in done.stderr


def test_the_transactional_outbox_example_commits_and_rolls_back_with_the_order(
    tmp_path: Path,
) -> None:
    done = run_example(tmp_path, "## PostgreSQL and transactional enqueue")
    assert done.returncode == 0, done.stderr
    # the job of the committed order exists; the rolled-back order left no job
    assert done.stdout.splitlines() == ["[{'order': 42}]"], done.stdout


def run_example(tmp_path: Path, heading: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "example.py"
    script.write_text(example(heading), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )


def test_the_monitoring_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    heading = "## Monitoring: stats, workers, health, metrics and traces"
    done = run_example(tmp_path, heading)
    assert done.returncode == 0, done.stderr
    section = README.read_text(encoding="utf-8").split(heading, 1)[1]
    printed = re.search(r"prints\n\n```text\n(.*?)```", section, re.DOTALL)
    assert printed is not None
    assert done.stdout == printed.group(1), done.stdout
    assert "Traceback" not in done.stderr


def test_the_periodic_jobs_example_fires_its_pulse_on_even_seconds(tmp_path: Path) -> None:
    done = run_example(tmp_path, "## Periodic jobs")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(
        r"nightly cron '30 2 \* \* \*' Europe/Paris next: \d{4}-\d\d-\d\d 0[01]:30:00", lines[0]
    ), done.stdout
    assert lines[1].startswith("pulse cron '*/2 * * * * *' UTC next: "), done.stdout
    pulses = lines[2:]
    assert 2 <= len(pulses) <= 3, done.stdout
    seconds = [int(re.fullmatch(r"pulse for the tick at \d\d:\d\d:(\d\d)", p)[1]) for p in pulses]  # type: ignore[index]
    assert all(s % 2 == 0 for s in seconds), done.stdout
    assert len(set(seconds)) == len(seconds), done.stdout
    assert "Traceback" not in done.stderr


def test_the_results_example_prints_a_result_and_a_failure(tmp_path: Path) -> None:
    done = run_example(tmp_path, "## Awaiting results")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["49", "failed: rejected: negative after 1 attempt(s)"]


def test_the_flow_control_example_pauses_resumes_and_dead_letters(tmp_path: Path) -> None:
    done = run_example(tmp_path, "## Flow control")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "queued while paused: 2",
        "dead: b@nowhere.invalid - rejected: no such domain",
        "False 100/s 5 1",
        "[{'to': 'b@nowhere.invalid'}]",
    ], done.stdout
