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
    # Each element is pushed with its parent's place and its own key or index; the path is
    # spelled out only for the element at fault (every valid element cost a string before).
    stack: list[tuple[Any, _Place]] = [(value, None)]
    while stack:
        item, place = stack.pop()
        if item is None or isinstance(item, (bool, int, str)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                where = _spell(path, place)
                raise SerializationError(f"{where}: {item!r} is not a finite number; JSON has none")
            continue
        if isinstance(item, (list, tuple)):
            stack.extend((v, (place, i)) for i, v in enumerate(item))
            continue
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise SerializationError(f"{_spell(path, place)}: key {k!r} is not a string")
                stack.append((v, (place, k)))
            continue
        raise SerializationError(
            f"{_spell(path, place)}: {type(item).__name__} is not a JSON value "
            "(use dict, list, str, int, float, bool or None, or plug in a serializer)"
        )


#: Where an element sits: None for the value itself, else its parent's place and its key
#: (a dict's, always a string) or index (a list's).
_Place = tuple[Any, "str | int"] | None


def _spell(path: str, place: _Place) -> str:
    """``payload['a'][0]`` for the place of an element."""
    parts: list[str] = []
    while place is not None:
        place, key = place
        parts.append(f"[{key!r}]" if isinstance(key, str) else f"[{key}]")
    return path + "".join(reversed(parts))


#: One encoder for every call: ``json.dumps`` with options builds a new one each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class JSONSerializer:
    """Compact UTF-8 JSON; rejects anything that would not round-trip."""

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as compact JSON bytes.

        :raises SerializationError: when ``value`` is not a JSON value.
        """
        validate_json(value)
        return _ENCODER.encode(value).encode()

    def loads(self, data: bytes) -> Any:
        """Decode JSON bytes.

        :raises SerializationError: when ``data`` is not valid JSON.
        """
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SerializationError(f"stored value is not valid JSON: {exc}") from exc
