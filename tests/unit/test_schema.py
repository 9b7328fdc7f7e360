"""The offline validator accepts and rejects what the apiserver does, naming field paths."""

from __future__ import annotations

import pytest

from controller import api, schema
from tests.crd_cases import INVALID, VALID, replay


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_objects_pass(name: str) -> None:
    assert schema.validate(VALID[name]) == []


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_objects_name_the_field(name: str) -> None:
    obj, path = INVALID[name]
    errors = schema.validate(obj)
    assert [e.path for e in errors] == [path], errors


def test_defaults_come_from_the_schema() -> None:
    spec = schema.schema_for(api.API_VERSION, "TrafficReplay")
    assert spec is not None
    out = schema.apply_defaults(spec, replay(load={"stages": [{"duration": "1s", "targetRPS": 1}]}))
    assert out["spec"]["mode"] == "full"
    assert out["spec"]["cleanup"] == "inventory"
    assert out["spec"]["load"]["copies"] == 1
    assert out["spec"]["load"]["stages"][0]["ramp"] == "linear"


def test_cel_message_is_the_crd_message() -> None:
    errors = schema.validate(replay(target={}))
    assert str(errors[0]) == "spec.target: exactly one of workloadRef or url must be set"


def test_unknown_kind_is_reported() -> None:
    errors = schema.validate({"apiVersion": "replayops.dev/v9", "kind": "TrafficReplay",
                              "metadata": {"name": "x"}})
    assert errors and errors[0].path == "apiVersion"


def test_missing_name_is_reported() -> None:
    obj = replay()
    del obj["metadata"]["name"]
    assert [e.path for e in schema.validate(obj)] == ["metadata.name"]

