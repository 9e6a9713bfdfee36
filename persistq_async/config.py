"""Queue options and where they come from.

An option is looked up in four layers; the first that sets it wins:

1. a keyword argument (``Queue(lease_seconds=10)``); a keyword given as ``None`` is not given;
2. an environment variable ``PERSISTQ_<NAME>`` (``PERSISTQ_URL``, ``PERSISTQ_LEASE_SECONDS``...),
   whose text is parsed to the option's type;
3. a TOML file in the working directory: ``persistq.toml`` (top-level keys) when it exists,
   otherwise the ``[tool.persistq]`` table of ``pyproject.toml`` when that table exists.
   ``persistq.toml`` wins because it is the more specific file; the two are never merged;
4. the default (the ``DEFAULT_*`` constants of this module).

Every layer is checked in full, even where a higher one overrides it, so a typo never hides. Unknown
keys in a keyword mapping or a file raise :class:`~persistq_async.errors.ConfigError`; unknown
``PERSISTQ_*`` environment variables are ignored (the test suite uses some). Every ``ConfigError``
names the option and its source, for example::

    option 'durability' from /srv/app/persistq.toml: must be 'full' or 'normal', got 'fast'
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._durations import parse_duration
from ._rates import parse_rate_limit
from .errors import ConfigError

__all__ = [
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_DATABASE_FILE",
    "DEFAULT_DURABILITY",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_MAX_RESULT_BYTES",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_RETENTION_SECONDS",
    "DURATION_OPTIONS",
    "OPTION_NAMES",
    "Options",
    "explain_options",
    "read_section",
    "resolve_options",
]

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_BASE = 1.0
DEFAULT_BACKOFF_MAX = 3600.0
DEFAULT_POLL_INTERVAL = 0.1
DEFAULT_RETENTION_SECONDS = 7 * 86400.0
DEFAULT_DURABILITY = "full"
DEFAULT_BUSY_TIMEOUT = 5.0
#: Largest payload, in bytes after serialisation, that ``put`` accepts (4 MiB).
DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
#: Largest result, in bytes after serialisation, that an ack stores (4 MiB).
DEFAULT_MAX_RESULT_BYTES = 4 * 1024 * 1024
#: The SQLite file, in the working directory, used when no ``url`` is configured.
DEFAULT_DATABASE_FILE = "persistq.db"

ENV_PREFIX = "PERSISTQ_"
CONFIG_FILE = "persistq.toml"
PYPROJECT_FILE = "pyproject.toml"

# Where a value came from when Options is built directly rather than by resolve_options.
_DIRECT_SOURCE = "Options argument"
_DEFAULT_SOURCE = "default"
_KEYWORD_SOURCE = "keyword argument"

_FLOAT_OPTIONS = frozenset(
    {
        "lease_seconds",
        "backoff_base",
        "backoff_max",
        "poll_interval",
        "retention_seconds",
        "busy_timeout",
    }
)
#: The options that are durations (seconds); the environment and files may write them ``30s``.
DURATION_OPTIONS = _FLOAT_OPTIONS
_INT_OPTIONS = frozenset(
    {"max_attempts", "max_payload_bytes", "max_result_bytes", "max_running", "rate_burst"}
)
_STR_OPTIONS = frozenset({"url", "durability", "rate_limit", "dead_letter_queue"})
#: Options whose default is None ("not set"); None is accepted for them.
_OPTIONAL_OPTIONS = frozenset(
    {"url", "rate_limit", "rate_burst", "max_running", "dead_letter_queue"}
)

# Range rules, one per option: (holds for a well-typed value, what the message says otherwise).
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "url": (lambda v: v is None or v != "", "must not be empty"),
    "lease_seconds": (lambda v: v > 0, "must be > 0"),
    "max_attempts": (lambda v: v >= 1, "must be >= 1"),
    "backoff_base": (lambda v: v >= 0, "must be >= 0"),
    "backoff_max": (lambda v: v >= 0, "must be >= 0"),
    "poll_interval": (lambda v: 0 < v <= 60, "must be > 0 and <= 60"),
    "retention_seconds": (lambda v: v >= 0, "must be >= 0"),
    "durability": (lambda v: v in ("full", "normal"), "must be 'full' or 'normal'"),
    "busy_timeout": (lambda v: v >= 0, "must be >= 0"),
    "max_payload_bytes": (lambda v: v >= 1, "must be >= 1"),
    "max_result_bytes": (lambda v: v >= 1, "must be >= 1"),
    "rate_limit": (lambda v: _is_rate_limit(v), "must be a count per s, m or h such as '100/s'"),
    "rate_burst": (lambda v: 1 <= v <= 10**9, "must be >= 1 and <= 1000000000"),
    "max_running": (lambda v: v >= 1, "must be >= 1"),
    "dead_letter_queue": (
        lambda v: v.strip() != "" and len(v) <= 200 and "\x00" not in v,
        "must be a queue name (not empty, at most 200 characters, no NUL)",
    ),
}


def _is_rate_limit(value: str) -> bool:
    try:
        parse_rate_limit(value)
    except ValueError:
        return False
    return True


_INT_TEXT = re.compile(r"[+-]?[0-9]+")

#: Tables of the configuration file that are not queue options; each is read by its feature
#: (:func:`read_section`), and the option resolution leaves them alone.
SECTIONS = frozenset({"alerts"})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """The resolved options of a queue; build it with :func:`resolve_options`.

    Ints given for float options are stored as floats. Building it directly checks every value too.

    :raises ConfigError: an option has the wrong type or a value out of range.
    """

    #: Database URL (``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...``);
    #: None means the SQLite file :data:`DEFAULT_DATABASE_FILE` in the working directory.
    url: str | None = None
    #: Seconds a claimed job stays leased without a heartbeat before it may be rescued.
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    #: Deliveries a job gets (the first included) before it is dead-lettered.
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: Seconds of the first retry delay; each later retry doubles it.
    backoff_base: float = DEFAULT_BACKOFF_BASE
    #: Upper bound, in seconds, of a retry delay; at least ``backoff_base``.
    backoff_max: float = DEFAULT_BACKOFF_MAX
    #: Seconds between polls of the database when no wake-up arrives; in (0, 60].
    poll_interval: float = DEFAULT_POLL_INTERVAL
    #: Seconds finished jobs (done, dead, cancelled) are kept before cleaning removes them.
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    #: ``"full"`` (fsync every commit; SQLite ``synchronous=FULL``) or ``"normal"`` (faster;
    #: a power loss may drop the last commits, never corrupt the file).
    durability: str = DEFAULT_DURABILITY
    #: Seconds SQLite waits for another connection's lock before failing.
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    #: Largest payload, in bytes once serialised, that a put accepts; a larger one raises
    #: ``SerializationError`` before anything is written.
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    #: Largest result, in bytes once serialised, that an ack stores; a handler whose result is
    #: larger has its job failed with that error instead.
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    #: Flow control (kept in the database, per queue; None leaves what the database holds).
    #: At most this many claims per second, minute or hour across every process (``"100/s"``).
    rate_limit: str | None = None
    #: The rate limit's token bucket size; a tenth of its count (at least 1) by default.
    rate_burst: int | None = None
    #: At most this many jobs of the queue running at once across every process.
    max_running: int | None = None
    #: The queue a job that dies moves to (queued, attempts reset, history kept).
    dead_letter_queue: str | None = None

    def __post_init__(self) -> None:
        for name in OPTION_NAMES:
            checked = _check(name, getattr(self, name), _DIRECT_SOURCE)
            # Frozen: normalise (int -> float) through object.__setattr__, as dataclasses do.
            object.__setattr__(self, name, checked)
        _check_backoff(self.backoff_base, _DIRECT_SOURCE, self.backoff_max, _DIRECT_SOURCE)


#: The names of every option, as keyword arguments and TOML keys spell them.
OPTION_NAMES: frozenset[str] = frozenset(f.name for f in dataclasses.fields(Options))


def resolve_options(
    keywords: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Options:
    """Resolve every option: keyword beats environment beats file beats default.

    :param keywords: options given by keyword; a value of None counts as not given.
    :param environ: the environment to read ``PERSISTQ_*`` variables from; defaults to
        :data:`os.environ`.
    :param cwd: the directory holding ``persistq.toml`` or ``pyproject.toml``; defaults to the
        working directory.
    :raises ConfigError: an option is unknown, ill-typed or out of range, or a TOML file cannot be
        read or parsed; the message names the option (or file) and the source.
    """
    values, _sources = _resolve(keywords, environ, cwd)
    return Options(**values)


def explain_options(
    keywords: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> dict[str, tuple[Any, str]]:
    """Every option's value, as :func:`resolve_options` resolves it, and where it came from:
    ``"default"``, ``"keyword argument"``, ``"environment variable PERSISTQ_..."`` or the
    configuration file (``/path/persistq.toml``, ``/path/pyproject.toml [tool.persistq]``).

    :raises ConfigError: as :func:`resolve_options` does.
    """
    values, sources = _resolve(keywords, environ, cwd)
    options = Options(**values)  # checks, and normalises ints given for floats
    return {
        name: (getattr(options, name), sources.get(name, _DEFAULT_SOURCE))
        for name in sorted(OPTION_NAMES)
    }


def _resolve(
    keywords: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    # Lowest layer first, so each later layer overrides the one before.
    layers = [
        _file_layer(Path.cwd() if cwd is None else Path(cwd)),
        _environment_layer(os.environ if environ is None else environ),
        _keyword_layer(keywords or {}),
    ]
    for layer in layers:
        for name, (value, source) in layer.items():
            values[name] = value
            sources[name] = source
    _check_backoff(
        values.get("backoff_base", DEFAULT_BACKOFF_BASE),
        sources.get("backoff_base", _DEFAULT_SOURCE),
        values.get("backoff_max", DEFAULT_BACKOFF_MAX),
        sources.get("backoff_max", _DEFAULT_SOURCE),
    )
    return values, sources


_Layer = dict[str, tuple[Any, str]]


def _keyword_layer(keywords: Mapping[str, Any]) -> _Layer:
    layer: _Layer = {}
    for name, value in keywords.items():
        _require_known(name, _KEYWORD_SOURCE)
        if value is not None:
            layer[name] = (_check(name, value, _KEYWORD_SOURCE), _KEYWORD_SOURCE)
    return layer


def _environment_layer(environ: Mapping[str, str]) -> _Layer:
    layer: _Layer = {}
    # Only our own names are read: other PERSISTQ_* variables (the test suite's) are not options.
    for name in sorted(OPTION_NAMES):
        variable = ENV_PREFIX + name.upper()
        if variable in environ:
            source = f"environment variable {variable}"
            value = _parse_text(name, environ[variable], source)
            layer[name] = (_check(name, value, source), source)
    return layer


def _config_table(directory: Path) -> tuple[dict[str, Any], str] | None:
    """The configuration file's table and its description, or None without one."""
    config_path = directory / CONFIG_FILE
    if config_path.is_file():
        return _load_toml(config_path), str(config_path)
    pyproject_path = directory / PYPROJECT_FILE
    if not pyproject_path.is_file():
        return None
    tool = _load_toml(pyproject_path).get("tool")
    if not isinstance(tool, dict) or "persistq" not in tool:
        return None
    table = tool["persistq"]
    source = f"{pyproject_path} [tool.persistq]"
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: expected a table, got {table!r}")
    return table, source


