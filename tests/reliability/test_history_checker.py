"""The history checker of the reliability suite, on small hand-made histories.

The database is a real one (the library puts, claims and acks); the logs are written by hand, so
each kind of anomaly the checker must report can be made exactly once. A checker that passes
everything would make the chaos tests worthless: each anomaly below must make it invalid.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

import persistq_async as pq

from ._history import HistoryLog, check, read_events, throughput_windows

QUEUE = "chaos"


class History:
    """A database made by the library, and a log written by hand."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "h.db"
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.log = HistoryLog(self.logs / "hand.jsonl")
        #: key -> job id, for the jobs put
        self.ids: dict[str, int] = {}
        #: job id -> lease token of the delivery that acked it
        self.tokens: dict[int, str] = {}

    async def put(self, *keys: str, log: bool = True) -> list[int]:
        """Put a job per key, logging put-begin/put-ok unless ``log`` is false."""
        async with pq.Queue(self.db, name=QUEUE) as q:
            found = []
            for key in keys:
                if log:
                    self.log.write("put-begin", k=key)
                job_id = await q.put({"k": key})
                if log:
                    self.log.write("put-ok", k=key, id=job_id)
                self.ids[key] = job_id
                found.append(job_id)
        return found

    async def consume(self, count: int, *, log: bool = True) -> list[int]:
        """Claim and ack ``count`` jobs (FIFO), logging claimed/acked unless ``log`` is false."""
        done = []
        async with pq.Queue(self.db, name=QUEUE) as q:
            for _ in range(count):
                job = await q.get(timeout=5)
                if log:
                    self.log.write(
                        "claimed",
                        id=job.id,
                        token=job.lease_token,
                        attempt=job.attempts,
                        k=job.payload["k"],
                    )
                await job.ack()
                if log:
                    self.log.write("acked", id=job.id, token=job.lease_token)
                self.tokens[job.id] = job.lease_token
                done.append(job.id)
        return done

    def write(self, event: str, **fields: Any) -> None:
        self.log.write(event, **fields)

    def sql(self, statement: str, *params: Any) -> None:
        conn = sqlite3.connect(self.db, isolation_level=None)
        try:
            conn.execute(statement, params)
        finally:
            conn.close()

    def check(self, *, final: bool = True) -> Any:
        self.log.close()
        return check(self.db, self.logs, queue=QUEUE, final=final)


@pytest.fixture
def history(tmp_path: Path) -> History:
    return History(tmp_path)


async def test_a_clean_history_is_valid(history: History) -> None:
    await history.put("a:0", "a:1", "a:2")
    await history.consume(3)
    report = history.check()
    assert report.valid, report
    assert report.put_begin == report.put_ok == report.claims == report.acks == 3
    assert report.states == {"done": 3}
    assert (report.lost, report.unexpected, report.duplicated, report.double_acked) == (0,) * 4
    assert report.integrity == "ok"
    assert report.figures()["valid"] is True


async def test_a_returned_put_missing_from_the_database_is_lost(history: History) -> None:
    await history.put("a:0")
    await history.consume(1)
    history.write("put-begin", k="a:1")
    history.write("put-ok", k="a:1", id=999)
    report = history.check()
    assert not report.valid
    assert report.lost == 1
    assert report.examples["lost"][0]["id"] == 999


async def test_a_put_whose_row_has_another_payload_is_lost(history: History) -> None:
    [first, second] = await history.put("a:0", "a:1", log=False)
    history.write("put-begin", k="a:0")
    history.write("put-ok", k="a:0", id=second)  # the id of another job
    history.write("put-begin", k="a:1")
    history.write("put-ok", k="a:1", id=first)
    await history.consume(2)
    report = history.check()
    assert report.lost == 2
    assert not report.valid


async def test_an_unfinished_job_is_lost_only_in_a_final_check(history: History) -> None:
    await history.put("a:0", "a:1")
    await history.consume(1)
    history.log.close()
    final = check(history.db, history.logs, final=True)
    assert not final.valid
    assert (final.lost, final.unfinished) == (1, 1)
    assert final.examples["lost"][0]["state"] == "queued"
    midway = check(history.db, history.logs, final=False)
    assert midway.valid, midway
    assert midway.lost == 0


