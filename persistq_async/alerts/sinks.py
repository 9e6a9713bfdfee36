"""Where alerts go: the log (always), async callables, and webhooks.

A sink is any ``async def sink(alert: Alert) -> None``. A sink that raises or hangs is logged
(``alert_sink_failed``) and never disturbs the evaluator or the worker: each delivery runs in a
task of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio

from ..errors import ConfigError
from ..monitoring import log_event
from .rules import Alert

__all__ = ["AlertSink", "WebhookError", "WebhookSink", "deliver", "log_alert"]

logger = logging.getLogger("persistq_async.alerts")

#: An async callable that receives each alert.
AlertSink = Callable[[Alert], Awaitable[None]]

#: Seconds a sink may take for one alert before it is given up (the webhook's retries included).
SINK_DEADLINE = 120.0


def log_alert(alert: Alert) -> None:
    """Log the alert at WARNING, action ``alert_firing`` or ``alert_resolved`` (the sink every
    alert goes to, written at once when its transition commits)."""
    resolved = alert.status == "resolved"
    log_event(
        logger,
        logging.WARNING,
        "alert_resolved" if resolved else "alert_firing",
        f"alert {alert.rule} {alert.status}: {alert.summary}",
        rule=alert.rule,
        kind=alert.kind,
        status=alert.status,
        queue=alert.queue,
        value=alert.value,
        threshold=alert.threshold,
        active_since=alert.active_since.isoformat(),
    )


async def deliver(alert: Alert, sinks: Sequence[AlertSink]) -> None:
    """Hand ``alert`` to every sink, side by side; never raises (but cancellation)."""
    if not sinks:
        return
    async with anyio.create_task_group() as tg:
        for sink in sinks:
            tg.start_soon(_deliver_one, alert, sink)


async def _deliver_one(alert: Alert, sink: AlertSink) -> None:
    name = getattr(sink, "__qualname__", None) or type(sink).__name__
    try:
        with anyio.fail_after(SINK_DEADLINE):
            await sink(alert)
    except Exception as exc:  # a sink must never take the evaluator down
        log_event(
            logger,
            logging.ERROR,
            "alert_sink_failed",
            f"alert {alert.rule} {alert.status}: sink {name} failed: {type(exc).__name__}: {exc}",
            rule=alert.rule,
            status=alert.status,
            sink=str(name),
            error=f"{type(exc).__name__}: {exc}",
        )


class WebhookError(Exception):
    """Raised when a webhook refused an alert or could not be reached, after the retries."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSink:
    """POSTs each alert as JSON (:meth:`Alert.to_dict`) to ``url``.

    A connection error, a timeout or a 5xx or 429 answer is retried ``retries`` times, waiting
    ``backoff`` seconds, then twice that, and so on; another 4xx is not retried. The request
    runs in a worker thread (the standard library's ``urllib``), so no extra is needed.

    :raises ConfigError: the URL is not http(s), or a number is out of range.
    """

    url: str
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.5
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"alert webhook: url: expected an http(s) URL, got {self.url!r}")
        for key, low in (("timeout", 0.0), ("backoff", 0.0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
                raise ConfigError(f"alert webhook: {key}: expected a number >= 0, got {value!r}")
        if self.timeout <= 0:
            raise ConfigError(f"alert webhook: timeout: must be > 0, got {self.timeout!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"alert webhook: retries: expected an int >= 0, got {self.retries!r}")
        if not isinstance(self.headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()
        ):
            raise ConfigError("alert webhook: headers: expected a table of strings")

    def __repr__(self) -> str:
        # The URL may carry a token: show only where it goes.
        parts = urlsplit(self.url)
        return f"WebhookSink({parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path})"

    async def __call__(self, alert: Alert) -> None:
        """Send ``alert``; retried as the class says.

        :raises WebhookError: the last attempt failed.
        """
        body = json.dumps(alert.to_dict()).encode()
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                await anyio.to_thread.run_sync(self._post, body, abandon_on_cancel=True)
                return
            except _Permanent as exc:
                raise WebhookError(str(exc)) from None
            except (OSError, _Transient) as exc:
                error = exc
            if attempt < self.retries:
                await anyio.sleep(delay)
                delay *= 2
        raise WebhookError(
            f"POST {self!r} failed {self.retries + 1} times; last: {type(error).__name__}: {error}"
        )

    def _post(self, body: bytes) -> None:
        # Imported here: http.client and ssl cost a worker's start-up time, and most never POST.
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", **self.headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            message = f"POST {self!r}: HTTP {exc.code} {exc.reason}"
            if exc.code >= 500 or exc.code == 429:
                raise _Transient(message) from None
            raise _Permanent(message) from None


class _Transient(Exception):
    pass


class _Permanent(Exception):
    pass


def webhook_from_table(table: Mapping[str, Any], source: str) -> WebhookSink:
    """A :class:`WebhookSink` from a configuration table (``url``, ``timeout``, ...).

    :raises ConfigError: an unknown key or a bad value, naming ``source``.
    """
    known = {"url", "timeout", "retries", "backoff", "headers"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"alert webhook from {source}: unknown key {unknown[0]!r} "
            f"(known: {', '.join(sorted(known))})"
        )
    if "url" not in table:
        raise ConfigError(f"alert webhook from {source}: url is required")
    try:
        return WebhookSink(**table)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (from {source})") from None
