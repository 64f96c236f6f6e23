"""Writing OCI images from layer tars: into an OCI image layout directory, or straight into the layer store.

Used for images shoal makes itself (the base image, build results to serve to nodes) and by the tests, which make
their own images and push them to a registry with `skopeo copy oci:DIR:TAG docker://…`. The layout format is the
OCI image-layout spec: `oci-layout`, `index.json`, and `blobs/sha256/<hex>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path

from shoal.oci.store import Image, Layer, LayerStore

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


class LayoutWriter:
    """Blobs go to `blobs_dir` (default `root/blobs`): a layer store's blob directory has the same shape."""

    def __init__(self, root: Path | str, blobs_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.blobs_dir = blobs_dir or self.root / "blobs"
        (self.blobs_dir / "sha256").mkdir(parents=True, exist_ok=True)

    def _put(self, tmp: str, digest: str) -> None:
        os.replace(tmp, self.blobs_dir / "sha256" / digest.split(":", 1)[1])

    def add_blob(self, data: bytes, media_type: str) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        fd, tmp = tempfile.mkstemp(dir=self.blobs_dir / "sha256", prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self._put(tmp, digest)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_json(self, obj: dict, media_type: str) -> dict:
        return self.add_blob(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode(), media_type)

    def add_layer(self, tar: Path | bytes, level: int = 1) -> tuple[dict, str]:
        """gzips an uncompressed layer tar into a blob; returns its descriptor and its diff id.

        Level 1: layers are compressed once and unpacked many times, and loopback/LAN transfers are cheap, so
        compression speed matters more than the last few percent of size."""
        raw = hashlib.sha256()
        packed = hashlib.sha256()
        comp = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
        fd, tmp = tempfile.mkstemp(dir=self.blobs_dir / "sha256", prefix=".tmp-")
        size = 0
        with os.fdopen(fd, "wb") as out:
            def emit(data: bytes) -> None:
                nonlocal size
                packed.update(data)
                out.write(data)
                size += len(data)

            if isinstance(tar, bytes):
                raw.update(tar)
                emit(comp.compress(tar))
            else:
                with open(tar, "rb") as f:
                    while chunk := f.read(1 << 20):
                        raw.update(chunk)
                        emit(comp.compress(chunk))
            emit(comp.flush())
        digest = "sha256:" + packed.hexdigest()
        self._put(tmp, digest)
        return {"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size}, "sha256:" + raw.hexdigest()

    def add_image(self, layers: list[tuple[dict, str]], config: dict | None = None, *, architecture: str = "amd64",
                  os_name: str = "linux", annotations: dict | None = None) -> dict:
        """Writes config + manifest for the layers (bottom first); returns the manifest's descriptor."""
        cfg = {"architecture": architecture, "os": os_name, "config": config or {},
               "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]}}
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": self.add_json(cfg, OCI_CONFIG),
                    "layers": [desc for desc, _ in layers]}
        if annotations:
            manifest["annotations"] = annotations
        desc = self.add_json(manifest, OCI_MANIFEST)
        desc["platform"] = {"architecture": architecture, "os": os_name}
        return desc

    def add_index(self, manifests: list[dict]) -> dict:
        """A multi-platform image index over manifests from add_image (their descriptors carry the platform)."""
        return self.add_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, OCI_INDEX)

    def tag(self, tag: str, descriptor: dict) -> None:
        """Writes `index.json` naming `descriptor` as `tag` (one tag per layout: what the tests and bench need)."""
        entry = {k: v for k, v in descriptor.items() if k != "platform"}
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        (self.root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                          "manifests": [entry]}))


def store_image(store: LayerStore, name: str, layer_tars: list[Path | bytes], config: dict | None = None) -> Image:
    """Adds an image made of these uncompressed layer tars (bottom first) to the store and records it."""
    with store.lock():
        writer = LayoutWriter(store.tmp, blobs_dir=store.blobs)
        layers = [writer.add_layer(t) for t in layer_tars]
        desc = writer.add_image(layers, config)
        return store.record(name, desc["digest"])


def store_layer(store: LayerStore, tar: Path) -> dict[str, object]:
    """The layer tar gzipped into the store's blobs and unpacked there by the store's safe extractor, under the
    store's lock (a prune meanwhile would take the new blob, which no image names yet); the layer's descriptor."""
    with store.lock():
        desc, diff_id = LayoutWriter(tar.parent, blobs_dir=store.blobs).add_layer(tar)
        layer = Layer(digest=desc["digest"], diff_id=diff_id, media_type=desc["mediaType"], size=desc["size"])
        final = store.layer_path(diff_id)
        if not final.is_dir():
            store._unpack(layer, final)
    return {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size, "media_type": layer.media_type}
