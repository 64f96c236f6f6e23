"""The control plane serves the images of its layer store read-only at `/v2/` (controlplane/oci_serve.py), and a
Ray node's side (backends/ray_images.py) pulls from there into a store of its own. A real control plane, real
skopeo, images written into the control plane's store with shoal.oci.layout."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.backends.ray_images import ImageUnavailableError, ensure_image, served_digest
from shoal.controlplane.credentials import pull_credential
from shoal.oci.layout import store_image
from shoal.oci.store import Image, LayerStore

from .oci_registry import layer_tar

pytestmark = [
    pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo (Debian package skopeo)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the layer store keeps file ownership: needs root"),
]

IMAGE_ID = "im-" + hashlib.sha256(b"oci-serve-test").hexdigest()


def _admin(cp) -> str:
    return (cp.home / "token").read_text().strip()


def _node(cp) -> str:
    return pull_credential(_admin(cp).encode())


@pytest.fixture(scope="module")
def served(control_plane) -> tuple[LayerStore, Image]:
    """An image of two layers (the second deletes a file of the first) in the control plane's own store."""
    store = LayerStore(control_plane.home / "oci")
    base = layer_tar([("dir", "etc"), ("file", "etc/os-release", b"ID=test\n"), ("file", "etc/gone", b"x")])
    top = layer_tar([("dir", "app"), ("file", "app/main.py", b"print('hi')\n"), ("chr", "etc/.wh.gone")])
    image = store_image(store, IMAGE_ID, [base, top], {"Env": ["PATH=/usr/bin:/bin"], "WorkingDir": "/app"})
    return store, image


def _registry(cp) -> str:
    return cp.url.removeprefix("http://")


def _skopeo(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(home)})


def test_skopeo_inspects_and_copies_with_the_node_credential(control_plane, served, tmp_path) -> None:
    store, image = served
    ref = f"docker://{_registry(control_plane)}/shoal/{IMAGE_ID}"
    out = _skopeo("inspect", "--tls-verify=false", "--creds", f"shoal-node:{_node(control_plane)}", ref + ":latest",
                  home=tmp_path)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["Digest"] == image.manifest_digest
    assert info["Layers"] == [x.digest for x in image.layers]
    assert info["Env"] == ["PATH=/usr/bin:/bin"]
    # By digest, copied whole into an OCI layout: every blob as the store has it.
    out = _skopeo("copy", "--quiet", "--src-tls-verify=false", "--src-creds", f"shoal-node:{_node(control_plane)}",
                  f"{ref}@{image.manifest_digest}", f"oci:{tmp_path / 'copy'}:x", home=tmp_path)
    assert out.returncode == 0, out.stderr
    for x in image.layers:
        copied = tmp_path / "copy" / "blobs" / "sha256" / x.digest.split(":", 1)[1]
        assert copied.read_bytes() == store.blob_path(x.digest).read_bytes()


def test_without_or_with_a_wrong_credential_skopeo_is_refused(control_plane, served, tmp_path) -> None:
    ref = f"docker://{_registry(control_plane)}/shoal/{IMAGE_ID}:latest"
    anonymous = _skopeo("inspect", "--tls-verify=false", "--no-creds", ref, home=tmp_path)
    assert anonymous.returncode != 0 and "unauthorized" in anonymous.stderr.lower(), anonymous.stderr
    wrong = _skopeo("inspect", "--tls-verify=false", "--creds", "shoal-node:shoal-pull.0000", ref, home=tmp_path)
    assert wrong.returncode != 0 and "unauthorized" in wrong.stderr.lower(), wrong.stderr


