"""Alert rules, the state each one is in, and the alerts they raise.

A rule measures one value (a queue's lag, dead jobs in a window, ...) and holds when that value
crosses its threshold. Like a Prometheus alerting rule it then goes *pending*; once it has held
for ``for_seconds`` it is *firing* and one ``firing`` alert is sent; when it stops holding (for
``keep_firing_seconds``, 0 by default) one ``resolved`` alert is sent and it is *inactive* again.
A condition that flickers during ``for_seconds`` never fires; one that flickers while firing
resolves once, and only after ``keep_firing_seconds``: no storms, no flapping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

from .._checks import MAX_NAME_LENGTH
from ..errors import ConfigError

__all__ = [
    "Alert",
    "AlertRule",
    "DeadJobsRule",
    "FailureRateRule",
    "NoWorkerRule",
    "PoolRestartsRule",
    "QueueLagRule",
    "RuleState",
    "Signals",
    "WalSizeRule",
    "advance",
]

#: What a failure-rate rule counts as a failed delivery; acked ones count as successes, and
#: deliveries handed back (released) or cancelled count as neither.
FAILED_OUTCOMES = frozenset({"nacked", "failed", "expired"})
SUCCEEDED_OUTCOMES = frozenset({"acked"})
#: How long recorded claim-loop restarts are kept (the longest pool-restarts window).
RESTARTS_KEPT_SECONDS = 86_400.0


class Signals(Protocol):
    """What rules measure, read once per evaluation (the evaluator caches repeated reads)."""

    #: Epoch seconds of this evaluation.
    now: float

    async def lag(self, queue: str) -> float:
        """Seconds the oldest ready job of ``queue`` has waited; 0.0 when none is ready."""
        ...

    async def dead_since(self, queue: str, since: float) -> int:
        """Jobs of ``queue`` that became dead at or after ``since``."""
        ...

    async def outcomes_since(self, queue: str, since: float) -> Mapping[str, int]:
        """Deliveries of ``queue`` that ended at or after ``since``, per outcome."""
        ...

    async def restarts_since(self, since: float, pool: str | None, queue: str | None) -> int:
        """Claim-loop restarts in every process since ``since``."""
        ...

    async def live_workers(self, queue: str) -> int | None:
        """Live supervisors with a pool on ``queue``; None when that cannot be known."""
        ...

    async def wal_bytes(self) -> int | None:
        """The database's write-ahead log size; None where there is none to see."""
        ...


