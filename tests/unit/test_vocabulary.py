"""Serializers, argument checks, backoff, the error tree and URL handling: no database."""

from __future__ import annotations

import ast
import math
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import persistq_async as pq
from persistq_async import _checks
from persistq_async.backends import normalize_url
from persistq_async.job import backoff_seconds
from persistq_async.serializers import JSONSerializer


class TestJSONSerializer:
    def test_round_trip(self) -> None:
        s = JSONSerializer()
        value = {"to": "a@example.org", "n": [1, 2.5, None, True], "nested": {"ü": "ñ"}}
        assert s.loads(s.dumps(value)) == value

    def test_tuples_become_lists(self) -> None:
        s = JSONSerializer()
        assert s.loads(s.dumps({"t": (1, 2)})) == {"t": [1, 2]}

    @pytest.mark.parametrize(
        ("value", "fragment"),
        [
            (object(), "object is not a JSON value"),
            ({1, 2}, "set is not a JSON value"),
            (math.nan, "not a finite number"),
            ({"x": [math.inf]}, "payload['x'][0]"),
            ({1: "a"}, "key 1 is not a string"),
            (b"bytes", "bytes is not a JSON value"),
        ],
    )
    def test_rejects_non_json(self, value: object, fragment: str) -> None:
        with pytest.raises(pq.SerializationError, match=re.escape(fragment)) as info:
            JSONSerializer().dumps(value)
        assert isinstance(info.value, ValueError)

    def test_loads_rejects_garbage(self) -> None:
        with pytest.raises(pq.SerializationError, match="not valid JSON"):
            JSONSerializer().loads(b"\xff{")


class TestChecks:
    def test_int_rejects_bool_and_str(self) -> None:
        with pytest.raises(pq.ArgumentTypeError, match="priority: expected an int"):
            _checks.check_int("priority", True)
        with pytest.raises(TypeError, match="priority"):
            _checks.check_int("priority", "high")

    def test_int_minimum(self) -> None:
        with pytest.raises(pq.ArgumentError, match="max_attempts: must be >= 1, got 0"):
            _checks.check_int("max_attempts", 0, minimum=1)

    def test_seconds(self) -> None:
        assert _checks.check_seconds("delay", timedelta(seconds=1.5)) == 1.5
        assert _checks.check_seconds("delay", 2) == 2.0
        with pytest.raises(pq.ArgumentError, match="delay: must be >= 0"):
            _checks.check_seconds("delay", -1)
        with pytest.raises(pq.ArgumentError, match="finite"):
            _checks.check_seconds("delay", math.inf)
        with pytest.raises(pq.ArgumentError, match="> 0"):
            _checks.check_seconds("seconds", 0, positive=True)

    def test_aware(self) -> None:
        aware = datetime.now(UTC)
        assert _checks.check_aware("run_at", aware) is aware
        with pytest.raises(pq.ArgumentError, match="timezone-aware"):
            _checks.check_aware("run_at", datetime.now())
        with pytest.raises(pq.ArgumentTypeError, match="expected a datetime"):
            _checks.check_aware("run_at", "tomorrow")

    @pytest.mark.parametrize("bad", ["", "   ", "x" * 201, "a\x00b"])
    def test_name_values(self, bad: str) -> None:
        with pytest.raises(pq.ArgumentError, match="name"):
            _checks.check_name("name", bad)

    def test_name_type(self) -> None:
        with pytest.raises(pq.ArgumentTypeError, match="name: expected a str"):
            _checks.check_name("name", 3)


class TestBackoff:
    def test_doubles_and_caps(self) -> None:
        rng = random.Random(1)
        for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 60.0), (100, 60.0)]:
            delay = backoff_seconds(attempt, 1.0, 60.0, rng)
            assert ceiling / 2 <= delay <= ceiling

    def test_jitter_spreads(self) -> None:
        rng = random.Random(7)
        delays = {round(backoff_seconds(5, 1.0, 3600.0, rng), 6) for _ in range(50)}
        assert len(delays) > 40

    def test_zero_base(self) -> None:
        assert backoff_seconds(3, 0.0, 10.0) == 0.0


