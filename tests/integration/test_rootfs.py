"""Root filesystems made of OCI layers: the test images, build steps run on layers, containers on an OCI image."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from shoal.backends.build_sandbox import BuildSandbox
from shoal.backends.sandbox import id_base
from shoal.oci.registry import pull, push_layout
from shoal.oci.store import LayerStore
from shoal.oci.upper import layer_from_upper
from tests.integration.oci_registry import have_registry_tools, registry
from tests.integration.rootfs_images import (
    IMAGE_PYTHON,
    MARKER,
    rootfs_tars,  # noqa: F401 (a fixture)
    store_test_image,
    write_layout,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the layer store keeps ownership: it runs as root")


def test_the_test_images_have_a_root_filesystem(tmp_path, rootfs_tars) -> None:  # noqa: F811
    store = LayerStore(tmp_path / "store")
    image = store_test_image(store, rootfs_tars, "python")
    top, base = store.lowerdirs(image)
    assert (base / MARKER.lstrip("/")).is_file() and (base / "bin").is_symlink()
    assert (top / IMAGE_PYTHON.lstrip("/")).is_symlink() and (top / "usr/lib/python3.11/os.py").is_file()
    assert not (top / "usr/lib/python3.11/test").exists()
    assert (top / "usr/bin/python3.11").stat().st_uid == 0
    bare = store_test_image(store, rootfs_tars, "nopython")
    assert [x.diff_id for x in bare.layers] == [image.layers[0].diff_id]  # the same base layer, shared
    assert not (store.lowerdirs(bare)[0] / IMAGE_PYTHON.lstrip("/")).exists()


@pytest.mark.skipif(bool(have_registry_tools()), reason=have_registry_tools() or "ok")
def test_the_test_image_goes_through_a_registry(tmp_path, rootfs_tars) -> None:  # noqa: F811
    layout = write_layout(tmp_path / "layout", rootfs_tars, "python", tag="v1")
    with registry(tmp_path / "registry") as address:
        push_layout(layout, "v1", f"{address}/test/python:v1")
        store = LayerStore(tmp_path / "store")
        image = pull(store, f"{address}/test/python:v1")
    assert len(image.layers) == 2 and image.config.env[0].startswith("PATH=")
    assert (store.lowerdirs(image)[0] / "usr/bin/python3.11").is_file()


# -- build steps on layers -----------------------------------------------------------------------------------------
def _sandbox(tmp_path: Path) -> BuildSandbox:
    sandbox = BuildSandbox(str(tmp_path / "state"))
    avail = sandbox.availability()
    if avail.isolation != "sandbox":
        pytest.skip(f"no sandbox here: {avail.reason}")
    return sandbox


def _members(store: LayerStore, layer: dict) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(store.blob_path(layer["digest"]), "r:gz") as tf:
        return {m.name: m for m in tf.getmembers()}


def _tree(path: Path) -> dict[str, tuple]:
    """Every entry under `path` with its type, mode, owner and content hash: what must not change."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
            out[str(p.relative_to(path))] = (st.st_mode, st.st_uid, st.st_gid, digest)
    return out


STEP = """set -e
id -u > /etc/whoami
stat -c %u:%g /etc/os-release > /etc/owner
echo new > /etc/x
rm /etc/shoal-test-image
rm -rf /usr/lib/python3.11/json && mkdir /usr/lib/python3.11/json && echo hi > /usr/lib/python3.11/json/only
echo "step output"
"""


