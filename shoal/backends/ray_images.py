"""OCI images on Ray nodes: a node pulls the image a container runs from the control plane's registry
(controlplane/oci_serve.py) into its own layer store, so no path is shared between machines.

The control plane's side (`served_digest`) names the image by its manifest digest: the record in its store whose
layers are the container's. The node's side (`ensure_image`) pulls `HOST:PORT/shoal/<image id>@<digest>` with
skopeo (shoal.oci.registry.pull: only the blobs the node lacks; digests verified) unless every layer is already
there, under a per-store lock so that containers starting together on one node pull once, and gives back the
layer directories of its own store. Nothing here imports Ray: the tests drive it directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from ..oci.registry import RegistryError, parse_reference, pull
from ..oci.store import LayerStore, StoreError, check_digest

__all__ = ["NODE_USER", "ImageUnavailableError", "ensure_image", "pull_reference", "served_digest"]

NODE_USER = "shoal-node"  # the user name sent with the node pull credential (the registry does not look at it)


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


def ensure_image(store: LayerStore, url: str, credential: str, image_id: str, digest: str,
                 layers: list[str]) -> tuple[list[str], bool]:
    """The image's layer directories in `store` (top first, as `layers`, the control plane's paths, are), and
    whether it had to be pulled from the control plane at `url` with the node pull `credential`."""
    local = [store.layer_path(diff_id_of(p)) for p in layers]
    if all(p.is_dir() for p in local):
        return [str(p) for p in local], False
    with _pull_lock(store):
        pulled = not all(p.is_dir() for p in local)  # another container's start may have pulled it meanwhile
        if pulled:
            ref, plain_http = pull_reference(url, image_id, digest)
            try:
                pull(store, ref, credentials=(NODE_USER, credential), name=f"shoal/{image_id}",
                     plain_http=plain_http)
            except RegistryError as exc:
                raise ImageUnavailableError(f"image {image_id}: pulling it from the control plane failed: {exc}") \
                    from None
    missing = [str(p) for p in local if not p.is_dir()]
    if missing:
        raise ImageUnavailableError(f"image {image_id}: the image pulled from the control plane lacks layers "
                               f"{', '.join(missing)}")
    return [str(p) for p in local], pulled
