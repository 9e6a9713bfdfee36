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
    assert lines[2] == (
        "Stats(queue='emails', queued=0, running=0, done=2, dead=0, cancelled=0, "
        "paused=False, rate_limit=None, max_running=None)"
    ), done.stdout
    assert len(lines) == 3
    assert (tmp_path / "jobs.db").exists()  # the queue lives in the file it named
    assert "Traceback" not in done.stderr


def test_the_transactional_outbox_example_commits_and_rolls_back_with_the_order(
    tmp_path: Path,
) -> None:
    script = tmp_path / "outbox.py"
    script.write_text(example("## PostgreSQL and transactional enqueue"), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # the job of the committed order exists; the rolled-back order left no job
    assert done.stdout.splitlines() == ["[{'order': 42}]"], done.stdout


def test_the_flow_control_example_pauses_resumes_and_dead_letters(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(example("## Flow control"), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "queued while paused: 2",
        "dead: b@nowhere.invalid - rejected: no such domain",
        "False 100/s 5 1",
        "[{'to': 'b@nowhere.invalid'}]",
    ], done.stdout
