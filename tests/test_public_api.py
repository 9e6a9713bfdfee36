"""The public API is exactly ``persistq_async.__all__``: sorted, complete, documented."""

from __future__ import annotations

import enum
import inspect

import pytest

import persistq_async as pq
from persistq_async import errors

#: Names DESIGN.md's contract sections promise at the top level.
CONTRACT_NAMES = {
    "Queue",
    "Job",
    "JobInfo",
    "Attempt",
    "JobState",
    "Stats",
    "PersistQError",
    "ConfigError",
    "SerializationError",
    "LeaseLost",
    "JobAlreadyFinished",
    "QueueClosed",
    "JobNotFound",
    "Retry",
    "Reject",
    "Supervisor",
    "Pool",
}

#: Exported values that are not classes or functions, so carry no docstring of their own.
DATA_NAMES = {"ACTIVE_STATES", "FINISHED_STATES", "__version__"}


def isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 "isort-style" order: CONSTANTS, then Classes, then the rest."""
    if name.isupper() and len(name) > 1:
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_and_unique() -> None:
    assert pq.__all__ == sorted(pq.__all__, key=isort_key)
    assert len(set(pq.__all__)) == len(pq.__all__)


def test_every_exported_name_exists() -> None:
    missing = [name for name in pq.__all__ if not hasattr(pq, name)]
    assert missing == []


@pytest.mark.parametrize("name", sorted(CONTRACT_NAMES))
def test_contract_names_are_exported(name: str) -> None:
    assert name in pq.__all__
    assert hasattr(pq, name)


def test_every_public_error_is_exported() -> None:
    assert set(errors.__all__) <= set(pq.__all__)


def test_no_public_module_level_name_is_left_out() -> None:
    public = {
        name
        for name, value in vars(pq).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public - set(pq.__all__) == set()


@pytest.mark.parametrize("name", [n for n in pq.__all__ if n not in DATA_NAMES])
def test_exported_names_have_docstrings(name: str) -> None:
    obj = getattr(pq, name)
    assert inspect.getdoc(obj), f"{name} has no docstring"
    assert (obj.__doc__ or "").strip(), f"{name} has no docstring of its own"
    if inspect.isclass(obj) and not issubclass(obj, BaseException):
        for attr, member in vars(obj).items():
            documented = inspect.isfunction(member) or isinstance(member, property)
            if attr.startswith("_") or not documented:
                continue
            assert (member.__doc__ or "").strip(), f"{name}.{attr} has no docstring"


def test_version_is_a_string() -> None:
    assert isinstance(pq.__version__, str)
    assert pq.__version__.count(".") >= 1


def test_the_error_tree() -> None:
    for name in (
        "ConfigError",
        "SerializationError",
        "LeaseLost",
        "JobAlreadyFinished",
        "QueueClosed",
        "JobNotFound",
    ):
        assert issubclass(getattr(pq, name), pq.PersistQError), name
    assert issubclass(pq.PersistQError, Exception)
    assert issubclass(pq.ArgumentError, ValueError)
    assert issubclass(pq.ArgumentTypeError, TypeError)
    assert issubclass(pq.ConfigError, ValueError)
    assert issubclass(pq.JobNotFound, LookupError)
    assert issubclass(pq.SchemaError, pq.DatabaseError)
    # handler signals are not errors
    assert not issubclass(pq.Retry, pq.PersistQError)
    assert not issubclass(pq.Reject, pq.PersistQError)
    assert pq.Retry(delay=3).delay == 3
    assert pq.Reject("why").reason == "why"


def test_error_docstrings_say_when_they_are_raised() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        if issubclass(cls, pq.PersistQError):
            assert cls.__doc__.startswith("Raised "), name


def test_job_state_is_a_str_enum_of_lowercase_names() -> None:
    assert issubclass(pq.JobState, enum.StrEnum)
    assert [m.name for m in pq.JobState] == ["QUEUED", "RUNNING", "DONE", "DEAD", "CANCELLED"]
    for member in pq.JobState:
        assert member.value == member.name.lower()
        assert member == member.value
    assert {pq.JobState.QUEUED, pq.JobState.RUNNING} == pq.ACTIVE_STATES
    assert {pq.JobState.DONE, pq.JobState.DEAD, pq.JobState.CANCELLED} == pq.FINISHED_STATES


def test_queue_signature_matches_the_contract() -> None:
    sig = inspect.signature(pq.Queue)
    assert next(iter(sig.parameters)) == "url"
    assert sig.parameters["url"].default is None
    assert sig.parameters["name"].default == "default"
    assert sig.parameters["name"].kind is inspect.Parameter.KEYWORD_ONLY
    put = inspect.signature(pq.Queue.put).parameters
    for option, default in [
        ("priority", 0),
        ("delay", None),
        ("run_at", None),
        ("max_attempts", None),
        ("dedupe_key", None),
        ("connection", None),
    ]:
        assert put[option].default == default
        assert put[option].kind is inspect.Parameter.KEYWORD_ONLY
    for method in (
        "put_many",
        "get",
        "get_nowait",
        "join",
        "stats",
        "job",
        "list_jobs",
        "requeue",
        "cancel",
        "delete",
        "purge",
        "aclose",
        "__aiter__",
    ):
        assert callable(getattr(pq.Queue, method)), method
    for method in ("ack", "nack", "fail", "extend", "__aenter__", "__aexit__"):
        assert callable(getattr(pq.Job, method)), method


def test_job_and_job_info_fields() -> None:
    job_fields = {
        "id",
        "queue",
        "payload",
        "priority",
        "attempts",
        "max_attempts",
        "enqueued_at",
        "lease_expires_at",
    }
    assert job_fields <= set(pq.Job.__slots__)
    info_fields = set(pq.JobInfo.__dataclass_fields__)
    assert (
        job_fields | {"state", "last_error", "result", "created_at", "finished_at", "history"}
        <= info_fields
    )
    assert {"attempt", "started_at", "finished_at", "outcome", "error"} <= set(
        pq.Attempt.__dataclass_fields__
    )
    assert {"queued", "running", "done", "dead", "cancelled"} <= set(pq.Stats.__dataclass_fields__)
