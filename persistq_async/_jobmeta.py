"""Job metadata: tags and headers, their limits, and how they are stored.

Tags are stored as one text, each tag between two unit separators (``"\\x1fa\\x1fb\\x1f"``), so
that ``LIKE '%\\x1fa\\x1f%'`` finds a tag on SQLite and PostgreSQL alike without JSON functions.
Headers are stored as a JSON object of strings. Jobs without either store NULL.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from .errors import ArgumentError, ArgumentTypeError

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADERS_BYTES",
    "MAX_HEADER_NAME_LENGTH",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "TAG_SEPARATOR",
    "check_headers",
    "check_tags",
    "decode_headers",
    "decode_tags",
    "encode_headers",
    "encode_tags",
    "tag_pattern",
]

#: Most tags on one job.
MAX_TAGS = 16
#: Longest tag, in characters.
MAX_TAG_LENGTH = 64
#: Most headers on one job.
MAX_HEADERS = 32
#: Longest header name, in characters.
MAX_HEADER_NAME_LENGTH = 128
#: Most bytes (UTF-8) of all header names and values of one job together.
MAX_HEADERS_BYTES = 8192
#: Stands before and after every stored tag.
TAG_SEPARATOR = "\x1f"

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def _check_tag(name: str, tag: Any) -> str:
    if not isinstance(tag, str):
        raise ArgumentTypeError(f"{name}: each tag must be a str, got {type(tag).__name__}")
    if not tag:
        raise ArgumentError(f"{name}: a tag must not be empty")
    if len(tag) > MAX_TAG_LENGTH:
        raise ArgumentError(
            f"{name}: a tag has at most {MAX_TAG_LENGTH} characters, "
            f"got {len(tag)} ({tag[:20]!r}...)"
        )
    if _has_control(tag):
        raise ArgumentError(f"{name}: a tag must not contain control characters, got {tag!r}")
    return tag


def check_tags(tags: Any, name: str = "tags") -> tuple[str, ...]:
    """Tags as a tuple of distinct strings, in the order given.

    :raises ArgumentTypeError: not an iterable of str (a lone str is refused too).
    :raises ArgumentError: an empty, too long or control-character tag, or too many tags.
    """
    if tags is None:
        return ()
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
        raise ArgumentTypeError(
            f"{name}: expected a list of str, got {type(tags).__name__} (wrap one tag in a list)"
        )
    checked = tuple(dict.fromkeys(_check_tag(name, t) for t in tags))
    if len(checked) > MAX_TAGS:
        raise ArgumentError(f"{name}: at most {MAX_TAGS} tags, got {len(checked)}")
    return checked


def check_headers(headers: Any) -> dict[str, str]:
    """Headers as a dict of str to str.

    :raises ArgumentTypeError: not a mapping of str to str.
    :raises ArgumentError: too many, a bad name, or too many bytes in all.
    """
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise ArgumentTypeError(
            f"headers: expected a dict of str to str, got {type(headers).__name__}"
        )
    if len(headers) > MAX_HEADERS:
        raise ArgumentError(f"headers: at most {MAX_HEADERS} headers, got {len(headers)}")
    checked: dict[str, str] = {}
    size = 0
    for key, value in headers.items():
        if not isinstance(key, str):
            raise ArgumentTypeError(f"headers: names must be str, got {type(key).__name__}")
        if not isinstance(value, str):
            raise ArgumentTypeError(
                f"headers: the value of {key!r} must be a str, got {type(value).__name__}"
            )
        if not key or len(key) > MAX_HEADER_NAME_LENGTH or _has_control(key):
            raise ArgumentError(
                f"headers: a name must be 1 to {MAX_HEADER_NAME_LENGTH} characters without "
                f"control characters, got {key[:40]!r}"
            )
        if "\x00" in value:
            raise ArgumentError(f"headers: the value of {key!r} must not contain NUL")
        size += len(key.encode()) + len(value.encode())
        checked[key] = value
    if size > MAX_HEADERS_BYTES:
        raise ArgumentError(
            f"headers: at most {MAX_HEADERS_BYTES} bytes of names and values, got {size}"
        )
    return checked


def encode_tags(tags: tuple[str, ...]) -> str | None:
    """The stored form of ``tags`` (None for none)."""
    if not tags:
        return None
    return TAG_SEPARATOR + TAG_SEPARATOR.join(tags) + TAG_SEPARATOR


def decode_tags(stored: str | None) -> tuple[str, ...]:
    """Tags from their stored form."""
    if not stored:
        return ()
    return tuple(t for t in stored.split(TAG_SEPARATOR) if t)


def tag_pattern(tag: str) -> str:
    """The substring that a job's stored tags contain iff it has ``tag``."""
    return TAG_SEPARATOR + tag + TAG_SEPARATOR


def encode_headers(headers: Mapping[str, str]) -> str | None:
    """The stored form of ``headers`` (None for none)."""
    if not headers:
        return None
    return json.dumps(dict(headers), ensure_ascii=False, separators=(",", ":"))


def decode_headers(stored: str | None) -> Mapping[str, str]:
    """Headers from their stored form, read-only."""
    if not stored:
        return _EMPTY
    return _decode_headers(stored)


# The jobs of one put_many store the same headers, and pools claim them together: decoding
# each distinct form once also hands a tracer the same object, so it can reuse what it read.
@functools.lru_cache(maxsize=64)
def _decode_headers(stored: str) -> Mapping[str, str]:
    value = json.loads(stored)
    return MappingProxyType({str(k): str(v) for k, v in value.items()})
