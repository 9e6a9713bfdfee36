"""Alerting: rules over the queue's own data, evaluated by one process per database.

- :mod:`.rules`: the rules (:class:`QueueLagRule`, :class:`DeadJobsRule`,
  :class:`FailureRateRule`, :class:`PoolRestartsRule`, :class:`NoWorkerRule`,
  :class:`WalSizeRule`), their states (pending, firing) and the :class:`Alert` they raise;
- :mod:`.sinks`: where alerts go (the log, async callables, :class:`WebhookSink`);
- :mod:`.config`: :class:`Alerting`, the settings, from code or from ``persistq.toml``;
- :mod:`.evaluator`: :class:`AlertEvaluator`, the supervisor service that holds the lease.

``Supervisor(alerts=[pq.QueueLagRule(name="emails-lag", queue="emails", above=60)])``.
"""

from __future__ import annotations

from .config import DEFAULT_ALERT_INTERVAL, Alerting
from .evaluator import LEASE_NAME, AlertEvaluator
from .rules import (
    Alert,
    AlertRule,
    DeadJobsRule,
    FailureRateRule,
    NoWorkerRule,
    PoolRestartsRule,
    QueueLagRule,
    RuleState,
    WalSizeRule,
    advance,
)
from .sinks import AlertSink, WebhookError, WebhookSink, log_alert

__all__ = [
    "DEFAULT_ALERT_INTERVAL",
    "LEASE_NAME",
    "Alert",
    "AlertEvaluator",
    "AlertRule",
    "AlertSink",
    "Alerting",
    "DeadJobsRule",
    "FailureRateRule",
    "NoWorkerRule",
    "PoolRestartsRule",
    "QueueLagRule",
    "RuleState",
    "WalSizeRule",
    "WebhookError",
    "WebhookSink",
    "advance",
    "log_alert",
]
