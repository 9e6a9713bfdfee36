"""Alerting settings: rules and sinks from code, or from the configuration file.

In ``persistq.toml`` (or ``[tool.persistq.alerts]`` of ``pyproject.toml``)::

    [alerts]
    interval = 5                     # seconds between evaluations

    [alerts.webhook]                 # optional
    url = "https://hooks.example.org/persistq"
    timeout = 5
    retries = 3

    [alerts.rules.emails-lag]
    kind = "queue_lag"               # queue_lag, dead_jobs, failure_rate, pool_restarts,
    queue = "emails"                 # no_worker, wal_size
    above = 60
    for = 120                        # Prometheus' spelling of for_seconds

Every mistake is a :class:`~persistq_async.ConfigError` naming the rule and the file.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

from ..config import read_section
from ..errors import ConfigError
from .rules import RULE_KINDS, AlertRule
from .sinks import AlertSink, webhook_from_table

__all__ = ["DEFAULT_ALERT_INTERVAL", "Alerting", "rule_from_table"]

#: Seconds between two evaluations of the rules.
DEFAULT_ALERT_INTERVAL = 5.0
#: Aliases accepted in configuration tables, Prometheus' spelling first.
_ALIASES = {"for": "for_seconds", "keep_firing_for": "keep_firing_seconds"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Alerting:
    """The alert rules of a :class:`~persistq_async.Supervisor`, where alerts go, and how often
    the rules are evaluated.

    Every alert is logged at WARNING (``alert_firing`` / ``alert_resolved``); ``sinks`` receive
    it too. ``lease_seconds`` is how long the evaluating process's lease lasts without renewal
    (another process takes over after it): three intervals by default.

    :raises ConfigError: two rules share a name, or a value is out of range.
    """

    rules: Sequence[AlertRule]
    sinks: Sequence[AlertSink] = ()
    interval: float = DEFAULT_ALERT_INTERVAL
    lease_seconds: float | None = None

    def __post_init__(self) -> None:
        rules = tuple(self.rules)
        seen: set[str] = set()
        for rule in rules:
            if not isinstance(rule, AlertRule):
                raise ConfigError(f"alerts: expected alert rules, got {rule!r}")
            if rule.name in seen:
                raise ConfigError(f"alert rule {rule.name!r}: two rules have this name")
            seen.add(rule.name)
        object.__setattr__(self, "rules", rules)
        sinks = tuple(self.sinks)
        for sink in sinks:
            if not callable(sink):
                raise ConfigError(f"alerts: sinks: expected async callables, got {sink!r}")
        object.__setattr__(self, "sinks", sinks)
        for key in ("interval", "lease_seconds"):
            value = getattr(self, key)
            if value is None and key == "lease_seconds":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(f"alerts: {key}: expected a number > 0, got {value!r}")
            object.__setattr__(self, key, float(value))
        if self.lease_seconds is not None and self.lease_seconds <= self.interval:
            # A lease that ends between two ticks would pass from process to process.
            raise ConfigError(
                f"alerts: lease_seconds: must be longer than interval ({self.interval:g}), "
                f"got {self.lease_seconds:g}"
            )

    @property
    def lease(self) -> float:
        """Seconds the evaluator's lease lasts."""
        return self.lease_seconds if self.lease_seconds is not None else 3 * self.interval

    @classmethod
    def of(cls, alerts: Alerting | Iterable[AlertRule]) -> Alerting:
        """``alerts`` itself, or rules made into settings with the defaults."""
        if isinstance(alerts, Alerting):
            return alerts
        if isinstance(alerts, AlertRule | str | bytes | Mapping) or not isinstance(
            alerts, Iterable
        ):
            raise ConfigError(f"alerts: expected Alerting or a list of rules, got {alerts!r}")
        return cls(rules=tuple(alerts))

    @classmethod
    def from_config(cls, cwd: str | os.PathLike[str] | None = None) -> Alerting | None:
        """The ``[alerts]`` table of the configuration file; None without one.

        :raises ConfigError: a mistake in it, naming the rule (or key) and the file.
        """
        found = read_section("alerts", cwd)
        if found is None:
            return None
        return cls.from_table(*found)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], source: str) -> Alerting:
        """Settings from an ``[alerts]`` table read from ``source``.

        :raises ConfigError: a mistake in it, naming the rule (or key) and ``source``.
        """
        known = {"interval", "lease_seconds", "webhook", "rules"}
        for key in table:
            if key not in known:
                raise ConfigError(f"{source}: unknown key {key!r}{_hint(key, known)}")
        rules_table = table.get("rules", {})
        if not isinstance(rules_table, Mapping):
            raise ConfigError(f"{source}: rules: expected tables [alerts.rules.NAME]")
        rules = [rule_from_table(name, spec, source) for name, spec in rules_table.items()]
        sinks: list[AlertSink] = []
        if "webhook" in table:
            webhook = table["webhook"]
            if not isinstance(webhook, Mapping):
                raise ConfigError(f"{source}: webhook: expected a table [alerts.webhook]")
            sinks.append(webhook_from_table(webhook, source))
        try:
            return cls(
                rules=tuple(rules),
                sinks=tuple(sinks),
                interval=table.get("interval", DEFAULT_ALERT_INTERVAL),
                lease_seconds=table.get("lease_seconds"),
            )
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {source})") from None


def rule_from_table(name: str, spec: Any, source: str) -> AlertRule:
    """One rule from its table ``[alerts.rules.NAME]``.

    :raises ConfigError: an unknown kind or key, a missing or bad value; naming the rule.
    """
    where = f"alert rule {name!r} from {source}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a table, got {spec!r}")
    kind = spec.get("kind")
    if kind not in RULE_KINDS:
        raise ConfigError(
            f"{where}: kind: expected one of {', '.join(sorted(RULE_KINDS))}, got {kind!r}"
        )
    cls = RULE_KINDS[kind]
    allowed = {f.name for f in fields(cls)} - {"name"}
    values: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "kind":
            continue
        field_name = _ALIASES.get(key, key)
        if field_name not in allowed:
            hint = _hint(key, allowed | set(_ALIASES))
            raise ConfigError(f"{where}: unknown key {key!r} for a {kind} rule{hint}")
        if field_name in values:
            raise ConfigError(f"{where}: {key!r} given twice (as {field_name} and an alias)")
        values[field_name] = value
    missing = sorted(
        f.name
        for f in fields(cls)
        if f.name != "name" and f.name not in values and _has_no_default(f)
    )
    if missing:
        raise ConfigError(f"{where}: {missing[0]} is required for a {kind} rule")
    try:
        return cls(name=name, **values)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (from {source})") from None


def _has_no_default(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _hint(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"
