"""The JSON serializer: compact output, and errors that name the element at fault."""

from __future__ import annotations

from typing import Any

import pytest

import persistq_async as pq
from persistq_async.serializers import JSONSerializer, validate_json


def test_output_is_compact_utf8_json_that_round_trips() -> None:
    value = {"n": 1, "é": ["x", 2.5, None, True], "nested": {"k": []}}
    data = JSONSerializer().dumps(value)
    assert data == '{"n":1,"é":["x",2.5,null,true],"nested":{"k":[]}}'.encode()
    assert JSONSerializer().loads(data) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": [1, {"b": float("nan")}]}, "payload['a'][1]['b']: nan is not a finite number"),
        ({"a": {1: 2}}, "payload['a']: key 1 is not a string"),
        ([1, 2, object()], "payload[2]: object is not a JSON value"),
        ({"x": ({"y": {1, 2}},)}, "payload['x'][0]['y']: set is not a JSON value"),
        (float("inf"), "payload: inf is not a finite number"),
    ],
)
def test_an_invalid_value_is_refused_naming_where_it_is(value: Any, message: str) -> None:
    with pytest.raises(pq.SerializationError) as caught:
        JSONSerializer().dumps(value)
    assert str(caught.value).startswith(message)


def test_the_path_starts_with_the_name_given() -> None:
    with pytest.raises(pq.SerializationError, match=r"^result\['r'\]\[0\]: bytes"):
        validate_json({"r": [b"x"]}, path="result")
