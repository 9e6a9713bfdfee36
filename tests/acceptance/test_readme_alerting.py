"""The README's Alerting example, run as a user would, and its list of log actions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import persistq_async as pq

from .test_readme import README, run_example

pytestmark = pytest.mark.timeout(60)


def test_the_alerting_example_fires_and_resolves_once(tmp_path: Path) -> None:
    done = run_example(tmp_path, "## Alerting")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["firing emails-lag", "resolved emails-lag"], done.stdout
    # The log sink wrote both (Python's last-resort handler prints WARNING to stderr).
    assert "alert emails-lag firing: queue 'emails': queue_lag is " in done.stderr
    assert "alert emails-lag resolved" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_action_is_documented_with_its_meaning() -> None:
    section = README.read_text(encoding="utf-8").split("## Logging", 1)[1]
    documented: set[str] = set()
    for row in re.findall(r"^\| (`[^|]+`) \| [A-Z/]+ \| .+ \|$", section, re.MULTILINE):
        documented.update(re.findall(r"`([a-z_]+)`", row))
    assert documented == set(pq.monitoring.ACTIONS)


def test_the_configuration_example_is_valid(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8").split("## Alerting", 1)[1]
    match = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert match is not None
    (tmp_path / "persistq.toml").write_text(match.group(1))
    alerting = pq.Alerting.from_config(tmp_path)
    assert alerting is not None
    assert [r.name for r in alerting.rules] == ["emails-lag", "nobody-sends"]
    assert alerting.rules[0] == pq.QueueLagRule(
        name="emails-lag", queue="emails", above=2, for_seconds=3
    )
    assert len(alerting.sinks) == 1
