"""The acks of one writer batch, written as one statement per kind.

:class:`~.transactions.AckOp` first checks, in one select, that every delivery of the batch is
running under its lease token; then :func:`write_acks` marks them done with one ``UPDATE`` per
distinct result (usually one: most handlers return nothing) and writes their attempt rows with
one multi-row ``INSERT``, for up to :data:`~persistq_async.backends.prepared.MAX_IN` acks a
statement. On SQLite that costs about half the CPU per row of the same statements run once per
row (executemany), and each statement is one call into the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy.engine import Connection

from ..backends.prepared import MAX_IN
from ..errors import DatabaseError
from . import statements as st
from .records import Delivery, attempt_row

__all__ = ["leases", "write_acks"]

# An attempt row's values in the order of st.attempt_names.
_ATTEMPT_VALUES = itemgetter(*st.ATTEMPT_KEYS)


def leases(conn: Connection, ids: Sequence[int]) -> dict[int, str | None]:
    """The lease tokens of the running jobs among ``ids``."""
    found: dict[int, str | None] = {}
    for first in range(0, len(ids), MAX_IN):
        found.update(st.LEASES_P.rows_in(conn, ids[first : first + MAX_IN]))
    return found


def write_acks(
    conn: Connection, where: str, acks: Sequence[tuple[Delivery, bytes | None]], now: float
) -> None:
    """Mark deliveries done (each with its result) and write their attempt rows.

    Every delivery must be running under its token (checked by the caller in this
    transaction); the update still fences each row by its own token, and a row count short of
    the acks fails the batch (it is rolled back) rather than report an ack not applied."""
    for first in range(0, len(acks), MAX_IN):
        chunk = acks[first : first + MAX_IN]
        by_result: dict[bytes | None, list[Delivery]] = {}
        for delivery, result in chunk:
            by_result.setdefault(result, []).append(delivery)
        for result, group in by_result.items():
            _mark_done(conn, where, group, result, now)
        _insert_attempts(conn, [delivery for delivery, _result in chunk], now)


def _mark_done(
    conn: Connection, where: str, group: list[Delivery], result: bytes | None, now: float
) -> None:
    length = st.padded_length(len(group))
    params: dict[str, Any] = {"p_result": result, "p_now": now}
    for n in range(1, length + 1):
        # Padding repeats the first delivery: the same id and token, which IN ignores.
        delivery = group[n - 1] if n <= len(group) else group[0]
        params[f"p_id_{n}"] = delivery.job_id
        params[f"p_token_{n}"] = delivery.token
    updated = st.ack_all(length).run(conn, params)
    if conn.dialect.supports_sane_rowcount and updated != len(group):
        # Cannot happen under the write lock; fail the batch (rolled back) rather than guess.
        raise DatabaseError(f"writing failed on {where}: {updated} of {len(group)} acks applied")


def _insert_attempts(conn: Connection, deliveries: list[Delivery], now: float) -> None:
    params: dict[str, Any] = {}
    for n, delivery in enumerate(deliveries):
        row = attempt_row(
            job_id=delivery.job_id,
            attempt=delivery.attempt,
            token=delivery.token,
            started_at=delivery.started_at,
            now=now,
            outcome="acked",
            error=None,
            ready_at=delivery.ready_at,
        )
        params.update(zip(st.attempt_names(n), _ATTEMPT_VALUES(row), strict=True))
    st.insert_attempts(len(deliveries)).run(conn, params)