class TestErrorTree:
    @pytest.mark.parametrize(
        ("cls", "builtin"),
        [
            (pq.ArgumentError, ValueError),
            (pq.ArgumentTypeError, TypeError),
            (pq.ConfigError, ValueError),
            (pq.SerializationError, ValueError),
            (pq.JobNotFound, LookupError),
            (pq.QueueClosed, RuntimeError),
            (pq.JobStateError, ValueError),
        ],
    )
    def test_builtin_kinds(self, cls: type[Exception], builtin: type[Exception]) -> None:
        assert issubclass(cls, pq.PersistQError)
        assert issubclass(cls, builtin)

    def test_signals_are_outside_the_tree(self) -> None:
        assert not issubclass(pq.Retry, pq.PersistQError)
        assert not issubclass(pq.Reject, pq.PersistQError)
        assert pq.Retry(delay=3).delay == 3
        assert pq.Reject("bad").reason == "bad"

    def test_schema_error_is_a_database_error(self) -> None:
        assert issubclass(pq.SchemaError, pq.DatabaseError)

    def test_job_state_values(self) -> None:
        assert [s.value for s in pq.JobState] == ["queued", "running", "done", "dead", "cancelled"]
        assert pq.JobState("dead") is pq.JobState.DEAD
        assert set(pq.JobState) == pq.ACTIVE_STATES | pq.FINISHED_STATES


class TestUrls:
    def test_path_becomes_absolute_sqlite_url(self, tmp_path: Path) -> None:
        url = normalize_url(tmp_path / "jobs.db")
        assert url.drivername == "sqlite+aiosqlite"
        assert url.database == str(tmp_path / "jobs.db")

    def test_relative_path(self, tmp_path: Path) -> None:
        assert normalize_url("jobs.db").database == str(Path.cwd() / "jobs.db")

    def test_async_urls_pass(self) -> None:
        assert normalize_url("postgresql+asyncpg://u:p@h/db").drivername == "postgresql+asyncpg"
        assert normalize_url("sqlite+aiosqlite:///x.db").drivername == "sqlite+aiosqlite"

    @pytest.mark.parametrize(
        ("url", "fragment"),
        [
            ("postgresql://u@h/db", "use 'postgresql+asyncpg://'"),
            ("postgresql+psycopg2://u@h/db", "use 'postgresql+asyncpg://'"),
            ("sqlite:///x.db", "use 'sqlite+aiosqlite://'"),
            ("mysql+aiomysql://u@h/db", "unsupported database 'mysql'"),
            ("", "empty path"),
        ],
    )
    def test_refused(self, url: str, fragment: str) -> None:
        with pytest.raises(pq.ArgumentError, match=re.escape(fragment)):
            normalize_url(url)

    def test_password_never_in_messages(self) -> None:
        queue = pq.Queue("postgresql+asyncpg://user:s3cret@localhost:1/db")
        assert "s3cret" not in repr(queue)


class TestLogActions:
    """Every log record of the package names its action, and every action is declared."""

    LEVELS = frozenset({"debug", "info", "warning", "error", "exception", "critical", "log"})

    def _calls(self) -> list[tuple[str, ast.Call]]:
        calls = []
        for path in Path(pq.__file__).parent.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
                    calls.append((f"{path.name}:{node.lineno}", node))
        return calls

    def _actions(self, node: ast.Call) -> list[str] | None:
        """The action names a logging call can emit; None when it names none."""
        func = node.func
        if isinstance(func, ast.Name) and func.id == "log_event":
            arg = node.args[2]
        elif (
            isinstance(func, ast.Attribute)
            and func.attr in self.LEVELS
            and isinstance(func.value, ast.Name)
            and func.value.id == "logger"
        ):
            extra = next((k.value for k in node.keywords if k.arg == "extra"), None)
            if not isinstance(extra, ast.Dict):
                return None
            keys = [k.value if isinstance(k, ast.Constant) else None for k in extra.keys]
            if "action" not in keys:
                return None
            arg = extra.values[keys.index("action")]
        else:
            return []
        names = [n.value for n in ast.walk(arg) if isinstance(n, ast.Constant)]
        return [n for n in names if isinstance(n, str)]

    def test_every_logger_call_names_a_declared_action(self) -> None:
        missing, undeclared, seen = [], [], set()
        for where, node in self._calls():
            actions = self._actions(node)
            if actions is None:
                missing.append(where)
                continue
            seen.update(actions)
            undeclared += [f"{where}: {a}" for a in actions if a not in pq.monitoring.ACTIONS]
        assert len(seen) > 20  # the scan did find the package's records
        assert missing == []
        assert undeclared == []