def _show(value: float) -> str:
    """A measured value for people: three significant digits, whole numbers past 100."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _fail(rule: str, message: str) -> ConfigError:
    return ConfigError(f"alert rule {rule!r}: {message}")


def _number(
    rule: str, key: str, value: Any, *, minimum: float = 0.0, strict: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(rule, f"{key}: expected a finite number, got {value!r}")
    if value < minimum or (strict and value <= minimum):
        raise _fail(rule, f"{key}: must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def _integer(rule: str, key: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(rule, f"{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise _fail(rule, f"{key}: must be >= {minimum}, got {value!r}")
    return value


def _text(rule: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise _fail(rule, f"{key}: expected a non-empty name, got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRule:
    """The base of the rules: a unique ``name``, how long the condition must hold before the
    rule fires (``for_seconds``), and how long it must stop holding before a firing rule
    resolves (``keep_firing_seconds``).

    :raises ConfigError: a value of the wrong type or out of range, naming the rule.
    """

    #: The rule's configuration name (``kind = "..."`` in ``persistq.toml``).
    kind: ClassVar[str] = ""
    #: The unit of the measured value, for messages.
    unit: ClassVar[str] = ""

    name: str
    for_seconds: float = 0.0
    keep_firing_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > MAX_NAME_LENGTH:
            raise ConfigError(f"alert rule: name: expected a non-empty string, got {self.name!r}")
        for key in ("for_seconds", "keep_firing_seconds"):
            object.__setattr__(self, key, _number(self.name, key, getattr(self, key)))
        self._check()

    def _check(self) -> None:
        """Check the rule's own fields (raise with :func:`_fail`)."""

    @property
    def queue_name(self) -> str | None:
        """The queue the rule watches, if it watches one."""
        return getattr(self, "queue", None)

    @property
    def threshold(self) -> float:
        """The value the measure is compared with."""
        return float(getattr(self, "above", 0))

    async def measure(self, signals: Signals) -> float | None:
        """The current value; None when it cannot be measured (then the rule does not hold)."""
        raise NotImplementedError

    def holds(self, value: float | None) -> bool:
        """Whether the condition holds for ``value``: above the threshold by default."""
        return value is not None and value > self.threshold

    def describe(self, value: float | None) -> str:
        """One line saying what the rule watches and the value it saw."""
        where = f"queue {self.queue_name!r}: " if self.queue_name else ""
        seen = "unknown" if value is None else f"{_show(value)}{self.unit}"
        return f"{where}{self.kind} is {seen} (threshold: above {self.threshold:g}{self.unit})"


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueLagRule(AlertRule):
    """Holds while the oldest ready job of ``queue`` has waited more than ``above`` seconds."""

    kind: ClassVar[str] = "queue_lag"
    unit: ClassVar[str] = "s"
    queue: str
    above: float

    def _check(self) -> None:
        _text(self.name, "queue", self.queue)
        object.__setattr__(self, "above", _number(self.name, "above", self.above))

    async def measure(self, signals: Signals) -> float | None:
        """Seconds the oldest ready job has waited."""
        return await signals.lag(self.queue)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadJobsRule(AlertRule):
    """Holds while more than ``above`` jobs of ``queue`` became dead in the last ``window``
    seconds."""

    kind: ClassVar[str] = "dead_jobs"
    queue: str
    above: int = 0
    window: float = 300.0

    def _check(self) -> None:
        _text(self.name, "queue", self.queue)
        _integer(self.name, "above", self.above)
        object.__setattr__(self, "window", _number(self.name, "window", self.window, strict=True))

    async def measure(self, signals: Signals) -> float | None:
        """Jobs that became dead within the window."""
        return float(await signals.dead_since(self.queue, signals.now - self.window))


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureRateRule(AlertRule):
    """Holds while more than the fraction ``above`` of the deliveries of ``queue`` that ended in
    the last ``window`` seconds failed (nacked, failed or expired, against those plus acked),
    counting only once at least ``min_deliveries`` ended."""

    kind: ClassVar[str] = "failure_rate"
    queue: str
    above: float
    window: float = 300.0
    min_deliveries: int = 1

    def _check(self) -> None:
        _text(self.name, "queue", self.queue)
        above = _number(self.name, "above", self.above)
        if above >= 1:
            raise _fail(self.name, f"above: a fraction below 1 (0.05 for 5%), got {self.above!r}")
        object.__setattr__(self, "above", above)
        object.__setattr__(self, "window", _number(self.name, "window", self.window, strict=True))
        _integer(self.name, "min_deliveries", self.min_deliveries, minimum=1)

    async def measure(self, signals: Signals) -> float | None:
        """The failed fraction; None with fewer than ``min_deliveries`` deliveries."""
        outcomes = await signals.outcomes_since(self.queue, signals.now - self.window)
        failed = sum(n for outcome, n in outcomes.items() if outcome in FAILED_OUTCOMES)
        total = failed + sum(n for o, n in outcomes.items() if o in SUCCEEDED_OUTCOMES)
        if total < self.min_deliveries:
            return None
        return failed / total


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolRestartsRule(AlertRule):
    """Holds while more than ``above`` claim-loop restarts happened in the last ``window``
    seconds, in any process (of one ``pool`` name or one ``queue``, when given)."""

    kind: ClassVar[str] = "pool_restarts"
    above: int = 0
    window: float = 300.0
    pool: str | None = None
    queue: str | None = None

    def _check(self) -> None:
        _integer(self.name, "above", self.above)
        object.__setattr__(self, "window", _number(self.name, "window", self.window, strict=True))
        if self.window > RESTARTS_KEPT_SECONDS:
            raise _fail(
                self.name,
                f"window: restarts are kept {RESTARTS_KEPT_SECONDS:g}s, got {self.window!r}",
            )
        for key in ("pool", "queue"):
            if getattr(self, key) is not None:
                _text(self.name, key, getattr(self, key))

    async def measure(self, signals: Signals) -> float | None:
        """Restarts within the window."""
        since = signals.now - self.window
        return float(await signals.restarts_since(since, self.pool, self.queue))


@dataclass(frozen=True, slots=True, kw_only=True)
class NoWorkerRule(AlertRule):
    """Holds while no live supervisor runs a pool on ``queue``; with ``for_seconds`` (60 by
    default) it fires once that has lasted so long."""

    kind: ClassVar[str] = "no_worker"
    queue: str
    for_seconds: float = 60.0

    def _check(self) -> None:
        _text(self.name, "queue", self.queue)

    @property
    def threshold(self) -> float:
        """Fewer live workers than one."""
        return 1.0

    async def measure(self, signals: Signals) -> float | None:
        """Live workers with a pool on the queue."""
        count = await signals.live_workers(self.queue)
        return None if count is None else float(count)

    def holds(self, value: float | None) -> bool:
        """No live worker."""
        return value is not None and value < 1

    def describe(self, value: float | None) -> str:
        """Says how many workers are live."""
        seen = "unknown" if value is None else _show(value)
        return f"queue {self.queue!r}: {seen} live workers (threshold: none)"


