"""The README's command reference: one row per sub-command of the parser, and every example
in it parses (options exist, durations are well formed)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from persistq_async import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def reference() -> dict[str, str]:
    section = README.read_text(encoding="utf-8").split("## The `persistq` command", 1)[1]
    rows = re.findall(r"^\| `(\w+)` \| .*? \| `(persistq [^`]*)` \|$", section, re.MULTILINE)
    return dict(rows)


def test_every_command_is_in_the_reference_and_every_example_parses() -> None:
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    rows = reference()
    assert set(rows) == set(sub.choices)
    for command, example in rows.items():
        words = shlex.split(example.replace("\\|", "|").split("||")[0])
        assert words[:2] == ["persistq", command]
        args = parser.parse_args(words[1:])
        assert args.command == command
