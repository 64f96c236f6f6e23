"""Function definitions at the control plane: decoded into `_spec.definitions` at the edge (a wrong value is a 400
naming its field, and nothing is registered), and those an older control plane stored (msgpack maps, without
the keys added since) still load on start, and their functions run."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgpack
import pytest

import shoal
from shoal._client.transport import get_client
from shoal.controlplane.store import apps as app_rows
from shoal.exception import InvalidError, NotFoundError

from ..conftest import ControlPlane

_OPTIONS = {
    "batch_max_size": None, "batch_wait_ms": None, "buffer_containers": None, "cpu": None,
    "extra": {"block_network": False, "cloud": None, "enable_memory_snapshot": False, "ephemeral_disk": None,
              "experimental_options": None, "i6pn": None, "nonpreemptible": False, "proxy": None,
              "restrict_modal_access": False, "routing_region": None},
    "gpu": None, "include_source": None, "max_containers": None, "max_inputs": 1, "memory": None,
    "min_containers": None, "region": None, "retries": None, "scaledown_window": None, "serialized": False,
    "single_use_containers": False, "startup_timeout": None, "target_inputs": None, "timeout": 300,
}
_COUNTER_CLS = {"batched": None, "custom_init": False, "enter": [], "exit": [],
                "methods": {"add": {"is_async": False, "is_generator": False}}, "name": "Counter",
                "params": [{"default": 1, "name": "start", "type": "int"}]}
# tests/apps/legacy_definition_app.py as the control plane of the wire-contract change's parent commit stored it
# (`SELECT definition FROM functions`, unpacked). "<…>" values depend on the state directory and are taken from
# the definitions the current code stored for the same source.
LEGACY: dict[str, dict[str, Any]] = {
    "greet": {
        "app_name": "legacy-definitions", "generation": 1, "image": "<image>", "image_built": "<image_built>",
        "is_async": False, "is_generator": False, "module": "legacy_definition_app",
        "options": {**_OPTIONS, "timeout": 60, "retries": {"backoff_coefficient": 1.0, "initial_delay": 1.0,
                                                           "max_delay": 60.0, "max_retries": 1}},
        "schedule": None, "secrets": [{"env": {"GREETING": "hello"}}], "source_dir": "<source_dir>",
        "source_id": "<source_id>", "tag": "greet", "webhook": None,
        "a_key_from_a_later_version": {"ignored": True},  # unknown keys are ignored, not fatal
    },
    "Counter.*": {
        "app_name": "legacy-definitions", "cls": _COUNTER_CLS, "generation": 1, "image": "<image>",
        "image_built": "<image_built>", "is_async": False, "is_generator": False, "module": "legacy_definition_app",
        "options": _OPTIONS, "schedule": None, "secrets": [], "source_dir": "<source_dir>",
        "source_id": "<source_id>", "tag": "Counter.*", "webhook": None,
    },
    "Counter.*#": {  # the variant for start=2, created on first use
        "app_name": "legacy-definitions", "cls": _COUNTER_CLS, "generation": 1, "image": "<image>",
        "image_built": "<image_built>", "is_async": False, "is_generator": False, "module": "legacy_definition_app",
        "options": _OPTIONS, "params": b"\x81\xa5start\x02", "schedule": None, "secrets": [],
        "source_dir": "<source_dir>", "source_id": "<source_id>", "tag": "Counter.*",
        "variant_key": "<variant_key>", "variant_of": "<variant_of>", "variant_overrides": {}, "webhook": None,
    },
}


def _as_stored_before(current: dict[str, Any], legacy: dict[str, Any]) -> dict[str, Any]:
    return {k: current[v[1:-1]] if isinstance(v, str) and v.startswith("<") else v for k, v in legacy.items()}


def _rewrite_definitions(cp: ControlPlane) -> set[str]:
    """Replace every stored definition with its older form; returns the tags rewritten."""

    async def run() -> set[str]:
        store = cp.store()
        await store.open()
        try:
            done = set()
            for function_id, app_id, tag, blob in await store.read(
                    "SELECT function_id, app_id, tag, definition FROM functions"):
                current = msgpack.unpackb(blob, raw=False)
                key = "Counter.*#" if current.get("variant_of") else tag
                older = _as_stored_before(current, LEGACY[key])
                await store.flushed(app_rows.write_function(store, function_id, app_id, tag, msgpack.packb(older)))
                done.add(key)
            return done
        finally:
            await store.close()

    return asyncio.run(run())


def test_definitions_stored_by_an_older_version_load_and_run(private_control_plane: ControlPlane) -> None:
    import legacy_definition_app as m

    m.app.deploy()
    assert m.greet.remote("x") == "hello x"
    assert m.Counter(start=2).add.remote(3) == 5
    private_control_plane.kill()
    assert _rewrite_definitions(private_control_plane) == set(LEGACY)
    private_control_plane.start()
    greet = shoal.Function.from_name("legacy-definitions", "greet")
    assert greet.remote("again") == "hello again"
    counter = shoal.Cls.from_name("legacy-definitions", "Counter")
    assert counter(start=2).add.remote(40) == 42
    assert counter().add.remote(1) == 2


@pytest.mark.parametrize(("change", "field"), [
    ({"webhook": "x"}, "`functions[0].webhook`"),
    ({"options": {"min_containers": "x"}}, "`functions[0].options.min_containers`"),
    ({"options": {"timeout": 0}}, "`functions[0].options.timeout`"),
    ({"cls": "x"}, "`functions[0].cls`"),
    ({"secrets": [1]}, "`functions[0].secrets[0]`"),
])
def test_a_wrong_value_is_refused_naming_its_field(control_plane: ControlPlane, change: dict, field: str) -> None:
    client = get_client()
    app_id = client.call("POST", "/v1/apps", {"name": "bad-definition", "mode": "ephemeral"})["app_id"]
    try:
        with pytest.raises(InvalidError, match=f"invalid function definition: .* - at {re.escape(field)}"):
            client.call("POST", f"/v1/apps/{app_id}/functions",
                        {"functions": [{"tag": "f", "serialized_fn": b"x", **change}]})
        with pytest.raises(InvalidError, match="functions\\[0\\]"):
            client.call("POST", "/v1/apps/deploy", {"name": "bad-definition", "functions": [{"tag": "f", **change}]})
    finally:
        client.call("POST", f"/v1/apps/{app_id}/stop", {})
    with pytest.raises(NotFoundError):  # the refused deploy left no app behind
        shoal.App.lookup("bad-definition")


@pytest.mark.parametrize(("field", "value"), [
    ("source_dir", "/root"),
    ("image_built", {"image_id": "im-x", "python": "/usr/bin/python3", "root": "/"}),
    ("variant_of", "fu-x"),
    ("params", b"\x80"),
])
def test_what_the_control_plane_adds_is_never_taken_from_a_client(control_plane: ControlPlane, field: str,
                                                                    value: object) -> None:
    """A definition naming a host path (its source, an image root) would have it mounted into its containers."""
    client = get_client()
    app_id = client.call("POST", "/v1/apps", {"name": "crafted-definition", "mode": "ephemeral"})["app_id"]
    try:
        with pytest.raises(InvalidError, match=re.escape(f"`functions[0].{field}` is set by the control plane")):
            client.call("POST", f"/v1/apps/{app_id}/functions",
                        {"functions": [{"tag": "f", "serialized_fn": b"x", field: value}]})
        with pytest.raises(InvalidError, match=re.escape(f"`functions[0].{field}`")):
            client.call("POST", "/v1/apps/deploy", {"name": "crafted-definition",
                                                    "functions": [{"tag": "f", "serialized_fn": b"x", field: value}]})
    finally:
        client.call("POST", f"/v1/apps/{app_id}/stop", {})
