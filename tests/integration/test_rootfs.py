"""Root filesystems made of OCI layers: the test images, build steps run on layers, containers on an OCI image."""

from __future__ import annotations

import os

import pytest

from shoal.oci.registry import pull, push_layout
from shoal.oci.store import LayerStore
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
