"""shoal.oci against a real registry on loopback: pulls by tag and digest, auth, multi-arch indexes, the layer
store's sharing and GC, and the layers stacked with a real overlayfs mount."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.oci.layout import LayoutWriter
from shoal.oci.registry import ImageNotFoundError, RegistryAuthError, pull, push_layout
from shoal.oci.store import Image, LayerStore
from tests.integration.oci_registry import have_registry_tools, layer_tar, random_layer, registry, token_registry

pytestmark = pytest.mark.skipif(bool(have_registry_tools()), reason=have_registry_tools() or "ok")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the layer store keeps ownership and makes whiteout "
                                "device nodes: it runs as root")

BASE = layer_tar([
    ("dir", "etc"), ("file", "etc/a", b"a\n"), ("file", "etc/b", b"b\n"),
    ("dir", "d"), ("file", "d/x", b"x\n"),
    ("file", "usr/bin/tool", b"#!/bin/sh\n", 0o4755, 0, 0),
    ("file", "home/app/owned", b"mine\n", 0o600, 1000, 1000),
    ("symlink", "etc/link", "/etc/b"), ("hardlink", "etc/hard", "etc/b"),
])
TOP = layer_tar([
    ("dir", "etc"), ("file", "etc/.wh.a", b""),  # deletes etc/a
    ("dir", "d"), ("file", "d/.wh..wh..opq", b""), ("file", "d/y", b"y\n"),  # d/ now holds only y
    ("file", "etc/new", b"new\n"),
])
CONFIG = {"Env": ["PATH=/usr/bin:/bin", "A=1"], "WorkingDir": "/srv", "User": "1000:1000",
          "Entrypoint": ["/usr/bin/tool"], "Cmd": ["--flag"]}


def _push(tmp: Path, reg: str, repo: str, layers: list[bytes], *, credentials=None, config=CONFIG) -> str:
    """Makes an image of these layers, pushes it as REG/REPO:v1; returns its manifest digest."""
    layout = tmp / f"layout-{repo.replace('/', '-')}"
    writer = LayoutWriter(layout)
    desc = writer.add_image([writer.add_layer(t) for t in layers], config)
    writer.tag("v1", desc)
    push_layout(layout, "v1", f"{reg}/{repo}:v1", credentials=credentials)
    return desc["digest"]


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


@pytest.fixture
def store(tmp_path) -> LayerStore:
    return LayerStore(tmp_path / "store")


@needs_root
def test_pull_by_tag_records_config_and_unpacks_layers_with_overlay_whiteouts(tmp_path, reg, store) -> None:
    _push(tmp_path, reg, "test/two", [BASE, TOP])
    image = pull(store, f"{reg}/test/two:v1")
    assert image.name == f"{reg}/test/two:v1"
    assert image.config.env == ("PATH=/usr/bin:/bin", "A=1")
    assert (image.config.workdir, image.config.user) == ("/srv", "1000:1000")
    assert (image.config.entrypoint, image.config.cmd) == (("/usr/bin/tool",), ("--flag",))
    base, top = store.lowerdirs(image)[::-1]
    assert (base / "etc/a").read_text() == "a\n"
    st = os.lstat(base / "usr/bin/tool")
    assert stat.S_IMODE(st.st_mode) == 0o4755  # setuid kept
    st = os.lstat(base / "home/app/owned")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o600)
    assert os.readlink(base / "etc/link") == "/etc/b"
    assert os.stat(base / "etc/hard").st_ino == os.stat(base / "etc/b").st_ino
    wh = os.lstat(top / "etc/a")  # the OCI whiteout became an overlayfs one
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert not (top / "etc/.wh.a").exists()
    assert os.getxattr(top / "d", "trusted.overlay.opaque") == b"y"
    assert not (top / "d/.wh..wh..opq").exists()
    assert store.get(image.name) == image


@contextlib.contextmanager
def overlay_mount(store: LayerStore, image: Image, tmp: Path) -> Iterator[Path]:
    """The image's layers stacked with overlayfs under tmp (what a container's root will be): the merged root,
    unmounted after; skips the test where overlayfs cannot be mounted."""
    upper, work, merged = (tmp / n for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir(exist_ok=True)
    lower = ":".join(str(p) for p in store.lowerdirs(image))
    mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                              f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount overlayfs here: {mounted.stderr.decode().strip()}")
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)


@needs_root
def test_whiteouts_apply_when_the_layers_are_stacked_with_overlayfs(tmp_path, reg, store) -> None:
    _push(tmp_path, reg, "test/stack", [BASE, TOP])
    image = pull(store, f"{reg}/test/stack:v1")
    with overlay_mount(store, image, tmp_path) as merged:
        assert sorted(os.listdir(merged / "etc")) == ["b", "hard", "link", "new"]  # a is whited out
        assert sorted(os.listdir(merged / "d")) == ["y"]  # opaque: the base's x is hidden
        assert (merged / "etc/new").read_text() == "new\n"
        (merged / "etc/b").write_text("changed\n")  # writes go to the private upper layer only
        assert (store.lowerdirs(image)[1] / "etc/b").read_text() == "b\n"


@needs_root
def test_pull_by_digest_and_a_wrong_digest(tmp_path, reg, store) -> None:
    digest = _push(tmp_path, reg, "test/bydigest", [BASE])
    image = pull(store, f"{reg}/test/bydigest@{digest}")
    assert image.manifest_digest == digest
    assert (store.lowerdirs(image)[0] / "etc/b").read_text() == "b\n"
    with pytest.raises(ImageNotFoundError, match=f"pulling {reg}/test/bydigest@sha256:0+: no such image"):
        pull(store, f"{reg}/test/bydigest@sha256:" + "0" * 64)
    with pytest.raises(ImageNotFoundError, match="no such image"):
        pull(store, f"{reg}/test/nothing:v1")


@needs_root
def test_a_docker_schema2_image_pulls_too(tmp_path, reg, store) -> None:
    layout = tmp_path / "docker"
    writer = LayoutWriter(layout)
    writer.tag("v1", writer.add_image([writer.add_layer(BASE), writer.add_layer(TOP)], CONFIG))
    push_layout(layout, "v1", f"{reg}/test/docker:v1", docker_format=True)
    with urllib.request.urlopen(urllib.request.Request(
            f"http://{reg}/v2/test/docker/manifests/v1",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})) as resp:
        assert resp.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    image = pull(store, f"{reg}/test/docker:v1")
    assert image.config.cmd == ("--flag",)
    assert sorted(os.listdir(store.lowerdirs(image)[1] / "d")) == ["x"]  # the base layer, unpacked


@needs_root
def test_a_multi_arch_index_resolves_to_linux_amd64(tmp_path, reg, store) -> None:
    layout = tmp_path / "multi"
    writer = LayoutWriter(layout)
    manifests = [writer.add_image([writer.add_layer(layer_tar([("file", "arch", arch.encode())]))], {},
                 architecture=arch) for arch in ("arm64", "amd64", "s390x")]
    index = writer.add_index(manifests)
    writer.tag("v1", index)
    push_layout(layout, "v1", f"{reg}/test/multi:v1", all_platforms=True)
    image = pull(store, f"{reg}/test/multi:v1")
    assert (store.lowerdirs(image)[0] / "arch").read_text() == "amd64"
    amd64 = next(m for m in manifests if m["platform"]["architecture"] == "amd64")
    assert image.manifest_digest == amd64["digest"]
    image = pull(store, f"{reg}/test/multi@{index['digest']}", name="by-index-digest")  # an index by digest too
    assert (store.lowerdirs(image)[0] / "arch").read_text() == "amd64"


@needs_root
def test_auth_basic_credentials_required_refused_and_accepted(tmp_path) -> None:
    with registry(tmp_path / "authreg", users={"alice": "s3cret"}) as reg:
        _push(tmp_path, reg, "private/img", [BASE], credentials=("alice", "s3cret"))
        store = LayerStore(tmp_path / "store")
        with pytest.raises(RegistryAuthError) as exc:
            pull(store, f"{reg}/private/img:v1")
        assert str(exc.value) == (f"pulling {reg}/private/img:v1: the registry {reg} requires credentials and none "
                                  "were given: pass a secret with REGISTRY_USERNAME and REGISTRY_PASSWORD")
        with pytest.raises(RegistryAuthError, match="refused the credentials given"):
            pull(store, f"{reg}/private/img:v1", credentials=("alice", "wrong"))
        image = pull(store, f"{reg}/private/img:v1", credentials=("alice", "s3cret"))
        assert (store.lowerdirs(image)[0] / "etc/a").read_text() == "a\n"
        assert store.list() == [image]


@needs_root
def test_two_images_on_one_base_share_its_layers_on_disk_and_gc_keeps_what_is_used(tmp_path, reg) -> None:
    base = random_layer("base", 4 << 20)
    _push(tmp_path, reg, "test/one", [base, random_layer("one", 256 << 10)])
    _push(tmp_path, reg, "test/two-on-base", [base, random_layer("two", 256 << 10)])

    alone = LayerStore(tmp_path / "alone")
    pull(alone, f"{reg}/test/one:v1")
    one_image_bytes = alone.disk_usage()

    store = LayerStore(tmp_path / "shared")
    one = pull(store, f"{reg}/test/one:v1")
    two = pull(store, f"{reg}/test/two-on-base:v1")
    assert one.layers[0] == two.layers[0]
    assert store.lowerdirs(one)[-1] == store.lowerdirs(two)[-1]  # the very same directory
    assert len(list(store.layers.iterdir())) == 3
    both = store.disk_usage()
    # the base (~8 MiB: blob + unpacked) is stored once: two images cost one image plus a small top layer
    assert both < one_image_bytes + (2 << 20), (both, one_image_bytes)
    assert both < 1.5 * one_image_bytes

    assert store.remove(one.name) and not store.remove(one.name)
    result = store.prune()
    assert result.layers == 1 and result.blobs == 3  # one's top layer, its config and manifest; base stays
    assert store.lowerdirs(two)[-1].is_dir() and (store.lowerdirs(two)[0] / "two/f0").is_file()
    assert all(store.has_blob(d) for d in two.blob_digests)
    assert not store.layer_path(one.layers[1].diff_id).exists()

    result = store.prune(keep=[])
    assert result.images == (two.name,) and result.layers == 2
    assert store.list() == [] and not list(store.layers.iterdir()) and not list((store.blobs / "sha256").iterdir())


@needs_root
def test_a_second_pull_transfers_nothing_new(tmp_path, reg, store) -> None:
    _push(tmp_path, reg, "test/again", [BASE, TOP])
    first = pull(store, f"{reg}/test/again:v1")
    layer_dirs = {p: os.stat(p).st_ino for p in store.lowerdirs(first)}
    blobs = {p.name: os.stat(p).st_mtime_ns for p in (store.blobs / "sha256").iterdir()}
    again = pull(store, f"{reg}/test/again:v1")
    assert again == first
    assert {p: os.stat(p).st_ino for p in store.lowerdirs(again)} == layer_dirs  # not unpacked again
    layer_blobs = {x.digest.split(":")[1] for x in first.layers}
    assert {n: t for n, t in blobs.items() if n in layer_blobs} == {
        p.name: os.stat(p).st_mtime_ns for p in (store.blobs / "sha256").iterdir() if p.name in layer_blobs}


@needs_root
def test_the_record_is_plain_json_naming_the_image(tmp_path, reg, store) -> None:
    _push(tmp_path, reg, "test/record", [layer_tar([("file", "hello", b"hi")])])
    image = pull(store, f"{reg}/test/record:v1")
    (record,) = store.images.glob("*.json")
    assert json.loads(record.read_text())["name"] == image.name



@needs_root
def test_bearer_token_auth_flow(tmp_path) -> None:
    """The registry answers 401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`; the pull asks the realm
    for a token with the credentials (Basic) and retries with it."""
    with token_registry(tmp_path / "tokenreg", users={"bob": "pw"}) as (reg, tokens):
        try:
            urllib.request.urlopen(f"http://{reg}/v2/test/tok/manifests/v1").close()
            pytest.fail("the registry served a manifest without a token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
            challenge = exc.headers["WWW-Authenticate"]
            assert challenge.startswith("Bearer realm=") and 'service="shoal-test-registry"' in challenge
        _push(tmp_path, reg, "test/tok", [BASE], credentials=("bob", "pw"))
        store = LayerStore(tmp_path / "store")
        with pytest.raises(RegistryAuthError, match="requires credentials and none were given"):
            pull(store, f"{reg}/test/tok:v1")  # an anonymous token grants nothing
        with pytest.raises(RegistryAuthError, match="refused the credentials given"):
            pull(store, f"{reg}/test/tok:v1", credentials=("bob", "nope"))
        tokens.requests.clear()
        image = pull(store, f"{reg}/test/tok:v1", credentials=("bob", "pw"))
        assert (store.lowerdirs(image)[0] / "etc/b").read_text() == "b\n"
        assert ("bob", "repository:test/tok:pull") in tokens.requests


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry of a layer directory: type and mode, owner, size, device, link target, xattrs."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size if not stat.S_ISDIR(st.st_mode) else 0, st.st_rdev,
                os.readlink(p) if stat.S_ISLNK(st.st_mode) else None,
                sorted((k, os.getxattr(p, k, follow_symlinks=False)) for k in os.listxattr(p, follow_symlinks=False)))
    return out


@needs_root
def test_layers_unpacked_during_the_transfer_are_those_unpacked_after_it(tmp_path, reg) -> None:
    layers = [BASE, random_layer("big1", 6 << 20), random_layer("big2", 3 << 20), TOP]
    _push(tmp_path, reg, "test/early", layers)
    early, late = LayerStore(tmp_path / "early"), LayerStore(tmp_path / "late")
    a = pull(early, f"{reg}/test/early:v1")
    b = pull(late, f"{reg}/test/early:v1", early_unpack=False)
    assert a == b
    assert [_tree(p) for p in early.lowerdirs(a)] == [_tree(p) for p in late.lowerdirs(b)]
    assert sorted(p.name for p in early.layers.iterdir()) == sorted(x.diff_id[7:] for x in a.layers)
    assert list(early.tmp.iterdir()) == []  # no scratch left behind


@needs_root
def test_a_hostile_layer_fails_the_pull_and_writes_nothing_outside_the_store(tmp_path, reg) -> None:
    bad = layer_tar([("file", "ok", b"ok\n"), ("file", "../../../escape-early", b"x")])
    _push(tmp_path, reg, "test/hostile", [random_layer("pad", 2 << 20), bad])
    store = LayerStore(tmp_path / "s" / "store")
    with pytest.raises(Exception, match=r"'\.\.' in a layer path"):
        pull(store, f"{reg}/test/hostile:v1")
    assert not list(tmp_path.rglob("escape-early"))
    assert len(list(store.layers.iterdir())) <= 1  # the good layer at most; never the hostile one
    assert store.list() == []
