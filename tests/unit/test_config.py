"""Option resolution: keyword > environment > file > default; errors that name their source.

Every test passes an explicit ``environ`` and a ``tmp_path`` cwd, so neither the real environment
nor the real working directory can leak in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from persistq_async import config
from persistq_async.config import OPTION_NAMES, Options, resolve_options
from persistq_async.errors import ArgumentError, ConfigError, PersistQError


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def resolve(cwd: Path, keywords: dict[str, Any] | None = None, /, **environ: str) -> Options:
    return resolve_options(keywords, environ=environ, cwd=cwd)


# --- defaults ------------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    options = resolve(tmp_path)
    assert options == Options()
    assert options.url is None
    assert options.lease_seconds == config.DEFAULT_LEASE_SECONDS == 30.0
    assert options.max_attempts == config.DEFAULT_MAX_ATTEMPTS == 5
    assert options.backoff_base == config.DEFAULT_BACKOFF_BASE == 1.0
    assert options.backoff_max == config.DEFAULT_BACKOFF_MAX == 3600.0
    assert options.poll_interval == config.DEFAULT_POLL_INTERVAL == 0.1
    assert options.retention_seconds == config.DEFAULT_RETENTION_SECONDS == 7 * 86400.0
    assert options.durability == config.DEFAULT_DURABILITY == "full"
    assert options.busy_timeout == config.DEFAULT_BUSY_TIMEOUT == 5.0
    assert config.DEFAULT_DATABASE_FILE == "persistq.db"


def test_option_names_are_the_fields() -> None:
    assert {f.name for f in dataclasses.fields(Options)} == OPTION_NAMES
    assert isinstance(OPTION_NAMES, frozenset)
    # Every option has exactly one type and one range rule.
    kinds = [config._FLOAT_OPTIONS, config._INT_OPTIONS, config._STR_OPTIONS]
    assert frozenset().union(*kinds) == OPTION_NAMES
    assert sum(len(kind) for kind in kinds) == len(OPTION_NAMES)
    assert set(config._RULES) == OPTION_NAMES


def test_options_is_frozen_slotted_and_keyword_only() -> None:
    options = Options()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.lease_seconds = 1.0  # type: ignore[misc]
    assert not hasattr(options, "__dict__")
    with pytest.raises(TypeError):
        Options("sqlite+aiosqlite:///x.db")  # type: ignore[call-arg]


# --- each layer ----------------------------------------------------------------------------------


def test_keyword_layer(tmp_path: Path) -> None:
    options = resolve(
        tmp_path,
        {"url": "sqlite+aiosqlite:///k.db", "lease_seconds": 2, "durability": "normal"},
    )
    assert options.url == "sqlite+aiosqlite:///k.db"
    assert options.lease_seconds == 2.0
    assert isinstance(options.lease_seconds, float)
    assert options.durability == "normal"


def test_keyword_none_counts_as_not_given(tmp_path: Path) -> None:
    options = resolve(tmp_path, {"url": None, "lease_seconds": None}, PERSISTQ_LEASE_SECONDS="7")
    assert options.url is None
    assert options.lease_seconds == 7.0


def test_environment_layer(tmp_path: Path) -> None:
    options = resolve(
        tmp_path,
        PERSISTQ_URL="postgresql+asyncpg://db/q",
        PERSISTQ_LEASE_SECONDS="30",
        PERSISTQ_BACKOFF_BASE="2.5",
        PERSISTQ_MAX_ATTEMPTS="9",
        PERSISTQ_DURABILITY="normal",
        PERSISTQ_BUSY_TIMEOUT="0",
    )
    assert options.url == "postgresql+asyncpg://db/q"
    assert options.lease_seconds == 30.0
    assert options.backoff_base == 2.5
    assert options.max_attempts == 9
    assert options.durability == "normal"
    assert options.busy_timeout == 0.0


def test_unknown_environment_variables_are_ignored(tmp_path: Path) -> None:
    options = resolve(
        tmp_path,
        PERSISTQ_TEST_PG_URL="postgresql://x",
        PERSISTQ_REQUIRE_PG="1",
        PERSISTQ_LEASE_SECS="abc",
        lease_seconds="abc",  # lower case is not our spelling
    )
    assert options == Options()


def test_environ_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSISTQ_MAX_ATTEMPTS", "3")
    assert resolve_options(cwd=tmp_path).max_attempts == 3


def test_cwd_defaults_to_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "persistq.toml", "max_attempts = 4\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_options(environ={}).max_attempts == 4


def test_persistq_toml_layer(tmp_path: Path) -> None:
    write(
        tmp_path,
        "persistq.toml",
        'url = "sqlite+aiosqlite:///f.db"\nlease_seconds = 12\npoll_interval = 0.5\n'
        'durability = "normal"\nmax_attempts = 2\n',
    )
    options = resolve(tmp_path)
    assert options.url == "sqlite+aiosqlite:///f.db"
    assert options.lease_seconds == 12.0
    assert isinstance(options.lease_seconds, float)
    assert options.poll_interval == 0.5
    assert options.durability == "normal"
    assert options.max_attempts == 2


def test_pyproject_tool_table_layer(tmp_path: Path) -> None:
    write(
        tmp_path,
        "pyproject.toml",
        '[project]\nname = "app"\n\n[tool.persistq]\nlease_seconds = 8.5\nmax_attempts = 7\n',
    )
    options = resolve(tmp_path)
    assert options.lease_seconds == 8.5
    assert options.max_attempts == 7


@pytest.mark.parametrize(
    "text",
    [
        '[project]\nname = "app"\n',
        "[tool.ruff]\nline-length = 100\n",
        "",
    ],
)
def test_pyproject_without_tool_persistq_is_fine(tmp_path: Path, text: str) -> None:
    write(tmp_path, "pyproject.toml", text)
    assert resolve(tmp_path) == Options()


def test_persistq_toml_wins_over_pyproject(tmp_path: Path) -> None:
    # Chosen rule: persistq.toml, when present, is the only file read; the two are never merged.
    write(tmp_path, "persistq.toml", "lease_seconds = 11\n")
    write(tmp_path, "pyproject.toml", "[tool.persistq]\nlease_seconds = 22\nmax_attempts = 9\n")
    options = resolve(tmp_path)
    assert options.lease_seconds == 11.0
    assert options.max_attempts == config.DEFAULT_MAX_ATTEMPTS


def test_pyproject_ignored_when_persistq_toml_present_even_if_broken(tmp_path: Path) -> None:
    write(tmp_path, "persistq.toml", "max_attempts = 3\n")
    write(tmp_path, "pyproject.toml", "this is [not toml\n")
    assert resolve(tmp_path).max_attempts == 3


# --- precedence ----------------------------------------------------------------------------------


def test_precedence_keyword_env_file_default(tmp_path: Path) -> None:
    write(
        tmp_path,
        "persistq.toml",
        "lease_seconds = 1\nmax_attempts = 1\nbackoff_base = 0.5\n",
    )
    options = resolve(
        tmp_path,
        {"lease_seconds": 3},
        PERSISTQ_LEASE_SECONDS="2",
        PERSISTQ_MAX_ATTEMPTS="2",
    )
    assert options.lease_seconds == 3.0  # keyword beats environment and file
    assert options.max_attempts == 2  # environment beats file
    assert options.backoff_base == 0.5  # file beats default
    assert options.backoff_max == config.DEFAULT_BACKOFF_MAX  # default


def test_bad_lower_layer_still_fails_when_overridden(tmp_path: Path) -> None:
    # Every layer is checked in full so a typo in a file never hides behind a keyword.
    write(tmp_path, "persistq.toml", 'lease_seconds = "soon"\n')
    with pytest.raises(ConfigError, match=r"persistq\.toml"):
        resolve(tmp_path, {"lease_seconds": 3})


# --- unknown options -----------------------------------------------------------------------------


def test_unknown_keyword(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, {"lease_secs": 3})
    message = str(info.value)
    assert message.startswith("option 'lease_secs' from keyword argument: unknown option")
    assert "did you mean 'lease_seconds'?" in message
    assert "known: backoff_base, backoff_max, busy_timeout" in message


def test_unknown_keyword_given_as_none_still_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'leese' from keyword argument: unknown option"):
        resolve(tmp_path, {"leese": None})


def test_unknown_key_in_persistq_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "persistq.toml", "lease_secs = 3\n")
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path)
    assert str(info.value).startswith(f"option 'lease_secs' from {path}: unknown option")


def test_unknown_key_in_pyproject_table(tmp_path: Path) -> None:
    path = write(tmp_path, "pyproject.toml", "[tool.persistq]\nretries = 3\n")
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path)
    assert str(info.value).startswith(
        f"option 'retries' from {path} [tool.persistq]: unknown option"
    )


def test_nested_table_in_persistq_toml_is_unknown(tmp_path: Path) -> None:
    write(tmp_path, "persistq.toml", "[queue]\nlease_seconds = 3\n")
    with pytest.raises(ConfigError, match=r"option 'queue' from .*persistq\.toml: unknown option"):
        resolve(tmp_path)


def test_tool_persistq_not_a_table(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", '[tool]\npersistq = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[tool.persistq\]: expected a table"):
        resolve(tmp_path)


# --- ill-typed values, each layer ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("lease_seconds", "abc", "expected a number, got 'abc'"),
        ("lease_seconds", "30", "expected a number, got '30'"),
        ("lease_seconds", True, "expected a number, got True"),
        ("poll_interval", False, "expected a number, got False"),
        ("lease_seconds", float("nan"), "expected a finite number, got nan"),
        ("retention_seconds", float("inf"), "expected a finite number, got inf"),
        ("max_attempts", True, "expected an integer, got True"),
        ("max_attempts", 5.0, "expected an integer, got 5.0"),
        ("max_attempts", "5", "expected an integer, got '5'"),
        ("durability", 1, "expected a string, got 1"),
        ("url", 5, "expected a string, got 5"),
        ("url", Path("q.db"), "expected a string, got "),
    ],
)
def test_ill_typed_keyword(tmp_path: Path, name: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, {name: value})
    assert str(info.value).startswith(f"option {name!r} from keyword argument: {expected}")


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "lease_seconds",
            "abc",
            "expected a number, got 'abc' (seconds, or a duration such as 30s, 15m, 7d)",
        ),
        (
            "lease_seconds",
            "",
            "expected a number, got '' (seconds, or a duration such as 30s, 15m, 7d)",
        ),
        (
            "lease_seconds",
            "true",
            "expected a number, got 'true' (seconds, or a duration such as 30s, 15m, 7d)",
        ),
        ("backoff_max", "inf", "expected a finite number, got inf"),
        ("max_attempts", "5.0", "expected an integer, got '5.0'"),
        ("max_attempts", "five", "expected an integer, got 'five'"),
        ("max_attempts", "5_0", "expected an integer, got '5_0'"),
        ("max_attempts", "", "expected an integer, got ''"),
    ],
)
def test_ill_typed_environment(tmp_path: Path, name: str, text: str, expected: str) -> None:
    variable = "PERSISTQ_" + name.upper()
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, **{variable: text})
    assert str(info.value) == (f"option {name!r} from environment variable {variable}: {expected}")


def test_environment_numbers_accept_surrounding_space(tmp_path: Path) -> None:
    options = resolve(tmp_path, PERSISTQ_MAX_ATTEMPTS=" 4 ", PERSISTQ_LEASE_SECONDS=" 2.5 ")
    assert options.max_attempts == 4
    assert options.lease_seconds == 2.5


@pytest.mark.parametrize(
    ("line", "name", "expected"),
    [
        (
            'lease_seconds = "abc"',
            "lease_seconds",
            "expected a number, got 'abc' (seconds, or a duration such as 30s, 15m, 7d)",
        ),
        ("lease_seconds = true", "lease_seconds", "expected a number, got True"),
        ("max_attempts = 5.0", "max_attempts", "expected an integer, got 5.0"),
        ("max_attempts = false", "max_attempts", "expected an integer, got False"),
        ("durability = 1", "durability", "expected a string, got 1"),
        ("poll_interval = nan", "poll_interval", "expected a finite number, got nan"),
        ("url = [1]", "url", "expected a string, got [1]"),
    ],
)
@pytest.mark.parametrize("file", ["persistq.toml", "pyproject.toml"])
def test_ill_typed_file(tmp_path: Path, file: str, line: str, name: str, expected: str) -> None:
    header = "[tool.persistq]\n" if file == "pyproject.toml" else ""
    path = write(tmp_path, file, f"{header}{line}\n")
    source = f"{path} [tool.persistq]" if file == "pyproject.toml" else str(path)
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path)
    assert str(info.value) == f"option {name!r} from {source}: {expected}"


def test_ints_accepted_for_float_options(tmp_path: Path) -> None:
    options = resolve(tmp_path, dict.fromkeys(config._FLOAT_OPTIONS, 1))
    for name in config._FLOAT_OPTIONS:
        value = getattr(options, name)
        assert value == 1.0
        assert type(value) is float


# --- out-of-range values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("lease_seconds", 0, "must be > 0, got 0.0"),
        ("lease_seconds", -1.5, "must be > 0, got -1.5"),
        ("max_attempts", 0, "must be >= 1, got 0"),
        ("backoff_base", -0.1, "must be >= 0, got -0.1"),
        ("backoff_max", -1, "must be >= 0, got -1.0"),
        ("poll_interval", 0, "must be > 0 and <= 60, got 0.0"),
        ("poll_interval", 60.5, "must be > 0 and <= 60, got 60.5"),
        ("retention_seconds", -1, "must be >= 0, got -1.0"),
        ("busy_timeout", -0.5, "must be >= 0, got -0.5"),
        ("durability", "fast", "must be 'full' or 'normal', got 'fast'"),
        ("durability", "FULL", "must be 'full' or 'normal', got 'FULL'"),
        ("url", "", "must not be empty, got ''"),
    ],
)
def test_out_of_range_keyword(tmp_path: Path, name: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, {name: value})
    assert str(info.value) == f"option {name!r} from keyword argument: {expected}"


@pytest.mark.parametrize(
    ("name", "value"),
    [("lease_seconds", 1e-9), ("max_attempts", 1), ("backoff_base", 0), ("poll_interval", 60)],
)
def test_boundaries_accepted(tmp_path: Path, name: str, value: Any) -> None:
    assert getattr(resolve(tmp_path, {name: value}), name) == value


def test_bad_durability_in_file_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "persistq.toml", 'durability = "fast"\n')
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path)
    assert str(info.value) == (
        f"option 'durability' from {path}: must be 'full' or 'normal', got 'fast'"
    )


def test_bad_durability_in_environment(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match="option 'durability' from environment variable PERSISTQ_DURABILITY: must be",
    ):
        resolve(tmp_path, PERSISTQ_DURABILITY="fast")


def test_backoff_max_below_base_names_both_sources(tmp_path: Path) -> None:
    path = write(tmp_path, "persistq.toml", "backoff_base = 10\n")
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, PERSISTQ_BACKOFF_MAX="5")
    assert str(info.value) == (
        "option 'backoff_max' from environment variable PERSISTQ_BACKOFF_MAX: "
        f"must be >= backoff_base (10.0 from {path}), got 5.0"
    )


def test_backoff_base_above_default_max_names_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, {"backoff_base": 4000})
    assert str(info.value) == (
        "option 'backoff_max' from default: "
        "must be >= backoff_base (4000.0 from keyword argument), got 3600.0"
    )


def test_backoff_max_equal_to_base_is_fine(tmp_path: Path) -> None:
    options = resolve(tmp_path, {"backoff_base": 2, "backoff_max": 2})
    assert options.backoff_base == options.backoff_max == 2.0


# --- Options built directly ----------------------------------------------------------------------


def test_options_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match="option 'lease_seconds' from Options argument: must be"):
        Options(lease_seconds=0)
    with pytest.raises(ConfigError, match="option 'max_attempts' from Options argument"):
        Options(max_attempts=True)
    with pytest.raises(ConfigError, match="option 'backoff_max' from Options argument"):
        Options(backoff_base=5, backoff_max=1)


def test_options_direct_construction_normalises_and_replace_revalidates() -> None:
    options = Options(lease_seconds=3)
    assert type(options.lease_seconds) is float
    with pytest.raises(ConfigError, match="durability"):
        dataclasses.replace(options, durability="fast")


# --- malformed files -----------------------------------------------------------------------------


@pytest.mark.parametrize("file", ["persistq.toml", "pyproject.toml"])
def test_malformed_toml_names_the_file(tmp_path: Path, file: str) -> None:
    path = write(tmp_path, file, "lease_seconds = = 3\n")
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is not None


def test_non_utf8_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "persistq.toml"
    path.write_bytes(b'url = "\xff"\n')
    with pytest.raises(ConfigError, match=r"persistq\.toml"):
        resolve(tmp_path)


def test_directory_named_like_the_file_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "persistq.toml").mkdir()
    assert resolve(tmp_path) == Options()


# --- the error type ------------------------------------------------------------------------------


def test_config_error_is_a_value_error_and_persistq_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, {"lease_seconds": "abc"})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PersistQError)
    assert isinstance(info.value, ArgumentError)
    with pytest.raises(ValueError, match="lease_seconds"):
        resolve(tmp_path, {"lease_seconds": -1})


# --- size limits (issue 12) ----------------------------------------------------------------------


def test_size_limits_default_and_come_from_every_layer(tmp_path: Path) -> None:
    options = resolve(tmp_path)
    assert options.max_payload_bytes == config.DEFAULT_MAX_PAYLOAD_BYTES == 4 * 1024 * 1024
    assert options.max_result_bytes == config.DEFAULT_MAX_RESULT_BYTES == 4 * 1024 * 1024
    write(tmp_path, "persistq.toml", "max_payload_bytes = 1000\nmax_result_bytes = 2000\n")
    options = resolve(tmp_path, PERSISTQ_MAX_RESULT_BYTES="3000")
    assert (options.max_payload_bytes, options.max_result_bytes) == (1000, 3000)
    options = resolve(tmp_path, {"max_payload_bytes": 10}, PERSISTQ_MAX_PAYLOAD_BYTES="20")
    assert options.max_payload_bytes == 10


@pytest.mark.parametrize("name", ["max_payload_bytes", "max_result_bytes"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "must be >= 1, got 0"), (1.5, "expected an integer, got 1.5"), (True, "expected an")],
)
def test_size_limits_are_checked(tmp_path: Path, name: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, {name: value})
    assert str(info.value).startswith(f"option {name!r} from keyword argument: {expected}")
    with pytest.raises(ConfigError, match=f"environment variable PERSISTQ_{name.upper()}"):
        resolve(tmp_path, **{"PERSISTQ_" + name.upper(): "4MB"})
