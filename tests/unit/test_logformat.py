"""JSONFormatter: one JSON object per record, with the structured fields."""

from __future__ import annotations

import json
import logging
from datetime import datetime

from persistq_async.logformat import JSONFormatter


def make_record(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("persistq_async.test")
    return logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, "job %d done", (7,), None, extra=extra
    )


def test_fields_and_extra() -> None:
    line = JSONFormatter().format(make_record(action="job_acked", job_id=7, queue="q"))
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "job 7 done"
    assert data["level"] == "WARNING"
    assert data["logger"] == "persistq_async.test"
    assert (data["action"], data["job_id"], data["queue"]) == ("job_acked", 7, "q")
    assert datetime.fromisoformat(data["time"]).utcoffset() is not None
    assert "args" not in data
    assert "msg" not in data


def test_a_value_json_cannot_hold_is_written_as_text() -> None:
    data = json.loads(JSONFormatter().format(make_record(action="x", thing={1, 2}, at=object())))
    assert data["thing"] == "{1, 2}"
    assert data["at"].startswith("<object object")


def test_an_exception_is_one_field_on_the_same_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logger = logging.getLogger("persistq_async.test")
        import sys

        record = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JSONFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]
