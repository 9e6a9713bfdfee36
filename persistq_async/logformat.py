"""Log records as JSON lines: one object per record, with the structured ``extra`` fields.

``persistq worker --log-format json`` installs :class:`JSONFormatter` on the root handler; an
application can do the same with ``handler.setFormatter(JSONFormatter())``. Each line holds
``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, every field passed in ``extra``
(``action``, ``job_id``, ``queue``, ``pool``, ...), and ``exception`` when one was logged.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["JSONFormatter"]

# The attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName"}
)


class JSONFormatter(logging.Formatter):
    """Formats each record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line."""
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in data:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra field that JSON cannot hold is written as its text, never lost
        # and never an error in the middle of logging.
        return json.dumps(data, default=str, ensure_ascii=False)