async def test_a_row_nobody_put_is_unexpected(history: History) -> None:
    await history.put("a:0")
    await history.put("ghost:0", log=False)
    await history.consume(2)
    report = history.check()
    assert not report.valid
    assert report.unexpected == 1
    assert report.examples["unexpected"][0]["key"] == "ghost:0"


async def test_an_ack_of_a_job_nobody_put_is_unexpected(history: History) -> None:
    await history.put("a:0")
    await history.consume(1)
    history.write("acked", id=4242, token="t")
    report = history.check()
    assert report.unexpected == 1
    assert not report.valid


async def test_a_put_applied_twice_is_duplicated(history: History) -> None:
    history.write("put-begin", k="a:0")
    await history.put("a:0", log=False)
    [again] = await history.put("a:0", log=False)  # the same payload: a second row
    history.write("put-ok", k="a:0", id=again)
    await history.consume(2)
    report = history.check()
    assert report.duplicated == 1
    assert not report.valid


async def test_a_put_that_committed_but_never_returned_is_recovered(history: History) -> None:
    history.write("put-begin", k="a:0")  # the putter died before put-ok
    await history.put("a:0", log=False)
    await history.put("a:1")
    await history.consume(2)
    report = history.check()
    assert report.valid, report
    assert (report.recovered, report.aborted) == (1, 0)


async def test_a_recovered_job_must_still_finish(history: History) -> None:
    history.write("put-begin", k="a:0")
    await history.put("a:0", log=False)
    report = history.check()
    assert report.recovered == 1
    assert report.unfinished == 1
    assert not report.valid


async def test_a_put_that_never_committed_is_aborted(history: History) -> None:
    history.write("put-begin", k="a:0")
    await history.put("a:1")
    await history.consume(1)
    report = history.check()
    assert report.valid, report
    assert (report.recovered, report.aborted) == (0, 1)


async def test_a_batch_half_present_is_partial(history: History) -> None:
    history.write("put-begin", k="a:0", batch="b0")
    history.write("put-begin", k="a:1", batch="b0")
    await history.put("a:0", log=False)  # only one of the two
    await history.consume(1)
    report = history.check()
    assert report.partial_batches == 1
    assert not report.valid


async def test_a_job_claimed_twice_is_redelivered_and_still_valid(history: History) -> None:
    [job_id] = await history.put("a:0")
    history.write("claimed", id=job_id, token="expired-lease", attempt=1, k="a:0")
    history.write("ack-refused", id=job_id, token="expired-lease", error="lease lost")
    await history.consume(1)
    report = history.check()
    assert report.valid, report
    assert report.redelivered == 1
    assert report.ack_refused == 1


async def test_two_acks_in_the_logs_are_double_acked(history: History) -> None:
    [job_id] = await history.put("a:0")
    await history.consume(1)
    history.write("claimed", id=job_id, token="other", attempt=1, k="a:0")
    history.write("acked", id=job_id, token="other")
    report = history.check()
    assert report.double_acked == 1
    assert not report.valid


async def test_two_acked_attempt_rows_are_double_acked(history: History) -> None:
    [job_id] = await history.put("a:0")
    await history.consume(1, log=False)  # the ack that returned was not logged (killed)
    history.sql(
        "INSERT INTO persistq_attempts (job_id, attempt, lease_token, started_at, finished_at, "
        "outcome) VALUES (?, 2, 'other', 0, 0, 'acked')",
        job_id,
    )
    report = history.check()
    assert report.double_acked == 1
    assert not report.valid


async def test_an_ack_that_returned_on_an_unfinished_job_is_reported(history: History) -> None:
    [job_id] = await history.put("a:0")
    history.write("claimed", id=job_id, token="t", attempt=1, k="a:0")
    history.write("acked", id=job_id, token="t")  # the database never saw it
    report = history.check(final=False)
    assert report.acked_not_done == 1
    assert not report.valid