def test_the_registry_api_shape(control_plane, served) -> None:
    store, image = served
    url, node = control_plane.url, {"Authorization": f"Bearer {_node(control_plane)}"}
    base = httpx.get(f"{url}/v2/", timeout=30)
    assert base.status_code == 401 and base.headers["WWW-Authenticate"].startswith("Basic ")
    assert base.json()["errors"][0]["code"] == "UNAUTHORIZED"
    ok = httpx.get(f"{url}/v2/", headers=node, timeout=30)
    assert ok.status_code == 200 and ok.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert httpx.get(f"{url}/v2/", headers={"Authorization": f"Bearer {_admin(control_plane)}"}).status_code == 200
    manifest_url = f"{url}/v2/shoal/{IMAGE_ID}/manifests/latest"
    head = httpx.head(manifest_url, headers=node, timeout=30)
    raw = store.blob_path(image.manifest_digest).read_bytes()
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Docker-Content-Digest"] == image.manifest_digest
    assert head.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    assert int(head.headers["Content-Length"]) == len(raw)
    assert httpx.get(manifest_url, headers=node, timeout=30).content == raw
    by_digest = httpx.get(f"{url}/v2/shoal/anything/manifests/{image.manifest_digest}", headers=node, timeout=30)
    assert by_digest.content == raw
    layer = image.layers[0]
    blob = httpx.get(f"{url}/v2/shoal/{IMAGE_ID}/blobs/{layer.digest}", headers=node, timeout=30)
    assert blob.status_code == 200 and blob.content == store.blob_path(layer.digest).read_bytes()
    assert blob.headers["Docker-Content-Digest"] == layer.digest
    blob_head = httpx.head(f"{url}/v2/shoal/{IMAGE_ID}/blobs/{layer.digest}", headers=node, timeout=30)
    assert blob_head.status_code == 200 and int(blob_head.headers["Content-Length"]) == layer.size
    tags = httpx.get(f"{url}/v2/shoal/{IMAGE_ID}/tags/list", headers=node, timeout=30).json()
    assert tags == {"name": f"shoal/{IMAGE_ID}", "tags": ["latest"]}
    # Misses, in the registry's error shape.
    for path, status, code in [
        (f"/v2/shoal/{IMAGE_ID}/manifests/v9", 404, "MANIFEST_UNKNOWN"),
        (f"/v2/shoal/{IMAGE_ID}/manifests/sha256:{'0' * 64}", 404, "MANIFEST_UNKNOWN"),
        (f"/v2/shoal/{IMAGE_ID}/blobs/sha256:{'0' * 64}", 404, "BLOB_UNKNOWN"),
        (f"/v2/shoal/{IMAGE_ID}/blobs/sha512:abc", 400, "DIGEST_INVALID"),
        (f"/v2/Shoal/{IMAGE_ID}/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/shoal/im-none/tags/list", 404, "NAME_UNKNOWN"),
    ]:
        got = httpx.get(url + path, headers=node, timeout=30)
        assert got.status_code == status and got.json()["errors"][0]["code"] == code, (path, got.text)
    # A blob in the store that no recorded image names is not served.
    stray = b"not part of any image"
    digest = "sha256:" + hashlib.sha256(stray).hexdigest()
    store.blob_path(digest).write_bytes(stray)
    assert httpx.get(f"{url}/v2/shoal/{IMAGE_ID}/blobs/{digest}", headers=node, timeout=30).status_code == 404
    # A credential that is not UTF-8 is a 401 like any wrong one.
    import socket
    from urllib.parse import urlsplit

    with socket.create_connection((urlsplit(url).hostname, urlsplit(url).port), timeout=30) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 401 ")
    with socket.create_connection((urlsplit(url).hostname, urlsplit(url).port), timeout=30) as sock:  # the API's
        sock.sendall(b"GET /v1/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\r\nConnection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 401 ")
    # The node credential opens nothing but /v2/.
    assert httpx.get(f"{url}/v1/apps", headers=node, timeout=30).status_code == 401


def test_a_containers_credential_is_refused(control_plane, served) -> None:
    import oci_serve_app

    paths = ["/v2/", f"/v2/shoal/{IMAGE_ID}/manifests/latest",
             f"/v2/shoal/{IMAGE_ID}/blobs/{served[1].layers[0].digest}"]
    with oci_serve_app.app.run(quiet=True):
        got = oci_serve_app.try_registry.remote(paths)
    assert len(got) == 2 * len(paths)
    for status, body in got:
        assert status == 403, body
        error = json.loads(body)["errors"][0]
        assert error["code"] == "DENIED" and "containers may not pull images" in error["message"]


def test_a_node_pulls_into_its_own_store_once(control_plane, served, tmp_path) -> None:
    cp_store, image = served
    layers = [str(p) for p in cp_store.lowerdirs(image)]
    assert served_digest(cp_store, IMAGE_ID, layers) == image.manifest_digest
    node = LayerStore(tmp_path / "node" / "oci")
    local, pulled = ensure_image(node, control_plane.url, _node(control_plane), IMAGE_ID, image.manifest_digest,
                                 layers)
    assert pulled
    assert [Path(p).name for p in local] == [Path(p).name for p in layers]  # the same diff ids, top first
    assert all(Path(p).parent == node.layers for p in local)
    assert (Path(local[0]) / "app" / "main.py").read_bytes() == b"print('hi')\n"
    assert (Path(local[1]) / "etc" / "os-release").read_bytes() == b"ID=test\n"
    assert node.get(f"shoal/{IMAGE_ID}").manifest_digest == image.manifest_digest
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (node.blobs / "sha256").iterdir())
    again, pulled = ensure_image(node, control_plane.url, _node(control_plane), IMAGE_ID, image.manifest_digest,
                                 layers)
    assert again == local and not pulled
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (node.blobs / "sha256").iterdir()) == before


def test_concurrent_starts_on_one_node_pull_once(control_plane, served, tmp_path) -> None:
    cp_store, image = served
    layers = [str(p) for p in cp_store.lowerdirs(image)]
    node = LayerStore(tmp_path / "oci")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: ensure_image(node, control_plane.url, _node(control_plane), IMAGE_ID,
                                                       image.manifest_digest, layers), range(3)))
    assert sorted(pulled for _, pulled in results) == [False, False, True]
    assert len({tuple(local) for local, _ in results}) == 1


