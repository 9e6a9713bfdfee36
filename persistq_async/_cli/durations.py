"""Durations on the command line: :func:`duration` is the argparse ``type`` of every option that
takes one (the format is :mod:`persistq_async._durations`')."""

from __future__ import annotations

import argparse

from .._durations import format_duration, parse_duration

__all__ = ["duration", "format_duration", "parse_duration"]


def duration(text: str) -> float:
    """:func:`parse_duration` as an argparse ``type``: a malformed value is a usage error."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