@dataclass(frozen=True, slots=True, kw_only=True)
class WalSizeRule(AlertRule):
    """Holds while the SQLite write-ahead log is larger than ``above`` bytes (never on a
    database without one)."""

    kind: ClassVar[str] = "wal_size"
    unit: ClassVar[str] = " bytes"
    above: int

    def _check(self) -> None:
        _integer(self.name, "above", self.above)

    async def measure(self, signals: Signals) -> float | None:
        """The WAL's size in bytes."""
        size = await signals.wal_bytes()
        return None if size is None else float(size)


#: The rule classes by their ``kind``.
RULE_KINDS: dict[str, type[AlertRule]] = {
    cls.kind: cls
    for cls in (
        QueueLagRule,
        DeadJobsRule,
        FailureRateRule,
        PoolRestartsRule,
        NoWorkerRule,
        WalSizeRule,
    )
}

StateName = Literal["inactive", "pending", "firing"]
Transition = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleState:
    """Where a rule is (epoch seconds): inactive, pending since ``active_since``, or firing."""

    state: StateName = "inactive"
    active_since: float | None = None
    fired_at: float | None = None
    #: While firing: since when the condition has not held (for ``keep_firing_seconds``).
    clear_since: float | None = None
    value: float | None = None


INACTIVE = RuleState()


def advance(
    rule: AlertRule, state: RuleState, value: float | None, now: float
) -> tuple[RuleState, Transition | None]:
    """The rule's next state after measuring ``value`` at ``now``, and the alert to send (the
    transition into firing, or out of it), if any."""
    holds = rule.holds(value)
    if state.state == "firing":
        if holds:
            return RuleState(
                state="firing",
                active_since=state.active_since,
                fired_at=state.fired_at,
                value=value,
            ), None
        clear_since = now if state.clear_since is None else state.clear_since
        if now - clear_since >= rule.keep_firing_seconds:
            return INACTIVE, "resolved"
        return RuleState(
            state="firing",
            active_since=state.active_since,
            fired_at=state.fired_at,
            clear_since=clear_since,
            value=value,
        ), None
    if not holds:
        return INACTIVE, None  # pending that stopped holding: never fired, nothing to say
    since = now if state.active_since is None or state.state == "inactive" else state.active_since
    if now - since >= rule.for_seconds:
        return RuleState(state="firing", active_since=since, fired_at=now, value=value), "firing"
    return RuleState(state="pending", active_since=since, value=value), None


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One notification: a rule started firing, or a firing rule resolved."""

    #: The rule's name.
    rule: str
    #: The rule's kind (``queue_lag``, ``dead_jobs``, ...).
    kind: str
    #: ``"firing"`` or ``"resolved"``.
    status: Transition
    #: The queue the rule watches, if any.
    queue: str | None
    #: The value measured at this transition (None when it could not be measured).
    value: float | None
    #: The threshold the value was compared with.
    threshold: float
    #: One line for people.
    summary: str
    #: Since when the condition held (aware UTC).
    active_since: datetime
    #: When this transition happened (aware UTC).
    at: datetime
    #: The database, without its password.
    database: str

    def to_dict(self) -> dict[str, Any]:
        """The alert as JSON-ready values (what a webhook receives)."""
        return {
            "rule": self.rule,
            "kind": self.kind,
            "status": self.status,
            "queue": self.queue,
            "value": self.value,
            "threshold": self.threshold,
            "summary": self.summary,
            "active_since": self.active_since.isoformat(),
            "at": self.at.isoformat(),
            "database": self.database,
        }


def make_alert(
    rule: AlertRule,
    status: Transition,
    active: RuleState,
    value: float | None,
    now: float,
    database: str,
) -> Alert:
    """The alert of a transition of ``rule``; ``active`` is its firing state (the new one when
    it starts firing, the last one when it resolves)."""
    since = active.active_since if active.active_since is not None else now
    return Alert(
        rule=rule.name,
        kind=rule.kind,
        status=status,
        queue=rule.queue_name,
        value=value,
        threshold=rule.threshold,
        summary=rule.describe(value),
        active_since=_utc(since),
        at=_utc(now),
        database=database,
    )
