"""explain_options: every option's value and the layer it came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from persistq_async import ConfigError
from persistq_async.config import OPTION_NAMES, explain_options, resolve_options


def test_each_value_names_its_source(tmp_path: Path) -> None:
    (tmp_path / "persistq.toml").write_text('durability = "normal"\nmax_attempts = 3\n')
    explained = explain_options(
        {"url": "x.db"},
        environ={"PERSISTQ_MAX_ATTEMPTS": "9", "PERSISTQ_LEASE_SECONDS": "10"},
        cwd=tmp_path,
    )
    assert set(explained) == OPTION_NAMES
    assert explained["url"] == ("x.db", "keyword argument")
    assert explained["max_attempts"] == (9, "environment variable PERSISTQ_MAX_ATTEMPTS")
    assert explained["lease_seconds"] == (10.0, "environment variable PERSISTQ_LEASE_SECONDS")
    assert explained["durability"] == ("normal", str(tmp_path / "persistq.toml"))
    assert explained["poll_interval"] == (0.1, "default")
    options = resolve_options({"url": "x.db"}, environ={"PERSISTQ_MAX_ATTEMPTS": "9"}, cwd=tmp_path)
    assert options.max_attempts == 9  # the same resolution


def test_a_bad_value_is_the_same_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PERSISTQ_LEASE_SECONDS"):
        explain_options(environ={"PERSISTQ_LEASE_SECONDS": "soon"}, cwd=tmp_path)