async def test_a_refused_ack_that_was_applied_is_reported(history: History) -> None:
    [job_id] = await history.put("a:0")
    await history.consume(1, log=False)
    history.write("ack-refused", id=job_id, token=history.tokens[job_id], error="lease lost")
    report = history.check()
    assert report.refused_but_applied == 1
    assert not report.valid


async def test_a_claim_after_the_ack_is_reported(history: History) -> None:
    [job_id] = await history.put("a:0")
    await history.consume(1)
    history.write("claimed", id=job_id, token="later", attempt=2, k="a:0")
    report = history.check()
    assert report.claimed_after_ack == 1
    assert not report.valid


async def test_attempts_beyond_max_attempts_are_reported(history: History) -> None:
    [job_id] = await history.put("a:0")
    await history.consume(1)
    history.sql("UPDATE persistq_jobs SET attempts = max_attempts + 1 WHERE id = ?", job_id)
    report = history.check()
    assert report.over_attempts == 1
    assert not report.valid


async def test_a_failed_integrity_check_is_reported(history: History) -> None:
    await history.put("a:0", "a:1")
    await history.consume(2)
    # An index whose declared column is not the one its entries were built from.
    history.sql("UPDATE persistq_jobs SET priority = 7")
    history.sql("CREATE INDEX test_broken ON persistq_jobs (priority)")
    conn = sqlite3.connect(history.db, isolation_level=None)
    try:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = 'CREATE INDEX test_broken ON persistq_jobs "
            "(max_attempts)' WHERE name = 'test_broken'"
        )
        conn.execute("PRAGMA writable_schema = OFF")
    finally:
        conn.close()
    report = history.check()
    assert report.integrity != "ok"
    assert "test_broken" in report.integrity
    assert not report.valid
    assert any("integrity_check" in p for p in report.problems)


async def test_a_dead_or_cancelled_job_is_finished(history: History) -> None:
    [_, cancelled] = await history.put("a:0", "a:1")
    async with pq.Queue(history.db, name=QUEUE) as q:
        job = await q.get(timeout=5)
        history.write("claimed", id=job.id, token=job.lease_token, attempt=1, k="a:0")
        await job.fail(error="rejected")
        assert await q.cancel(cancelled)
    report = history.check()
    assert report.valid, report
    assert report.states == {"dead": 1, "cancelled": 1}


def test_a_line_cut_by_a_kill_is_ignored_and_a_bad_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    with HistoryLog(path) as log:
        log.write("put-begin", k="a:0")
    with path.open("a") as f:
        f.write('{"e":"put-ok","t":1')  # no newline: the kill came mid-write
    assert [e["e"] for e in read_events(path)] == ["put-begin"]
    with path.open("a") as f:
        f.write("\n")  # now a complete line that is not JSON
    with pytest.raises(ValueError, match="not a JSON line"):
        read_events(path)
    with pytest.raises(ValueError, match="unknown history event"), HistoryLog(path) as log:
        log.write("put-maybe", k="a:1")


def test_throughput_windows_count_puts_first_claims_and_backlog() -> None:
    events = [
        {"e": "put-ok", "t": 100.0, "id": 1},
        {"e": "put-ok", "t": 100.2, "id": 2},
        {"e": "put-ok", "t": 100.4, "id": 3},
        {"e": "claimed", "t": 100.5, "id": 1},
        {"e": "claimed", "t": 101.2, "id": 1},  # a redelivery: not a first claim
        {"e": "claimed", "t": 101.3, "id": 2},
        {"e": "put-ok", "t": 101.5, "id": 4},
        {"e": "put-ok", "t": 102.5, "id": 5},
    ]
    windows = throughput_windows(events, width=1.0)
    assert [(w["puts"], w["claims"], w["backlog"]) for w in windows] == [
        (3, 1, 0),
        (1, 1, 2),
        (1, 0, 2),
    ]
