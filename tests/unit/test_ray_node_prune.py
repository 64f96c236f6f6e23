"""A Ray node's layer store is pruned of images its containers stopped using (shoal/backends/ray_images.py), never
of one a container holds, and never of layers another kept image shares. A real store, real locks."""

from __future__ import annotations

import io
import os
import tarfile
import time

from shoal.backends.ray_images import RECORD_PREFIX, hold_image, prune_node, stale_images
from shoal.oci.layout import store_image
from shoal.oci.store import LayerStore

HOUR = 3600.0


def layer(name: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = name.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def image_id(n: int) -> str:
    return "im-" + f"{n:02x}" * 32


def test_the_policy_is_age_against_the_grace_period():
    assert stale_images({"a": 0.0, "b": 9 * HOUR, "c": 10 * HOUR}, now=10 * HOUR, grace_s=2 * HOUR) == ["a"]
    assert stale_images({"a": 0.0}, now=HOUR, grace_s=HOUR) == []  # exactly the grace period: kept


def test_unused_images_go_held_and_recent_ones_stay_shared_layers_survive(tmp_path):
    store = LayerStore(tmp_path / "oci")
    base = layer("base.txt")
    old, held, recent = image_id(1), image_id(2), image_id(3)
    for i, n in enumerate((old, held, recent)):
        store_image(store, RECORD_PREFIX + n, [base, layer(f"own{i}.txt")])
    store_image(store, "debian:bookworm", [layer("not-pulled-by-a-node.txt")])  # not a node's pull: never pruned
    fd = hold_image(store, held)  # a container runs on it
    now = time.time()
    for n in (old, held):
        hold_file = store.root / "in-use" / n.removeprefix("im-")
        hold_file.touch()
        os.utime(hold_file, (now - 5 * HOUR, now - 5 * HOUR))
        os.utime(store._record_path(RECORD_PREFIX + n), (now - 5 * HOUR, now - 5 * HOUR))
    layers_before = len(list(store.layers.iterdir()))
    try:
        assert prune_node(store, grace=HOUR, now=now) == [RECORD_PREFIX + old]
    finally:
        os.close(fd)
    names = {x.name for x in store.list()}
    assert names == {RECORD_PREFIX + held, RECORD_PREFIX + recent, "debian:bookworm"}
    assert len(list(store.layers.iterdir())) == layers_before - 1  # its own layer went, the shared base stayed
    for image in store.list():
        assert all(store.layer_path(x.diff_id).is_dir() for x in image.layers)
    assert prune_node(store, grace=HOUR, now=now) == [RECORD_PREFIX + held]  # released: it goes on the next pass
