"""Payload encoding. JSON by default; any object with ``dumps``/``loads`` can replace it."""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import SerializationError

__all__ = ["JSONSerializer", "validate_json"]


def validate_json(value: Any, *, path: str = "payload") -> None:
    """Check that ``value`` is a JSON value: finite numbers, string keys, no custom objects.

    ``json.dumps`` alone would quietly turn integer keys into strings, so the walk is explicit.

    :raises SerializationError: naming the first offending element.
    """
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if item is None or isinstance(item, (bool, int, str)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise SerializationError(f"{where}: {item!r} is not a finite number; JSON has none")
            continue
        if isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
            continue
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise SerializationError(f"{where}: key {k!r} is not a string")
                stack.append((v, f"{where}[{k!r}]"))
            continue
        raise SerializationError(
            f"{where}: {type(item).__name__} is not a JSON value "
            "(use dict, list, str, int, float, bool or None, or plug in a serializer)"
        )


class JSONSerializer:
    """Compact UTF-8 JSON; rejects anything that would not round-trip."""

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as compact JSON bytes.

        :raises SerializationError: when ``value`` is not a JSON value.
        """
        validate_json(value)
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()

    def loads(self, data: bytes) -> Any:
        """Decode JSON bytes.

        :raises SerializationError: when ``data`` is not valid JSON.
        """
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SerializationError(f"stored value is not valid JSON: {exc}") from exc