def test_a_wrong_node_credential_or_unknown_image_fails_clearly(control_plane, served, tmp_path) -> None:
    cp_store, image = served
    layers = [str(p) for p in cp_store.lowerdirs(image)]
    node = LayerStore(tmp_path / "oci")
    with pytest.raises(ImageUnavailableError, match=f"image {IMAGE_ID}: pulling it from the control plane failed"):
        ensure_image(node, control_plane.url, "shoal-pull.wrong", IMAGE_ID, image.manifest_digest, layers)
    with pytest.raises(ImageUnavailableError, match="no such image"):
        ensure_image(node, control_plane.url, _node(control_plane), IMAGE_ID, "sha256:" + "1" * 64, layers)
    with pytest.raises(ImageUnavailableError, match="no image with its 1 layers is recorded"):
        served_digest(cp_store, IMAGE_ID, layers[:1])


@pytest.fixture
def ray_node_home(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A one-node Ray cluster started with a SHOAL_HOME of its own (not the control plane's), this process its
    driver."""
    ray = pytest.importorskip("ray", reason="the Ray backend needs ray (pip install 'shoal[ray]')")
    from ray.cluster_utils import Cluster

    node_home = tmp_path / "node-home"
    node_home.mkdir()
    saved = os.environ.get("SHOAL_HOME")
    os.environ["SHOAL_HOME"] = str(node_home)  # what the node's processes inherit
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    finally:
        os.environ["SHOAL_HOME"] = saved or ""
        if saved is None:
            os.environ.pop("SHOAL_HOME")
    try:
        yield cluster, node_home
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_ray_node_pulls_the_image_its_container_runs(control_plane, served, ray_node_home, tmp_path) -> None:
    """The Ray backend's own path: the control plane's side names the image by digest, the container's actor on a
    node with a SHOAL_HOME of its own pulls it into that node's store before the container starts; a second
    container of the image on that node pulls nothing."""
    import asyncio

    from shoal._spec.definitions import FunctionDefinition
    from shoal.backends.base import ContainerImage, ContainerSpec
    from shoal.backends.ray import RayBackend

    cluster, node_home = ray_node_home
    cp_store, image = served
    layers = [str(p) for p in cp_store.lowerdirs(image)]
    backend_home = tmp_path / "backend-home"  # the backend's own files; its layer store is the control plane's
    backend_home.mkdir()
    (backend_home / "oci").symlink_to(control_plane.home / "oci")
    node_store = LayerStore(node_home / "oci")

    async def start(n: int) -> str:
        backend = RayBackend(cluster.address, backend_home)
        backend.image_registry = (control_plane.url, _node(control_plane))
        spec = ContainerSpec(container_id=f"ta-oci-{n}", function_id="fu-oci", app_id="ap-oci",
                             definition=FunctionDefinition(tag="probe"), env={}, idle=True,
                             image=ContainerImage(image_id=IMAGE_ID, python=sys.executable, layers=layers))
        try:
            handle = await backend.start(spec, None)
        except RuntimeError as exc:  # past the pull: whether the container itself runs is the sandbox's part
            return f"start failed: {exc}"
        handle.kill()
        await handle.wait()
        return "started"

    first = asyncio.run(start(1))
    pulled = node_store.get(f"shoal/{IMAGE_ID}")
    assert pulled is not None and pulled.manifest_digest == image.manifest_digest, first
    assert all(node_store.layer_path(x.diff_id).is_dir() for x in image.layers)
    assert (node_store.layer_path(image.layers[-1].diff_id) / "app" / "main.py").read_bytes() == b"print('hi')\n"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (node_store.blobs / "sha256").iterdir())
    second = asyncio.run(start(2))
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (node_store.blobs / "sha256").iterdir()) == before
    assert "pulling" not in second, second


def _outbound_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None with loopback only."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_a_control_plane_off_loopback_is_pulled_from_over_http_by_nodes_only(tmp_path) -> None:
    """Over plain HTTP at a non-loopback address: the node's pull from its control plane is allowed (for that
    registry alone); an ordinary pull from the same address is HTTPS-only and fails."""
    from shoal.oci.registry import RegistryError, pull

    from ..conftest import ControlPlane

    address = _outbound_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    cp = ControlPlane(tmp_path / "home", env={"SHOAL_HOST": "0.0.0.0"}).start()  # noqa: S104 - every address
    try:
        url = cp.url.replace("0.0.0.0", address)  # noqa: S104
        cp_store = LayerStore(cp.home / "oci")
        image = store_image(cp_store, IMAGE_ID, [layer_tar([("file", "a", b"off loopback\n")])])
        layers = [str(p) for p in cp_store.lowerdirs(image)]
        local, pulled = ensure_image(LayerStore(tmp_path / "node"), url, _node(cp), IMAGE_ID, image.manifest_digest,
                                     layers)
        assert pulled and (Path(local[0]) / "a").read_bytes() == b"off loopback\n"
        assert url.startswith(f"http://{address}:")
        with pytest.raises(RegistryError) as refused:
            pull(LayerStore(tmp_path / "other"), f"{url.removeprefix('http://')}/shoal/{IMAGE_ID}:latest",
                 credentials=("shoal-node", _node(cp)))
        assert "server gave HTTP response to HTTPS client" in str(refused.value)
    finally:
        cp.stop()
