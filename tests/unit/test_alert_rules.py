"""Alert rules: their states (pending, firing, resolved) and validation, without a database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import persistq_async as pq
from persistq_async.alerts import Alerting, RuleState, advance
from persistq_async.alerts.rules import INACTIVE, make_alert


def lag_rule(**overrides: object) -> pq.QueueLagRule:
    settings: dict[str, object] = {"name": "lag", "queue": "emails", "above": 60.0}
    settings.update(overrides)
    return pq.QueueLagRule(**settings)  # type: ignore[arg-type]


def run(rule: pq.AlertRule, values: list[tuple[float, float | None]]) -> list[tuple[float, str]]:
    """Feed (time, value) pairs through the state machine; the transitions, with their times."""
    state = INACTIVE
    out = []
    for now, value in values:
        state, transition = advance(rule, state, value, now)
        if transition is not None:
            out.append((now, transition))
    return out


def test_without_for_a_rule_fires_at_once_and_resolves_once() -> None:
    rule = lag_rule()
    assert run(rule, [(0, 10), (1, 61), (2, 100), (3, 70), (4, 5), (5, 0)]) == [
        (1, "firing"),
        (4, "resolved"),
    ]


def test_for_must_elapse_while_the_condition_holds() -> None:
    rule = lag_rule(for_seconds=10)
    # Holds at 0, stops at 5 (pending dropped, nothing said), holds again from 6 to 16.
    transitions = run(rule, [(0, 61), (5, 10), (6, 61), (15, 61), (16, 61), (17, 61), (18, 0)])
    assert transitions == [(16, "firing"), (18, "resolved")]


def test_pending_state_remembers_since_when() -> None:
    rule = lag_rule(for_seconds=10)
    state, transition = advance(rule, INACTIVE, 61, 100)
    assert (state.state, state.active_since, transition) == ("pending", 100, None)
    state, transition = advance(rule, state, 62, 105)
    assert (state.state, state.active_since) == ("pending", 100)
    state, transition = advance(rule, state, 63, 110)
    assert (state.state, state.active_since, state.fired_at, transition) == (
        "firing",
        100,
        110,
        "firing",
    )


def test_keep_firing_damps_flapping() -> None:
    rule = lag_rule(keep_firing_seconds=30)
    # The condition flickers off and on while firing: one firing, one resolved, at the end.
    values = [(0, 61), (10, 0), (20, 61), (30, 0), (50, 0), (59, 0), (60, 0)]
    assert run(rule, values) == [(0, "firing"), (60, "resolved")]


def test_an_unmeasurable_value_does_not_hold() -> None:
    rule = pq.WalSizeRule(name="wal", above=10)
    assert run(rule, [(0, None), (1, 11), (2, None)]) == [(1, "firing"), (2, "resolved")]
    no_worker = pq.NoWorkerRule(name="nw", queue="emails", for_seconds=0)
    assert run(no_worker, [(0, 2), (1, 0), (2, None), (3, 0), (4, 1)]) == [
        (1, "firing"),
        (2, "resolved"),
        (3, "firing"),
        (4, "resolved"),
    ]


def test_an_alert_says_what_fired() -> None:
    rule = lag_rule(for_seconds=5)
    firing = RuleState(state="firing", active_since=1_700_000_000.0, fired_at=1_700_000_005.0)
    alert = make_alert(rule, "firing", firing, 75.0, 1_700_000_005.0, "sqlite+aiosqlite:///x")
    data = alert.to_dict()
    assert data["rule"] == "lag"
    assert data["kind"] == "queue_lag"
    assert data["status"] == "firing"
    assert data["queue"] == "emails"
    assert data["value"] == 75.0
    assert data["threshold"] == 60.0
    assert data["active_since"] == "2023-11-14T22:13:20+00:00"
    assert data["at"] == "2023-11-14T22:13:25+00:00"
    assert "queue 'emails'" in alert.summary
    assert "75s" in alert.summary


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: lag_rule(above=-1), "alert rule 'lag': above: must be >= 0"),
        (lambda: lag_rule(above="60"), "alert rule 'lag': above: expected a finite number"),
        (lambda: lag_rule(for_seconds=float("inf")), "alert rule 'lag': for_seconds"),
        (lambda: lag_rule(queue=""), "alert rule 'lag': queue"),
        (lambda: lag_rule(name=""), "alert rule: name"),
        (
            lambda: pq.FailureRateRule(name="fr", queue="q", above=5),
            "alert rule 'fr': above: a fraction below 1",
        ),
        (
            lambda: pq.DeadJobsRule(name="dj", queue="q", above=1.5),  # type: ignore[arg-type]
            "alert rule 'dj': above: expected an integer",
        ),
        (
            lambda: pq.DeadJobsRule(name="dj", queue="q", window=0),
            "alert rule 'dj': window: must be > 0",
        ),
        (
            lambda: pq.FailureRateRule(name="fr", queue="q", above=0.1, min_deliveries=0),
            "alert rule 'fr': min_deliveries: must be >= 1",
        ),
        (
            lambda: pq.PoolRestartsRule(name="pr", pool=""),
            "alert rule 'pr': pool",
        ),
        (
            lambda: pq.PoolRestartsRule(name="pr", window=2 * 86400),
            "alert rule 'pr': window: restarts are kept 86400s",
        ),
        (lambda: pq.WalSizeRule(name="wal", above=-5), "alert rule 'wal': above: must be >= 0"),
        (
            lambda: Alerting(rules=(lag_rule(), lag_rule())),
            "alert rule 'lag': two rules have this name",
        ),
        (lambda: Alerting(rules=(), interval=0), "alerts: interval"),
        (
            lambda: Alerting(rules=(), interval=5, lease_seconds=4),
            "alerts: lease_seconds: must be longer than interval (5), got 4",
        ),
        (lambda: pq.WebhookSink(url="ftp://x"), "alert webhook: url"),
        (
            lambda: pq.WebhookSink(url="http://127.0.0.1:1/", retries=-1),
            "alert webhook: retries",
        ),
    ],
)
def test_bad_rules_raise_config_errors_naming_the_rule(make: object, message: str) -> None:
    with pytest.raises(pq.ConfigError, match="^" + re.escape(message)):
        make()  # type: ignore[operator]


async def test_supervisor_takes_a_list_of_rules() -> None:
    sup = pq.Supervisor(alerts=[lag_rule()])
    assert sup.alerting is not None
    assert sup.alerting.rules == (lag_rule(),)
    assert sup.alerting.lease == 3 * sup.alerting.interval
    with pytest.raises(pq.ConfigError, match="expected Alerting or a list of rules"):
        pq.Supervisor(alerts=lag_rule())  # type: ignore[arg-type]


CONFIG = """
lease_seconds = 12

