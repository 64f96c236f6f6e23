"""Definitions never name host paths: every path the control plane mounts into a container (source, image,
image files, volumes) is derived from an id it issued or checked. A crafted definition, sent with the admin token
over raw HTTP, that names a host path in any field is refused with a 4xx, and nothing of it runs."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import msgpack
import pytest

from shoal._spec.images import BUILDER_VERSION, image_id_for


def _api(cp, method: str, path: str, body: object = None) -> httpx.Response:
    token = (cp.home / "token").read_text().strip()
    return httpx.request(method, cp.url + path, timeout=120, content=msgpack.packb(body) if body else None,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"})


def _image(*steps: dict) -> dict:
    steps = [{"repr": "crafted", **s} for s in steps]
    return {"image_id": image_id_for("3.11", steps), "builder": BUILDER_VERSION, "python_version": "3.11",
            "steps": steps}


ROOT = "../" * 24 + "root"  # from any directory, the host's /root
ESCAPED = f"tmp/shoal-escaped-{uuid.uuid4().hex[:12]}"  # made on the host if an image step could escape
CRAFTED = {
    "source_dir": {"source_dir": "/root"},
    "source_id naming a path": {"source_id": ROOT},
    "source_id naming the state database": {"source_id": "../state.db"},
    "built image root": {"image_built": {"image_id": "im-" + "0" * 64, "python": "/usr/bin/python3", "root": "/"}},
    "image id naming a path": {"image": {"image_id": ROOT, "builder": BUILDER_VERSION, "python_version": "3.11"}},
    "image file from a host path": {"image": _image({"kind": "add_local_file", "remote_path": "/x",
                                                     "sha": "../state.db"})},
    "image file escaping the image": {"image": _image({"kind": "add_local_file", "remote_path": "/../../../x",
                                                       "sha": "0" * 64})},
    "workdir escaping the image": {"image": _image({"kind": "workdir", "path": "/" + "../" * 24 + ESCAPED,
                                                    "remote_path": "/ok"})},
    "volume naming a path": {"volumes": [{"mount_path": "/data", "volume_id": ROOT}]},
}


@pytest.mark.parametrize("field", sorted(CRAFTED))
def test_a_definition_naming_a_host_path_is_refused(control_plane, field: str) -> None:
    (control_plane.home / "sources").mkdir(exist_ok=True)  # as after any upload: a path through it resolves
    created = _api(control_plane, "POST", "/v1/apps", {"name": "crafted", "mode": "ephemeral"})
    app_id = msgpack.unpackb(created.content)["app_id"]
    try:
        definition = {"tag": "f", "module": "crafted", "serialized_fn": b"x", **CRAFTED[field]}
        if "source_id" in definition:
            definition.pop("serialized_fn")
        resp = _api(control_plane, "POST", f"/v1/apps/{app_id}/functions", {"functions": [definition]})
        assert 400 <= resp.status_code < 500, (field, resp.status_code, resp.content)
        assert msgpack.unpackb(resp.content)["error"]
        apps = msgpack.unpackb(_api(control_plane, "GET", "/v1/apps").content)["apps"]
        mine = next(a for a in apps if a["app_id"] == app_id)
        assert mine["functions"] == {} and mine["containers"] == 0
    finally:
        _api(control_plane, "POST", f"/v1/apps/{app_id}/stop", {})
        escaped = Path("/") / ESCAPED
        if escaped.exists():
            escaped.rmdir()
            pytest.fail(f"a crafted image step made {escaped} on the host")