def test_a_step_on_layers_becomes_a_layer_and_the_host_is_unchanged(tmp_path, rootfs_tars) -> None:  # noqa: F811
    sandbox = _sandbox(tmp_path)
    store = LayerStore(tmp_path / "store", id_shift=id_base())
    image = store_test_image(store, rootfs_tars, "python")
    lowers = [str(x) for x in store.lowerdirs(image)]
    before = {d: _tree(Path(d)) for d in lowers}
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    output: list[str] = []
    created: set[str] = set()
    rc = asyncio.run(sandbox.run_on_layers(lowers, str(upper), str(work), ["/bin/sh", "-c", STEP],
                                           env={"PATH": "/usr/bin:/bin"}, log=output.append, created=created))
    assert rc == 0, "".join(output)
    assert "step output" in "".join(output)
    assert "/run/shoal" in created  # made as a mountpoint in the upper: no part of the layer
    layer = layer_from_upper(store, upper, skip=created)
    members = _members(store, layer)
    assert members["etc/x"].isreg() and members["etc/x"].uid == 0 and members["etc/x"].gid == 0
    assert "etc/.wh.shoal-test-image" in members  # the deleted lower file: a whiteout
    assert "usr/lib/python3.11/json/.wh..wh..opq" in members  # a directory replaced whole: opaque
    assert not [n for n in members if n.split("/")[0] in ("proc", "sys", "dev", "run")], sorted(members)
    assert not any(n.startswith("etc/resolv.conf") for n in members)
    # the host: the layers below are as they were, and nothing appeared at the paths the step wrote
    assert {d: _tree(Path(d)) for d in lowers} == before
    assert not Path("/etc/x").exists() and not Path("/etc/whoami").exists()

    # a second step on the image plus that layer sees both changes; inside, the image's files are root's
    layer_dir = store.layer_path(layer["diff_id"])
    assert (layer_dir / "etc/x").stat().st_uid == id_base()
    upper2, work2 = tmp_path / "upper2", tmp_path / "work2"
    upper2.mkdir()
    work2.mkdir()
    output.clear()
    check = ("cat /etc/whoami /etc/owner /etc/x; ls /usr/lib/python3.11/json; test -e /etc/shoal-test-image || "
             "echo gone; python3 -c 'import json; json.dumps(1)' 2>/dev/null || echo no-json; exit 3")
    rc = asyncio.run(sandbox.run_on_layers([str(layer_dir), *lowers], str(upper2), str(work2),
                                           ["/bin/sh", "-c", check], env={"PATH": "/usr/bin:/bin"},
                                           log=output.append))
    assert rc == 3
    assert "".join(output).split() == ["0", "0:0", "new", "only", "gone", "no-json"]

    # the built image is recorded like a pulled one
    built = store.record_image("built/test:1", [*image.layers, layer], {"Env": ["PATH=/usr/bin:/bin"]})
    assert store.get("built/test:1") == built and len(built.layers) == 3
    assert store.lowerdirs(built)[0] == layer_dir and store.has_blob(built.manifest_digest)


def test_a_step_runs_as_the_images_user_and_sees_only_its_binds(tmp_path, rootfs_tars) -> None:  # noqa: F811
    sandbox = _sandbox(tmp_path)
    store = LayerStore(tmp_path / "store", id_shift=id_base())
    lowers = [str(x) for x in store.lowerdirs(store_test_image(store, rootfs_tars, "nopython"))]
    shared = tmp_path / "tool"
    shared.mkdir()
    (shared / "t").write_text("tool\n")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    output: list[str] = []
    script = "id -u; id -g; echo $HOME; cat /opt/tool/t; touch /opt/tool/w 2>/dev/null || echo read-only; pwd"
    rc = asyncio.run(sandbox.run_on_layers(lowers, str(upper), str(work), ["/bin/sh", "-c", script],
                                           env={"PATH": "/usr/bin:/bin"}, cwd="/home/app", user="app",
                                           binds=[[str(shared), "/opt/tool", False]], network=False,
                                           log=output.append))
    assert rc == 0, "".join(output)
    assert "".join(output).split() == ["1000", "1000", "/home/app", "tool", "read-only", "/home/app"]
    rc = asyncio.run(sandbox.run_on_layers(lowers, str(upper), str(work), ["/bin/sh", "-c", "true"],
                                           env={}, user="nobody-here", log=output.append))
    assert rc == 121 and "no user 'nobody-here'" in "".join(output)