def read_section(
    name: str, cwd: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], str] | None:
    """The table ``name`` (one of :data:`SECTIONS`) of the configuration file that options come
    from (``persistq.toml``, else ``[tool.persistq]`` of ``pyproject.toml``), with a description
    of where it is; None when the file or the table is absent.

    :raises ConfigError: the file cannot be read, or ``name`` is not a table.
    """
    found = _config_table(Path.cwd() if cwd is None else Path(cwd))
    if found is None or name not in found[0]:
        return None
    table, source = found
    where = f"{source} [{name}]" if source.endswith(CONFIG_FILE) else f"{source[:-1]}.{name}]"
    if not isinstance(table[name], dict):
        raise ConfigError(f"{where}: expected a table, got {table[name]!r}")
    return table[name], where


def _file_layer(directory: Path) -> _Layer:
    found = _config_table(directory)
    if found is None:
        return {}
    table, source = found
    layer: _Layer = {}
    for name, value in table.items():
        if name in SECTIONS:
            continue
        _require_known(name, source)
        if name in _FLOAT_OPTIONS and isinstance(value, str):
            value = _parse_text(name, value, source)  # retention_seconds = "7d"
        layer[name] = (_check(name, value, source), source)
    return layer


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc


def _error(name: str, source: str, message: str) -> ConfigError:
    return ConfigError(f"option {name!r} from {source}: {message}")


