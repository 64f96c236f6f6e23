"""Image listing, removal and clean-up against a real control plane: two apps, one stopped; the stopped app's
image goes only once unused for the grace period, the running app's image is never removed (409 naming it)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.controlplane.oci_images import debian_slim_mode
from tests.conftest import ControlPlane, _use_home, run_cli, wait_for
from tests.integration.oci_registry import have_registry_tools, layer_tar, registry
from tests.integration.rootfs_images import rootfs_tars  # noqa: F401 - a fixture (the registry's images)
from tests.integration.test_oci_images import reg  # noqa: F401 - a fixture: a registry with test images


@pytest.fixture
def control_plane_with_grace(request, tmp_path: Path) -> Iterator[ControlPlane]:
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home", env={"SHOAL_IMAGE_GC_GRACE": request.param}).start()
    _use_home(cp.home)
    yield cp
    cp.stop()
    if previous:
        _use_home(Path(previous))


def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    import msgpack

    from shoal._client.transport import get_client

    status, payload = get_client().request_raw(method, path, msgpack.packb(body) if body is not None else None)
    return status, msgpack.unpackb(payload) if payload else {}


def listed() -> dict[str, dict]:
    status, reply = call("GET", "/v1/images")
    assert status == 200
    return {i["image_id"]: i for i in reply["images"]}


@pytest.mark.parametrize("control_plane_with_grace", ["3600"], indirect=True)  # no automatic pass meanwhile
def test_prune_removes_a_stopped_apps_image_after_the_grace_and_never_one_in_use(control_plane_with_grace):
    import image_gc_app as m

    cp = control_plane_with_grace
    kept_id, gone_id = m.kept_image.object_id, m.gone_image.object_id
    with m.kept_app.run(quiet=True):
        assert m.kept.remote() == "kept"
        with m.gone_app.run(quiet=True):
            assert m.gone.remote() == "gone"
        images = listed()
        assert {kept_id, gone_id} <= set(images)
        assert images[kept_id]["kind"] == ("oci" if debian_slim_mode() == "rootfs" else "venv")
        assert images[kept_id]["state"] == "built"
        assert any("image-gc-kept" in a for a in images[kept_id]["apps"]) and images[gone_id]["apps"] == []
        assert images[gone_id]["size"] > 0 and images[gone_id]["last_used"] is not None

        # just stopped: not unused for the grace period yet
        status, reply = call("POST", "/v1/images/prune", {"grace_s": 3})
        assert status == 200 and reply["removed"] == []
        assert (cp.home / "images" / gone_id / "manifest.json").exists()

        # in use by the running app: refused, naming it, by the API and the CLI
        status, reply = call("DELETE", f"/v1/images/{kept_id}")
        assert status == 409 and reply["type"] == "ConflictError"
        assert "used by app image-gc-kept (ap-" in reply["error"]
        result = run_cli("image", "rm", "-y", kept_id)
        assert result.returncode != 0 and "used by app image-gc-kept" in result.stderr

        # once unused for the grace period the stopped app's image goes, the running app's stays
        removed: list[str] = []

        def pruned() -> bool:
            status, reply = call("POST", "/v1/images/prune", {"grace_s": 3})
            assert status == 200 and kept_id not in reply["removed"]
            removed.extend(reply["removed"])
            return gone_id in removed

        assert wait_for(pruned, timeout=90, interval=1.0)
        assert removed == [gone_id]
        assert not (cp.home / "images" / gone_id).exists()
        assert (cp.home / "images" / kept_id / "manifest.json").exists()
        assert gone_id not in listed()
        assert m.kept.remote() == "kept"  # still runs on its image
        last_used = json.loads((cp.home / "images" / ".last_used.json").read_text())
        assert kept_id in last_used and gone_id not in last_used

    # the CLI lists and prunes too
    result = run_cli("image", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert kept_id in {i["image_id"] for i in json.loads(result.stdout)}
    result = run_cli("image", "prune", "--grace", "3600", "--dry-run")
    assert result.returncode == 0 and "Nothing to remove" in result.stdout and "unused for 1h 0m" in result.stdout


@pytest.mark.parametrize("control_plane_with_grace", ["2"], indirect=True)
def test_the_control_plane_cleans_up_unused_images_by_itself(control_plane_with_grace):
    import image_gc_app as m

    cp = control_plane_with_grace
    with m.gone_app.run(quiet=True):
        assert m.gone.remote() == "gone"
        assert (cp.home / "images" / m.gone_image.object_id / "manifest.json").exists()
    assert wait_for(lambda: not (cp.home / "images" / m.gone_image.object_id).exists(), timeout=90, interval=0.5)
    status, reply = call("DELETE", f"/v1/images/{m.gone_image.object_id}")
    assert status == 404 and reply["type"] == "NotFoundError"
    status, reply = call("DELETE", "/v1/images/not-an-id")
    assert status == 400 and "image_id" in reply["error"]


@pytest.mark.skipif(bool(have_registry_tools()) or os.geteuid() != 0,
                    reason=have_registry_tools() or "the layer store runs as root")
@pytest.mark.parametrize("control_plane_with_grace", ["3600"], indirect=True)
def test_oci_records_go_with_the_layers_only_they_use(control_plane_with_grace, tmp_path):
    """Layer-store records named by image ids are images; a pulled base stays while a kept image has its layers."""
    from shoal.oci.layout import LayoutWriter
    from shoal.oci.registry import pull, push_layout
    from shoal.oci.store import LayerStore

    cp = control_plane_with_grace
    base, top_old, top_new, other = (layer_tar([("file", f"{n}.txt", n.encode() * 1000)])
                                     for n in ("base", "old", "new", "other"))
    old_id, new_id = "im-" + "1" * 64, "im-" + "2" * 64
    with registry(tmp_path / "registry") as reg:  # noqa: F811 - this test's own
        for repo, layers in (("t/base", [base]), ("t/old", [base, top_old]), ("t/new", [base, top_new]),
                             ("t/other", [other])):
            writer = LayoutWriter(tmp_path / repo.replace("/", "-"))
            writer.tag("v1", writer.add_image([writer.add_layer(t) for t in layers], {}))
            push_layout(tmp_path / repo.replace("/", "-"), "v1", f"{reg}/{repo}:v1")
        store = LayerStore(cp.home / "oci")
        pull(store, f"{reg}/t/base:v1")
        pull(store, f"{reg}/t/old:v1", name=old_id)  # an OCI image no app has used for two hours
        pull(store, f"{reg}/t/new:v1", name=new_id)  # one just built
        pull(store, f"{reg}/t/other:v1")  # a pull no image is built on
    two_hours_ago = time.time() - 7200
    for record in store.list():
        if record.name != new_id:
            os.utime(store._record_path(record.name), (two_hours_ago, two_hours_ago))

    images = listed()
    assert images[old_id]["kind"] == "oci" and images[new_id]["kind"] == "oci" and images[old_id]["size"] > 0
    assert f"{reg}/t/base:v1" not in images  # pulled bases are not images

    status, reply = call("POST", "/v1/images/prune", {"grace_s": 3600})
    assert status == 200 and reply["removed"] == [old_id] and reply["bytes_freed"] > 0
    assert {r.name for r in store.list()} == {new_id, f"{reg}/t/base:v1"}  # the base: new's layers
    assert len(list(store.layers.iterdir())) == 2  # base and new's top; old's top and other's layer are gone
    assert set(listed()) == {new_id}


@pytest.mark.parametrize("control_plane_with_grace", ["3600"], indirect=True)
def test_images_of_running_sandboxes_and_fresh_snapshots_stay(control_plane_with_grace, reg):  # noqa: F811
    """A sandbox's image is busy while it runs; a snapshot stays for the grace period even when nothing uses it
    yet (its id was handed out), and outlives the image it was taken on."""
    import msgspec

    import shoal
    from tests.integration.test_sandbox_server import create, new_app, read_all, wait

    app = new_app()
    base = shoal.Image.from_registry(f"{reg}/test/python:v1")
    sid = create(app, image=msgspec.to_builtins(base.to_wire()), timeout=300)
    base_id = base.object_id
    status, reply = call("DELETE", f"/v1/images/{base_id}")
    assert status == 409 and f"sandbox {sid} runs on it" in reply["error"], reply
    from shoal._client.transport import get_client

    get_client().call("POST", f"/v1/sandboxes/{sid}/fs/write", {"path": "/etc/kept", "data": b"kept\n"})
    snap = get_client().call("POST", f"/v1/sandboxes/{sid}/snapshot")["image_id"]
    status, reply = call("POST", "/v1/images/prune", {"grace_s": 0})
    assert status == 200 and base_id not in reply["removed"] and snap not in reply["removed"], reply
    assert listed()[snap]["busy"].startswith(f"a snapshot of sandbox {sid}")
    status, reply = call("DELETE", f"/v1/images/{snap}")
    assert status == 409 and "snapshot" in reply["error"], reply

    get_client().call("POST", f"/v1/sandboxes/{sid}/terminate")
    wait(sid)
    status, reply = call("POST", "/v1/images/prune", {"grace_s": 0})
    assert status == 200 and base_id in reply["removed"] and snap not in reply["removed"], reply
    other = create(app, "cat", "/etc/kept", image={"image_id": snap}, timeout=60)
    assert read_all(f"/v1/sandboxes/{other}") == b"kept\n"
