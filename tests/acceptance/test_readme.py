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


def test_the_monitoring_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    heading = "## Monitoring: stats, workers, health, metrics and traces"
    script = tmp_path / "monitoring.py"
    script.write_text(example(heading), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    section = README.read_text(encoding="utf-8").split(heading, 1)[1]
    printed = re.search(r"prints\n\n```text\n(.*?)```", section, re.DOTALL)
    assert printed is not None
    assert done.stdout == printed.group(1), done.stdout
    assert "Traceback" not in done.stderr