def _require_known(name: str, source: str) -> None:
    if name in OPTION_NAMES:
        return
    close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    known = ", ".join(sorted(OPTION_NAMES))
    raise _error(name, source, f"unknown option ({hint}known: {known})")


def _parse_text(name: str, text: str, source: str) -> Any:
    """Turn the text of an environment variable (or a duration string in a file) into a value of
    the option's type (not yet checked)."""
    if name in _FLOAT_OPTIONS:
        try:
            return float(text)
        except ValueError:
            pass
        # Every float option is a number of seconds: "30s", "15m", "7d" say it plainly.
        try:
            return parse_duration(text)
        except ValueError:
            raise _error(
                name,
                source,
                f"expected a number, got {text!r} (seconds, or a duration such as 30s, 15m, 7d)",
            ) from None
    if name in _INT_OPTIONS:
        # int() would also take "5_0"; an integer option takes plain digits only.
        if not _INT_TEXT.fullmatch(text.strip()):
            raise _error(name, source, f"expected an integer, got {text!r}")
        return int(text)
    return text


def _check(name: str, value: Any, source: str) -> Any:
    """Check one option's type and range; return it normalised (ints for floats become floats)."""
    # bool is an int subclass, but True is never a number of seconds or attempts.
    if name in _FLOAT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _error(name, source, f"expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise _error(name, source, f"expected a finite number, got {value!r}")
    if value is None and name in _OPTIONAL_OPTIONS:
        return None
    if name in _INT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(name, source, f"expected an integer, got {value!r}")
    elif name not in _FLOAT_OPTIONS and not isinstance(value, str):
        raise _error(name, source, f"expected a string, got {value!r}")
    holds, rule = _RULES[name]
    if not holds(value):
        raise _error(name, source, f"{rule}, got {value!r}")
    return value


def _check_backoff(base: float, base_source: str, maximum: float, max_source: str) -> None:
    if maximum < base:
        raise _error(
            "backoff_max",
            max_source,
            f"must be >= backoff_base ({base!r} from {base_source}), got {maximum!r}",
        )
