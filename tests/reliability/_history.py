"""Operation histories of producer and consumer processes, and a checker in the style of
Jepsen's total-queue checker (not a test module).

**The log.** Every process appends to a file of its own (:class:`HistoryLog`), one JSON object
per line, written and flushed before the next operation starts, so that after a ``kill -9`` the
file holds exactly the events that had happened (a last line without its newline was cut by the
kill and is ignored). Each event has ``e`` (its kind), ``t`` (``time.time()``) and ``pid``:

- ``put-begin``: ``k`` (the payload's unique key, ``{"k": key}`` is the payload), ``batch``
  (the ``put_many`` it belongs to, else absent), written before ``put`` is called;
- ``put-ok``: ``k`` and ``id``, written after ``put`` returned;
- ``claimed``: ``id``, ``token``, ``attempt``, ``k``, written after ``get``/the claim returned;
- ``acked``: ``id`` and ``token``, written after ``ack`` returned;
- ``ack-refused``: ``id``, ``token`` and ``error``, written after ``ack`` raised ``LeaseLost``.

**The checker** (:func:`check`) reads every log and the final database (with ``sqlite3``, after
every process stopped) and reports, by job:

- *lost*: ``put-ok`` but no such row (or a row with another payload), or, in a final check, a row
  that is not ``done``/``dead``/``cancelled``;
- *unexpected*: a row whose payload no ``put-begin`` announced, or a ``claimed``/``acked`` id that
  is in neither the database nor any ``put-ok``;
- *duplicated*: one payload key in more than one row (a put applied twice);
- *recovered*: ``put-begin`` without ``put-ok`` (the putter died) yet the row exists: allowed;
- *aborted*: ``put-begin`` without ``put-ok`` and no row: allowed (the put never committed);
- *partial batches*: a ``put_many`` that is neither wholly present nor wholly absent;
- *redelivered*: claimed more than once (allowed: at-least-once);
- *double-acked*: acked under two different lease tokens, by the logs or by the database's
  attempt rows (more than one ``acked`` row);
- *acked not done*: ``ack`` returned but the row is not ``done`` (an ack was lost);
- *refused but applied*: an ``ack-refused`` token that the database recorded as acked;
- *claimed after ack*: a claim of an attempt number above the acked one (done is not final);
- *over attempts*: ``attempts > max_attempts``;
- ``PRAGMA integrity_check``.

:attr:`Report.valid` holds when lost, unexpected and double-acked are 0 and the integrity check
is ``ok`` (the issue's definition), and, stricter, when duplicated, partial batches, acked not
done, refused but applied, claimed after ack and over attempts are 0 too, and in a final check
no row (recovered ones included) is left unfinished.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "EVENTS",
    "FINAL_STATES",
    "HistoryLog",
    "Report",
    "check",
    "log_files",
    "read_events",
    "throughput_windows",
]

EVENTS = frozenset({"put-begin", "put-ok", "claimed", "acked", "ack-refused"})
FINAL_STATES = frozenset({"done", "dead", "cancelled"})
#: Examples of each kind of problem kept in a report (the counts are exact).
EXAMPLES = 10


class HistoryLog:
    """One process's history file: each :meth:`write` appends one line and flushes it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = self.path.open("a", encoding="utf-8")
        self._pid = os.getpid()

    def write(self, event: str, **fields: Any) -> None:
        """Append ``event`` with ``fields``, stamped with the time and pid, and flush."""
        if event not in EVENTS:
            raise ValueError(f"unknown history event {event!r}")
        record = {"e": event, "t": time.time(), "pid": self._pid, **fields}
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> HistoryLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def log_files(where: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The ``*.jsonl`` files of a directory, or the given files."""
    if isinstance(where, (str, os.PathLike)):
        path = Path(where)
        return sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    return [Path(p) for p in where]


def read_events(
    where: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[dict[str, Any]]:
    """Every event of the logs, ordered by time. A last line cut by a kill is dropped; any
    other malformed line is an error of the harness and raises ``ValueError``."""
    events: list[dict[str, Any]] = []
    for path in log_files(where):
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        # After the last newline: "" for a complete file, else a line cut by a kill.
        for number, line in enumerate(lines[:-1], 1):
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not a JSON line: {line!r}") from exc
            if not isinstance(event, dict) or event.get("e") not in EVENTS:
                raise ValueError(f"{path}:{number}: not a history event: {line!r}")
            events.append(event)
    events.sort(key=lambda e: e["t"])
    return events


@dataclass
class Report:
    """What :func:`check` found. Counts are of jobs (or payload keys); ``examples`` holds a few
    of each problem for the failure message."""

    final: bool
    integrity: str = "ok"
    put_begin: int = 0
    put_ok: int = 0
    claims: int = 0
    acks: int = 0
    ack_refused: int = 0
    rows: int = 0
    states: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    unexpected: int = 0
    duplicated: int = 0
    recovered: int = 0
    aborted: int = 0
    partial_batches: int = 0
    redelivered: int = 0
    redelivered_db: int = 0
    double_acked: int = 0
    acked_not_done: int = 0
    refused_but_applied: int = 0
    claimed_after_ack: int = 0
    over_attempts: int = 0
    unfinished: int = 0
    examples: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    def note(self, kind: str, example: Any) -> None:
        """Count one problem of ``kind`` and keep it as an example."""
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(example)

    @property
    def problems(self) -> list[str]:
        """The invariants that do not hold, each with its count and examples."""
        kinds = [
            "lost",
            "unexpected",
            "duplicated",
            "double_acked",
            "partial_batches",
            "acked_not_done",
            "refused_but_applied",
            "claimed_after_ack",
            "over_attempts",
        ]
        if self.final:
            kinds.append("unfinished")
        found = [
            f"{kind}={getattr(self, kind)} e.g. {self.examples.get(kind, [])}"
            for kind in kinds
            if getattr(self, kind)
        ]
        if self.integrity != "ok":
            found.append(f"integrity_check: {self.integrity}")
        return found

    @property
    def valid(self) -> bool:
        """No invariant broken (see the module docstring)."""
        return not self.problems

    def figures(self) -> dict[str, Any]:
        """The counts, as a JSON-able dict."""
        names = [
            "put_begin",
            "put_ok",
            "claims",
            "acks",
            "ack_refused",
            "rows",
            "lost",
            "unexpected",
            "duplicated",
            "recovered",
            "aborted",
            "partial_batches",
            "redelivered",
            "redelivered_db",
            "double_acked",
            "acked_not_done",
            "refused_but_applied",
            "claimed_after_ack",
            "over_attempts",
            "unfinished",
        ]
        out: dict[str, Any] = {name: getattr(self, name) for name in names}
        out["states"] = dict(self.states)
        out["integrity"] = self.integrity
        out["valid"] = self.valid
        return out

    def __str__(self) -> str:
        verdict = "valid" if self.valid else "INVALID: " + "; ".join(self.problems)
        return f"{verdict}\n{json.dumps(self.figures(), sort_keys=True)}"


@dataclass(frozen=True)
class _Row:
    id: int
    queue: str
    state: str
    key: str | None
    attempts: int
    max_attempts: int


def _key_of(payload: bytes) -> str | None:
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(value, dict) and isinstance(value.get("k"), str):
        return str(value["k"])
    return None


def _read_db(
    db_path: str | os.PathLike[str], queue: str | None
) -> tuple[str, list[_Row], list[tuple[int, str, int]]]:
    """(integrity, job rows, acked attempts as (job_id, token, attempt))."""
    conn = sqlite3.connect(os.fspath(db_path), timeout=30)
    try:
        try:
            found = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            integrity = "ok" if found == ["ok"] else "; ".join(map(str, found[:5]))
        except sqlite3.DatabaseError as exc:
            return f"{type(exc).__name__}: {exc}", [], []
        where, params = ("WHERE queue = ?", (queue,)) if queue is not None else ("", ())
        rows = [
            _Row(
                id=r[0], queue=r[1], state=r[2], key=_key_of(r[3]), attempts=r[4], max_attempts=r[5]
            )
            for r in conn.execute(
                "SELECT id, queue, state, payload, attempts, max_attempts FROM persistq_jobs "
                + where,
                params,
            )
        ]
        acked = [
            (int(r[0]), str(r[1]), int(r[2]))
            for r in conn.execute(
                "SELECT job_id, lease_token, attempt FROM persistq_attempts WHERE outcome = 'acked'"
            )
        ]
        return integrity, rows, acked
    finally:
        conn.close()


def check(
    db_path: str | os.PathLike[str],
    logs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    queue: str | None = None,
    final: bool = True,
) -> Report:
    """Check the histories in ``logs`` (a directory of ``*.jsonl`` or files) against the
    database. ``final``: every process has stopped and the queue was drained, so every job must
    have finished; otherwise unfinished jobs are fine. ``queue``: only that queue's rows."""
    events = read_events(logs)
    report = Report(final=final)
    integrity, rows, acked_rows = _read_db(db_path, queue)
    report.integrity = integrity
    report.rows = len(rows)
    report.states = dict(Counter(r.state for r in rows))

    by_id = {r.id: r for r in rows}
    by_key: dict[str | None, list[_Row]] = defaultdict(list)
    for r in rows:
        by_key[r.key].append(r)

    begun: set[str] = set()
    batches: dict[str, set[str]] = defaultdict(set)
    put_ok: dict[str, int] = {}
    twice: dict[str, set[int]] = defaultdict(set)  # key -> ids of the jobs it became
    claims: dict[int, list[dict[str, Any]]] = defaultdict(list)
    acks: dict[int, set[str]] = defaultdict(set)
    refused: set[tuple[int, str]] = set()
    for event in events:
        kind = event["e"]
        if kind == "put-begin":
            report.put_begin += 1
            begun.add(event["k"])
            if event.get("batch") is not None:
                batches[event["batch"]].add(event["k"])
        elif kind == "put-ok":
            report.put_ok += 1
            if event["k"] in put_ok and put_ok[event["k"]] != event["id"]:
                twice[event["k"]].update((put_ok[event["k"]], event["id"]))
            put_ok[event["k"]] = event["id"]
        elif kind == "claimed":
            report.claims += 1
            claims[event["id"]].append(event)
        elif kind == "acked":
            report.acks += 1
            acks[event["id"]].add(event["token"])
        else:
            report.ack_refused += 1
            refused.add((event["id"], event["token"]))

    # Puts: every returned put is in the database with its payload (and, at the end, finished).
    for key, job_id in put_ok.items():
        row = by_id.get(job_id)
        if row is None or row.key != key:
            report.note("lost", {"key": key, "id": job_id, "row": row and row.key})
        elif final and row.state not in FINAL_STATES:
            report.note("lost", {"key": key, "id": job_id, "state": row.state})
    for key in sorted(begun - put_ok.keys()):
        if by_key.get(key):
            report.recovered += 1
        else:
            report.aborted += 1
    for batch, keys in batches.items():
        present = {k for k in keys if by_key.get(k)}
        if present and present != keys:
            report.note(
                "partial_batches", {"batch": batch, "present": len(present), "of": len(keys)}
            )

    # Rows: each announced by a put-begin, once; finished at the end; attempts within bounds.
    for key, found in by_key.items():
        if key is None or key not in begun:
            for r in found:
                report.note("unexpected", {"id": r.id, "key": key})
        elif len(found) > 1:
            twice[key].update(r.id for r in found)
    for key, ids in sorted(twice.items()):
        report.note("duplicated", {"key": key, "ids": sorted(ids)})
    for r in rows:
        if final and r.state not in FINAL_STATES:
            report.note("unfinished", {"id": r.id, "key": r.key, "state": r.state})
        if r.attempts > r.max_attempts:
            report.note(
                "over_attempts", {"id": r.id, "attempts": r.attempts, "max": r.max_attempts}
            )

    # Deliveries and acks.
    known_ids = set(by_id) | set(put_ok.values())
    for job_id in sorted(set(claims) | set(acks) | {i for i, _ in refused}):
        if job_id not in known_ids:
            report.note("unexpected", {"id": job_id, "seen": "claimed/acked, never put"})
    for got in claims.values():
        if len({c["token"] for c in got}) > 1:
            report.redelivered += 1
    report.redelivered_db = sum(1 for r in rows if r.attempts > 1)

    db_acks: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for job_id, token, attempt in acked_rows:
        if job_id in by_id:
            db_acks[job_id].append((token, attempt))
    for job_id in sorted(set(acks) | set(db_acks)):
        tokens = acks.get(job_id, set()) | {t for t, _ in db_acks.get(job_id, [])}
        if len(tokens) > 1 or len(db_acks.get(job_id, [])) > 1:
            report.note(
                "double_acked",
                {
                    "id": job_id,
                    "tokens": sorted(tokens),
                    "acked rows": len(db_acks.get(job_id, [])),
                },
            )
    for job_id in sorted(acks):
        row = by_id.get(job_id)
        if row is None or row.state != "done":
            report.note("acked_not_done", {"id": job_id, "state": row and row.state})
    for job_id, token in sorted(refused):
        if any(t == token for t, _ in db_acks.get(job_id, [])):
            report.note("refused_but_applied", {"id": job_id, "token": token})
    for job_id, found_acks in db_acks.items():
        last = max(a for _, a in found_acks)
        later = [c for c in claims.get(job_id, []) if c["attempt"] > last]
        if later:
            report.note(
                "claimed_after_ack",
                {"id": job_id, "acked attempt": last, "claims": [c["attempt"] for c in later]},
            )
    return report


def throughput_windows(events: list[dict[str, Any]], width: float = 1.0) -> list[dict[str, float]]:
    """Per window of ``width`` seconds from the first ``put-ok`` to the last: the jobs put
    (``put-ok``), the jobs claimed for the first time, and the backlog (put minus first claims)
    at the window's start."""
    put_times = sorted(e["t"] for e in events if e["e"] == "put-ok")
    first_claims: dict[int, float] = {}
    for e in events:
        if e["e"] == "claimed":
            first_claims.setdefault(e["id"], e["t"])
    claim_times = sorted(first_claims.values())
    if not put_times:
        return []
    start, end = put_times[0], put_times[-1]
    windows = []
    t = start
    while t < end:
        u = t + width
        windows.append(
            {
                "start": t - start,
                "puts": sum(1 for p in put_times if t <= p < u),
                "claims": sum(1 for c in claim_times if t <= c < u),
                "backlog": sum(1 for p in put_times if p < t)
                - sum(1 for c in claim_times if c < t),
            }
        )
        t = u
    return windows
