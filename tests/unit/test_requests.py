"""The typed requests of the control plane's API (`_spec/requests.py`) as `rest.decode` checks them: a wrong type,
a number out of range, a NaN, a name outside Modal's rules or a NUL is a 400 naming the field."""

from __future__ import annotations

import math

import msgpack
import msgspec
import pytest

from shoal._spec import requests as req
from shoal.controlplane.rest import ApiError, decode
from shoal.controlplane.scheduler import next_fire


def _refused(kind: type, body: object) -> str:
    with pytest.raises(ApiError) as info:
        decode(msgpack.packb(body, use_bin_type=True), kind)
    assert info.value.status == 400
    return str(info.value)


@pytest.mark.parametrize("name", ["a", "my-app_1.2", "A" * 64])
def test_names_as_modal_allows_them(name: str) -> None:
    assert decode(msgpack.packb({"name": name}), req.CreateApp).name == name


@pytest.mark.parametrize("name", ["", "a" * 65, "é", "a b", "a/b", "a\x00b", 5, ["a"], {"a": 1}])
def test_names_outside_the_rule_are_refused_naming_the_field(name: object) -> None:
    assert "`name`" in _refused(req.ObjectLookup, {"kind": "dict", "name": name})


@pytest.mark.parametrize(("kind", "body", "field"), [
    (req.QueueGet, {"n": 2**63}, "`n`"),
    (req.QueuePut, {"values": [b"x"], "partition_ttl": math.nan}, "`partition_ttl`"),
    (req.QueuePut, {"values": [b"x"], "timeout": math.inf}, "`timeout`"),
    (req.QueuePut, {"values": [None]}, "`values[0]`"),
    (req.CreateCall, {"kind": "remote", "wait": "x"}, "`wait`"),
    (req.CreateCall, {"kind": ["remote"]}, "`kind`"),
    (req.AddInputs, {"items": [[-1, b"x"]]}, "`items[0][0]`"),
    (req.Deploy, {"name": "x", "functions": [{"tag": "f", "options": {"min_containers": "x"}}]},
     "`functions[0].options.min_containers`"),
    (req.Deploy, {"name": "x", "functions": [{"tag": "f", "options": {"cpu": math.nan}}]}, "`functions[0].options"),
    (req.Deploy, {"name": "x", "functions": [{"tag": "f", "schedule": {"type": "period", "days": 2**63}}]},
     "`functions[0].schedule.days`"),
    (req.AutoscalerUpdate, {"bogus": 1}, "`bogus`"),
])
def test_wrong_values_are_refused_naming_the_field(kind: type, body: object, field: str) -> None:
    assert field in _refused(kind, body)


def test_a_nul_and_the_name_rule_are_named_as_such() -> None:
    assert "without NUL characters" in _refused(req.QueueLen, {"partition": "a\x00b"})
    assert "letters, digits, '-', '_' and '.'" in _refused(req.CreateApp, {"name": "a b"})


def test_bodies_that_are_not_a_map_or_not_msgpack_are_refused() -> None:
    for raw in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb("x")):
        with pytest.raises(ApiError) as info:
            decode(raw, req.CreateApp)
        assert info.value.status == 400


def test_an_empty_body_is_an_empty_map_and_unknown_keys_are_ignored() -> None:
    assert decode(b"", req.CreateApp) == req.CreateApp()
    assert decode(msgpack.packb({"later_field": 1}), req.CreateApp) == req.CreateApp()


def test_queries_are_converted_from_text() -> None:
    assert msgspec.convert({"after": "3", "timeout": "0.5"}, req.OutputsQuery, strict=False) == \
        req.OutputsQuery(after=3, timeout=0.5)
    for bad in ({"after": "-1e23"}, {"after": str(2**63)}, {"timeout": "nan"}, {"limit": "0"}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, req.OutputsQuery, strict=False)


@pytest.mark.parametrize("seconds", [0, 1e-9, 0.5])
def test_a_period_shorter_than_a_second_never_fires(seconds: float) -> None:
    from shoal._spec.definitions import PeriodSchedule

    with pytest.raises(ValueError, match="at least 1 second"):
        next_fire(PeriodSchedule(seconds=seconds), 1000.0, 1000.0)


def test_the_sdk_refuses_a_bad_name_where_it_is_given() -> None:
    import shoal
    from shoal.exception import InvalidError

    for bad in ("has space", "x" * 65, "", "ünïcode", "a/b"):
        for make in (shoal.App, shoal.Dict.from_name, shoal.Queue.from_name, shoal.Volume.from_name,
                     shoal.Secret.from_name):
            with pytest.raises(InvalidError, match="Invalid .* name"):
                make(bad)
    assert shoal.App("ok-name_1.2").name == "ok-name_1.2"
    assert shoal.Dict.from_name("x" * 64).name == "x" * 64
