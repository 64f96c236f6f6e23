"""The wire contract (`shoal/_spec`): definitions and runtime frames encode to the msgpack maps the dicts were,
older stored maps decode, and a wrong value is refused naming its field."""

from __future__ import annotations

import msgpack
import msgspec
import pytest

import shoal as modal
from shoal._spec import definitions, frames
from shoal._spec.definitions import FunctionDefinition, Options, PeriodSchedule

# A definition as the SDK sent it before the Structs (no image or source yet): every key of today's map.
OLDER = {
    "tag": "f", "is_generator": False, "is_async": True,
    "options": {"timeout": 60, "startup_timeout": None, "retries": {"max_retries": 2, "backoff_coefficient": 1.0,
                                                                    "initial_delay": 1.0, "max_delay": 60.0},
                "min_containers": 1, "max_containers": None, "buffer_containers": None, "scaledown_window": 60,
                "cpu": [1.0, 2.0], "memory": 512, "gpu": ["A100:2"], "single_use_containers": False,
                "max_inputs": 1, "target_inputs": None, "batch_max_size": None, "batch_wait_ms": None,
                "serialized": False, "include_source": None, "region": None, "extra": {"cloud": "aws"}},
    "secrets": [{"name": "s", "required_keys": ["K"]}, {"env": {"A": "1"}}],
    "schedule": {"type": "period", "years": 0, "months": 0, "weeks": 0, "days": 1, "hours": 0, "minutes": 0,
                 "seconds": 0},
    "app_name": "a", "webhook": None,
}


def test_an_older_map_decodes_with_defaults_for_the_keys_it_lacks() -> None:
    d = definitions.decode(msgpack.packb({**OLDER, "from_a_later_version": [1, 2]}))
    assert d.tag == "f" and d.is_async and d.options.timeout == 60 and d.options.retries.max_retries == 2
    assert d.options.cpu == [1.0, 2.0] and d.options.gpu == ["A100:2"] and d.options.extra == {"cloud": "aws"}
    assert d.secrets[0].name == "s" and d.secrets[0].required_keys == ["K"] and d.secrets[1].env == {"A": "1"}
    assert d.schedule == PeriodSchedule(days=1)
    assert (d.server, d.cls, d.volumes, d.generation, d.variant_of, d.params) == (None, None, [], 0, None, None)


def test_a_struct_encodes_to_the_same_map() -> None:
    d = definitions.decode(msgpack.packb(OLDER))
    wire = msgpack.unpackb(definitions.encode(d))
    assert {k: wire[k] for k in OLDER} == OLDER
    assert definitions.decode(definitions.encode(d)) == d


@pytest.mark.parametrize(("change", "field"), [
    ({"webhook": "x"}, "$.webhook"),
    ({"cls": "x"}, "$.cls"),
    ({"options": {**OLDER["options"], "min_containers": "x"}}, "$.options.min_containers"),
    ({"options": {**OLDER["options"], "timeout": 0}}, "$.options.timeout"),
    ({"options": {**OLDER["options"], "scaledown_window": 1}}, "$.options.scaledown_window"),
    ({"secrets": [1]}, "$.secrets[0]"),
    ({"source_id": 5}, "$.source_id"),
    ({"schedule": {"type": "hourly"}}, "$.schedule"),
    # the bounds of `_spec.limits`, which the decorators check too
    ({"options": {**OLDER["options"], "retries": {"max_retries": 11}}}, "$.options.retries.max_retries"),
    ({"options": {**OLDER["options"], "batch_max_size": 1000}}, "$.options.batch_max_size"),
    ({"server": {"port": 0}}, "$.server.port"),
    ({"server": {"exit_grace_period": 3601}}, "$.server.exit_grace_period"),
])
def test_a_wrong_value_is_refused_naming_its_field(change: dict, field: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=field.replace("$", r"\$").replace("[", r"\[")):
        definitions.decode(msgpack.packb({**OLDER, **change}))


def test_the_sdk_builds_the_struct() -> None:
    app = modal.App("wire")

    @app.function(serialized=True, timeout=30, schedule=modal.Period(hours=1), secrets=[modal.Secret.from_dict({})])
    def f() -> None:
        pass

    d = f._definition()
    assert isinstance(d, FunctionDefinition) and isinstance(d.options, Options)
    assert d.options.timeout == 30 and d.schedule == PeriodSchedule(hours=1) and d.secrets[0].env == {}
    assert definitions.decode(definitions.encode(d)) == d


def test_frames_are_the_maps_the_dicts_were() -> None:
    items = [(1, "in-1", "fc-1", b"args", None), (2, "in-2", "fc-1", b"args", "method")]
    as_dict = msgpack.packb({"t": "inputs", "items": [list(i) for i in items]}, use_bin_type=True)
    assert frames.encode(frames.Inputs(items)) == frames.HEADER.pack(len(as_dict)) + as_dict
    assert frames.to_runtime.decode(as_dict) == frames.Inputs(items)
    assert frames.to_runtime.decode(msgpack.packb({"t": "stop"})) == frames.Stop()
    out = msgpack.packb({"t": "out", "items": [[1, "ok", b"r", 0.5]]})
    assert frames.from_runtime.decode(out) == frames.Out([(1, "ok", b"r", 0.5)])
    assert frames.from_runtime.decode(msgpack.packb({"t": "item", "key": 3, "data": b"x"})) == frames.Item(3, b"x")
