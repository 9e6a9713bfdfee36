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


def test_durations_in_the_environment_and_in_files(tmp_path: Path) -> None:
    (tmp_path / "persistq.toml").write_text('retention_seconds = "7d"\nbackoff_max = "1h30m"\n')
    options = resolve_options(environ={"PERSISTQ_LEASE_SECONDS": "2m"}, cwd=tmp_path)
    assert options.lease_seconds == 120.0
    assert options.retention_seconds == 7 * 86400.0
    assert options.backoff_max == 5400.0
    assert (
        resolve_options(environ={"PERSISTQ_LEASE_SECONDS": "45"}, cwd=tmp_path).lease_seconds == 45
    )
    with pytest.raises(
        ConfigError,
        match=r"PERSISTQ_LEASE_SECONDS: expected a number, got '7x' \(seconds, or a duration",
    ):
        resolve_options(environ={"PERSISTQ_LEASE_SECONDS": "7x"}, cwd=tmp_path)
    (tmp_path / "persistq.toml").write_text('retention_seconds = "a week"\n')
    with pytest.raises(ConfigError, match=r"retention_seconds.*persistq.toml.*'a week'"):
        resolve_options(cwd=tmp_path)
    with pytest.raises(ConfigError, match="max_attempts"):  # not a duration: stays an integer
        resolve_options(environ={"PERSISTQ_MAX_ATTEMPTS": "5s"}, cwd=tmp_path / "nowhere")