[alerts]
interval = 2.5

[alerts.webhook]
url = "http://127.0.0.1:9/hook"
timeout = 3
retries = 1

[alerts.rules.emails-lag]
kind = "queue_lag"
queue = "emails"
above = 60
for = 120

[alerts.rules.dead]
kind = "dead_jobs"
queue = "emails"
above = 10
window = 600

[alerts.rules.wal]
kind = "wal_size"
above = 100_000_000
keep_firing_for = 30
"""


def test_rules_from_persistq_toml(tmp_path: Path) -> None:
    (tmp_path / "persistq.toml").write_text(CONFIG)
    alerting = Alerting.from_config(tmp_path)
    assert alerting is not None
    assert alerting.interval == 2.5
    assert alerting.rules == (
        pq.QueueLagRule(name="emails-lag", queue="emails", above=60, for_seconds=120),
        pq.DeadJobsRule(name="dead", queue="emails", above=10, window=600),
        pq.WalSizeRule(name="wal", above=100_000_000, keep_firing_seconds=30),
    )
    (webhook,) = alerting.sinks
    assert webhook == pq.WebhookSink(url="http://127.0.0.1:9/hook", timeout=3, retries=1)
    # The queue options of the same file are unaffected by the [alerts] table.
    assert pq.config.resolve_options(cwd=tmp_path).lease_seconds == 12


def test_rules_from_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.persistq.alerts.rules.restarts]\nkind = 'pool_restarts'\nabove = 3\n"
    )
    alerting = Alerting.from_config(tmp_path)
    assert alerting is not None
    assert alerting.rules == (pq.PoolRestartsRule(name="restarts", above=3),)
    assert alerting.sinks == ()


def test_no_alerts_table_means_no_alerting(tmp_path: Path) -> None:
    assert Alerting.from_config(tmp_path) is None
    (tmp_path / "persistq.toml").write_text("lease_seconds = 5\n")
    assert Alerting.from_config(tmp_path) is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            "[alerts.rules.slow]\nkind = 'queue_lag'\nqueue = 'q'\nabove = -1\n",
            "alert rule 'slow': above: must be >= 0, got -1 (from {file} [alerts])",
        ),
        (
            "[alerts.rules.slow]\nkind = 'queue_lag'\nqueue = 'q'\nabov = 1\n",
            "alert rule 'slow' from {file} [alerts]: unknown key 'abov' for a queue_lag rule "
            "(did you mean 'above'?)",
        ),
        (
            "[alerts.rules.slow]\nkind = 'queue_lag'\nqueue = 'q'\n",
            "alert rule 'slow' from {file} [alerts]: above is required for a queue_lag rule",
        ),
        (
            "[alerts.rules.slow]\nkind = 'lag'\n",
            "alert rule 'slow' from {file} [alerts]: kind: expected one of dead_jobs, "
            "failure_rate, no_worker, pool_restarts, queue_lag, wal_size, got 'lag'",
        ),
        (
            "[alerts.rules.slow]\nkind = 'queue_lag'\nqueue = 'q'\nabove = 1\nfor = 2\n"
            "for_seconds = 3\n",
            "alert rule 'slow' from {file} [alerts]: 'for_seconds' given twice",
        ),
        ("[alerts]\nintervall = 3\n", "{file} [alerts]: unknown key 'intervall'"),
        ("[alerts]\ninterval = -3\n", "alerts: interval: expected a number > 0, got -3"),
        ("[alerts.webhook]\nurl = 'mailto:x'\n", "alert webhook: url"),
        ("[alerts.webhook]\nurl = 'http://x/'\ntimout = 1\n", "unknown key 'timout'"),
        ("alerts = 3\n", "{file} [alerts]: expected a table"),
    ],
)
def test_configuration_mistakes_name_the_rule_and_the_file(
    tmp_path: Path, table: str, message: str
) -> None:
    path = tmp_path / "persistq.toml"
    path.write_text(table)
    with pytest.raises(pq.ConfigError) as caught:
        Alerting.from_config(tmp_path)
    assert message.format(file=path) in str(caught.value)
