"""The layer store with hostile layers: nothing escapes the layer directory, devices are refused, a layer that
fails leaves nothing that looks complete, and prune removes scratch left by a crash."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from shoal.oci.layout import LayoutWriter, store_image
from shoal.oci.store import Layer, LayerStore
from shoal.oci.unpack import LayerError
from tests.integration.oci_registry import layer_tar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the layer store keeps ownership: it runs as root")


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(("entries", "message"), [
    ([("raw", _member("../escape"), b"")], "'..' in a layer path"),
    ([("raw", _member("a/../../escape"), b"")], "'..' in a layer path"),
    ([("raw", _member("/abs"), b"")], "absolute path"),
    ([("symlink", "out", "/tmp"), ("file", "out/through-link", b"x")], "is not a directory in this layer"),
    ([("symlink", "out", ".."), ("file", "out/x", b"x")], "is not a directory in this layer"),
    ([("hardlink", "h", "../../etc/passwd")], "'..' in a layer path"),
    ([("hardlink", "h", "/etc/passwd")], "absolute path"),
    ([("hardlink", "h", "missing")], "target is not a file of this layer"),
    ([("symlink", "out", "/etc"), ("hardlink", "h", "out/passwd")], "is not a directory in this layer"),
    ([("chr", "dev/sda")], "device nodes are not allowed"),
])
def test_hostile_layers_are_refused_and_leave_nothing(tmp_path, entries, message) -> None:
    outside = tmp_path / "outside-marker"
    store = LayerStore(tmp_path / "store")
    with pytest.raises(LayerError, match=message):
        store_image(store, "bad", [layer_tar(entries)])
    assert not list(store.layers.iterdir())  # no half layer under its final name
    assert not list(store.tmp.iterdir())  # its scratch is gone too
    assert store.get("bad") is None
    assert not outside.exists() and not (tmp_path / "escape").exists() and not Path("/escape").exists()


def test_a_forged_overlay_xattr_in_a_tar_is_dropped(tmp_path) -> None:
    info = _member("d", tarfile.DIRTYPE)
    info.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.note": "kept"}
    store = LayerStore(tmp_path / "store")
    image = store_image(store, "img", [layer_tar([("raw", info, None)])])
    d = store.lowerdirs(image)[0] / "d"
    assert "trusted.overlay.opaque" not in os.listxattr(d)
    assert os.getxattr(d, "user.note") == b"kept"


def test_a_layer_whose_content_does_not_match_its_diff_id_is_not_kept(tmp_path) -> None:
    store = LayerStore(tmp_path / "store")
    writer = LayoutWriter(store.tmp, blobs_dir=store.blobs)
    desc, _ = writer.add_layer(layer_tar([("file", "f", b"x")]))
    wrong = Layer(digest=desc["digest"], diff_id="sha256:" + "1" * 64, media_type=desc["mediaType"], size=1)
    with pytest.raises(LayerError, match="diff id"):
        store.unpack(wrong)
    assert not store.layer_path(wrong.diff_id).exists() and not list(store.layers.iterdir())


def test_a_later_entry_replaces_an_earlier_one_and_whiteouts_replace_files(tmp_path) -> None:
    store = LayerStore(tmp_path / "store")
    image = store_image(store, "img", [layer_tar([
        ("file", "f", b"old"), ("file", "f", b"new"),
        ("symlink", "s", "/x"), ("file", "s", b"file now"),  # replaces the link itself, never writes through it
        ("file", "gone", b"x"), ("file", ".wh.gone", b""),
    ])])
    root = store.lowerdirs(image)[0]
    assert (root / "f").read_bytes() == b"new"
    assert not (root / "s").is_symlink() and (root / "s").read_bytes() == b"file now"
    assert os.path.exists(root / "gone") and os.lstat(root / "gone").st_rdev == os.makedev(0, 0)


def test_prune_removes_scratch_left_by_a_crash_and_keeps_complete_layers(tmp_path) -> None:
    store = LayerStore(tmp_path / "store")
    image = store_image(store, "img", [layer_tar([("file", "f", b"x")])])
    (store.tmp / "layer-crashed").mkdir()
    (store.tmp / "layer-crashed" / "half").write_bytes(b"partial")
    (store.blobs / "sha256" / ".tmp-crashed").write_bytes(b"partial blob")
    result = store.prune()
    assert not list(store.tmp.iterdir())
    assert result.blobs == 1 and result.layers == 0
    assert (store.lowerdirs(image)[0] / "f").read_bytes() == b"x"


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd layers are read through the `zstd` program")
def test_a_zstd_layer_unpacks(tmp_path) -> None:
    tar = layer_tar([("file", "z/f", b"zstd data"), ("file", "z/.wh.gone", b"")])
    packed = subprocess.run(["zstd", "-q", "-c"], input=tar, capture_output=True, check=True).stdout
    store = LayerStore(tmp_path / "store")
    writer = LayoutWriter(store.tmp, blobs_dir=store.blobs)
    desc = writer.add_blob(packed, "application/vnd.oci.image.layer.v1.tar+zstd")
    manifest = writer.add_image([(desc, "sha256:" + hashlib.sha256(tar).hexdigest())])
    image = store.record("zstd", manifest["digest"])
    root = store.lowerdirs(image)[0]
    assert (root / "z/f").read_bytes() == b"zstd data" and os.lstat(root / "z/gone").st_rdev == os.makedev(0, 0)
