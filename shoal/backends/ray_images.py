"""OCI images on Ray nodes: a node pulls the image a container runs from the control plane's registry
(controlplane/oci_serve.py) into its own layer store, so no path is shared between machines.

The control plane's side (`served_digest`) names the image by its manifest digest: the record in its store whose
layers are the container's. The node's side (`ensure_image`) pulls `HOST:PORT/shoal/<image id>@<digest>` with
skopeo (shoal.oci.registry.pull: only the blobs the node lacks; digests verified) unless every layer is already
there, under a per-store lock so that containers starting together on one node pull once, and gives back the
layer directories of its own store. Nothing here imports Ray: the tests drive it directly.

A node's store is pruned after each pull (`prune_node`): images no container of the node has started on for the
grace period (`SHOAL_IMAGE_GC_GRACE`, the control plane's, passed to nodes) and none runs on now go. A container
holds its image (`hold_image`: a shared lock on `in-use/<image id>` of the store, whose mtime is its last use) from
before its layers are looked at until it exits, so a prune never takes layers from under a container.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from ..oci.registry import RegistryError, parse_reference, pull
from ..oci.store import LayerStore, StoreError, check_digest

__all__ = ["NODE_USER", "ImageUnavailableError", "ensure_image", "hold_image", "prune_node", "pull_reference",
           "served_digest"]

NODE_USER = "shoal-node"  # the user name sent with the node pull credential (the registry does not look at it)
RECORD_PREFIX = "shoal/"  # a node's store names what it pulled `shoal/<image id>`
GRACE_ENV = "SHOAL_IMAGE_GC_GRACE"  # seconds; the control plane's (controlplane/image_gc.py), passed to Ray nodes
DEFAULT_GRACE_S = 86400.0


class ImageUnavailableError(RuntimeError):
    """The image a container needs cannot be had on its node: the message says why."""


def diff_id_of(layer_dir: str | os.PathLike[str]) -> str:
    """A store's layer directory is named by its diff id (`…/layers/<hex>`)."""
    try:
        return check_digest("sha256:" + Path(layer_dir).name)
    except StoreError:
        raise ImageUnavailableError(f"{layer_dir} is not a layer directory of a layer store") from None


def served_digest(store: LayerStore, image_id: str, layers: list[str]) -> str:
    """The manifest digest of the control plane's image with these layers (top first), for nodes to pull it by.
    A record whose name holds the image id wins over another with the same layers."""
    wanted = [diff_id_of(p) for p in layers]
    found = ""
    for image in store.list():
        if [x.diff_id for x in reversed(image.layers)] == wanted:
            if image_id in image.name:
                return image.manifest_digest
            found = found or image.manifest_digest
    if not found:
        raise ImageUnavailableError(f"image {image_id}: no image with its {len(layers)} layers is recorded in the "
                               f"control plane's layer store {store.root}, so Ray nodes cannot pull it")
    return found


def pull_reference(url: str, image_id: str, digest: str) -> tuple[str, bool]:
    """(the reference to pull, whether over plain HTTP) for the control plane at `url`. A loopback `http://` URL
    is plain HTTP anyway (registry.pull); any other `http://` one is allowed for this pull alone."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImageUnavailableError(f"the control plane's URL {url!r} is not an http(s) URL")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    registry = f"{host}:{parts.port}" if parts.port else host
    ref = str(parse_reference(f"{registry}/shoal/{image_id}@{check_digest(digest)}"))
    return ref, parts.scheme == "http"


@contextlib.contextmanager
def _pull_lock(store: LayerStore) -> Iterator[None]:
    """One pull at a time per store: containers starting together on one node (separate processes) pull once."""
    fd = os.open(store.root / ".pull.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _hold_path(store: LayerStore, image_id: str) -> Path:
    """`in-use/<hex>` of the store for an image id (`im-<hex>`); StoreError for anything else."""
    return store.root / "in-use" / check_digest("sha256:" + image_id.removeprefix("im-")).split(":", 1)[1]


def hold_image(store: LayerStore, image_id: str) -> int:
    """Marks the image used now and in use until the returned descriptor is closed (the container's end): a
    prune waits for it, or skips it."""
    path = _hold_path(store, image_id)
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.utime(fd)
    return fd


def stale_images(last_used: dict[str, float], now: float, grace_s: float) -> list[str]:
    """The images (by name) unused for longer than the grace period: the node prune's policy."""
    return sorted(name for name, used in last_used.items() if now - used > grace_s)


def grace_s() -> float:
    try:
        return max(0.0, float(os.environ.get(GRACE_ENV) or DEFAULT_GRACE_S))
    except ValueError:
        return DEFAULT_GRACE_S


def prune_node(store: LayerStore, grace: float, now: float | None = None) -> list[str]:
    """Removes the images of a node's store that no container used for `grace` seconds and none holds now, then
    the blobs and layers no image left names; returns the names removed."""
    now = time.time() if now is None else now
    holds: dict[str, Path] = {}  # the records this module pulled -> their hold files
    for image in store.list():
        with contextlib.suppress(StoreError):
            holds[image.name] = _hold_path(store, image.name.removeprefix(RECORD_PREFIX))
    last_used = {name: max(hold.stat().st_mtime if hold.exists() else 0.0, store.recorded_at(name))
                 for name, hold in holds.items()}
    held: dict[str, int] = {}  # the stale ones no container holds, locked until the prune is done
    try:
        for name in stale_images(last_used, now, grace):
            holds[name].parent.mkdir(exist_ok=True)
            fd = os.open(holds[name], os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held[name] = fd  # a container starting on it now waits, then pulls it again
            except BlockingIOError:
                os.close(fd)  # a container runs on it
        if held:
            store.prune(keep={x.name for x in store.list()} - set(held))  # (listed again: none recorded since goes)
            for name in held:
                holds[name].unlink(missing_ok=True)
        return list(held)
    finally:
        for fd in held.values():
            os.close(fd)


def ensure_image(store: LayerStore, url: str, credential: str, image_id: str, digest: str,
                 layers: list[str]) -> tuple[list[str], bool]:
    """The image's layer directories in `store` (top first, as `layers`, the control plane's paths, are), and
    whether it had to be pulled from the control plane at `url` with the node pull `credential`. Call it holding
    the image (`hold_image`). After a pull, the node's stale images are pruned."""
    local = [store.layer_path(diff_id_of(p)) for p in layers]
    if all(p.is_dir() for p in local):
        return [str(p) for p in local], False
    with _pull_lock(store):
        pulled = not all(p.is_dir() for p in local)  # another container's start may have pulled it meanwhile
        if pulled:
            ref, plain_http = pull_reference(url, image_id, digest)
            try:
                pull(store, ref, credentials=(NODE_USER, credential), name=f"{RECORD_PREFIX}{image_id}",
                     plain_http=plain_http)
            except RegistryError as exc:
                raise ImageUnavailableError(f"image {image_id}: pulling it from the control plane failed: {exc}") \
                    from None
            prune_node(store, grace_s())
    missing = [str(p) for p in local if not p.is_dir()]
    if missing:
        raise ImageUnavailableError(f"image {image_id}: the image pulled from the control plane lacks layers "
                               f"{', '.join(missing)}")
    return [str(p) for p in local], pulled
