"""Flow control of a queue, as :class:`~persistq_async.Queue` offers it: pause and resume, the
rate limit, the cap on running jobs, the dead-letter queue.

The settings live in the database (:mod:`persistq_async.store.flow` enforces them in every
claim), so they hold for every process that shares it and outlive restarts.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._checks import check_int, check_optional_str
from ._rates import RateLimit, parse_rate_limit
from .errors import ArgumentError, ArgumentTypeError, ConfigError
from .monitoring import DEFAULT_STATS_WINDOW, Stats, log_event

if TYPE_CHECKING:
    from .config import Options
    from .store import JobStore

__all__ = ["FlowControl", "check_rate", "flow_options"]

logger = logging.getLogger("persistq_async.queue")


class FlowControl:
    """The flow-control methods of :class:`~persistq_async.Queue`."""

    __slots__ = ()

    name: str

    @property
    def store(self) -> JobStore:
        """The queue's store (defined by the queue)."""
        raise NotImplementedError

    async def pause(self) -> None:
        """Stop claims from this queue in every process; puts are still taken.

        Claims that begin after this returns take nothing from the queue; running jobs finish
        normally. The state is in the database, so it outlives restarts, until :meth:`resume`.
        """
        await self.store.set_flow(self.name, {"paused": True})
        log_event(logger, logging.INFO, "queue_paused", "queue paused", queue=self.name)

    async def resume(self) -> None:
        """Let workers claim from this queue again; waiting workers wake at once (in another
        process on SQLite within ``poll_interval``)."""
        await self.store.set_flow(self.name, {"paused": False})
        log_event(logger, logging.INFO, "queue_resumed", "queue resumed", queue=self.name)

    async def set_rate_limit(self, limit: str | None, *, burst: int | None = None) -> None:
        """Limit the claims from this queue across every process, from now on.

        :param limit: ``"100/s"``, ``"10/m"``, ``"5000/h"``; None removes the limit.
        :param burst: the token bucket's size: over any window of the limit's period, claims
            never exceed the count plus ``burst``; a tenth of the count (at least 1) by default.
        :raises ArgumentError: a malformed limit or a burst < 1.
        :raises ArgumentTypeError: a limit that is not a str, a burst that is not an int.
        """
        rate: RateLimit | None = None
        if limit is not None:
            rate = check_rate("limit", limit, burst)
        elif burst is not None:
            raise ArgumentError("burst: only with a limit")
        await self.store.set_flow(self.name, {"rate_limit": rate})
        log_event(
            logger,
            logging.INFO,
            "queue_flow_set",
            f"rate limit set to {rate}",
            queue=self.name,
            rate_limit=None if rate is None else str(rate),
        )

    async def set_max_running(self, limit: int | None) -> None:
        """Run at most ``limit`` jobs of this queue at once across every worker; None: no cap.

        Jobs running beyond a lowered cap finish normally; no new one starts until the count
        is below it.

        :raises ArgumentError: a limit < 1.
        """
        value = None if limit is None else check_int("limit", limit, minimum=1)
        await self.store.set_flow(self.name, {"max_running": value})
        log_event(
            logger,
            logging.INFO,
            "queue_flow_set",
            f"max_running set to {value}",
            queue=self.name,
            max_running=value,
        )

    async def set_dead_letter_queue(self, name: str | None) -> None:
        """Move jobs of this queue that die to the queue ``name`` from now on; None: keep them
        dead here.

        :raises ArgumentError: an empty name, or this queue's own name.
        """
        target = check_optional_str("name", name)
        if target == self.name:
            raise ArgumentError(f"name: a queue cannot be its own dead-letter queue ({name!r})")
        await self.store.set_flow(self.name, {"dead_letter_queue": target})
        log_event(
            logger,
            logging.INFO,
            "queue_flow_set",
            f"dead-letter queue set to {target!r}",
            queue=self.name,
            dead_letter_queue=target,
        )

    async def stats(self, window: float | timedelta = DEFAULT_STATS_WINDOW) -> Stats:
        """This queue as the database sees it (see :meth:`.Monitored.stats`), and its flow
        control: paused or not, the rate limit and the cap on running jobs."""
        stats: Stats = await super().stats(window)  # type: ignore[misc]
        flow = await self.store.flow_settings(self.name)
        return dataclasses.replace(
            stats,
            paused=flow.paused,
            rate_limit=None if flow.rate_limit is None else str(flow.rate_limit),
            max_running=flow.max_running,
        )


def check_rate(name: str, limit: Any, burst: Any) -> RateLimit:
    if burst is not None:
        burst = check_int("burst", burst, minimum=1)
    if not isinstance(limit, str):
        raise ArgumentTypeError(f"{name}: expected a str such as '100/s', got {limit!r}")
    try:
        return parse_rate_limit(limit, burst=burst)
    except ValueError as exc:
        raise ArgumentError(f"{name}: {exc}") from None


def flow_options(name: str, options: Options) -> dict[str, Any]:
    """The flow-control options given (by keyword, environment or file), as settings to write."""
    changes: dict[str, Any] = {}
    if options.rate_limit is not None:
        changes["rate_limit"] = parse_rate_limit(options.rate_limit, burst=options.rate_burst)
    elif options.rate_burst is not None:
        raise ConfigError("option 'rate_burst': only with a rate_limit")
    if options.max_running is not None:
        changes["max_running"] = options.max_running
    if options.dead_letter_queue is not None:
        if options.dead_letter_queue == name:
            raise ConfigError(
                f"option 'dead_letter_queue': queue {name!r} cannot be its own dead-letter queue"
            )
        changes["dead_letter_queue"] = options.dead_letter_queue
    return changes
