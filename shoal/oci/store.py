"""The content-addressed layer store: blobs by digest, layers unpacked once by diff id, images as small records.

    ROOT/blobs/sha256/<hex>    every blob as pulled (compressed layers, manifests, configs, indexes): the OCI
                               "shared blob directory" layout, so `skopeo copy --dest-shared-blob-dir` writes here
    ROOT/layers/<hex>/         a layer unpacked, keyed by its diff id (sha256 of the uncompressed tar), whiteouts
                               already in overlayfs form: usable as a lowerdir as is
    ROOT/images/<key>.json     an image: its name, manifest digest, config and ordered layers
    ROOT/tmp/                  scratch (partial blobs, layers being unpacked, OCI layouts of running pulls)

Two images on one base name the same diff ids, so they share the base's layer directories and blobs on disk.
Nothing counts references: an image's record *is* its reference, and `prune` deletes what no record names. That
keeps the store crash-safe with no counter to repair: every file appears by rename (blob, layer directory,
record), so a crash leaves at most unnamed scratch that the next prune removes, never a half layer that looks
complete. A shared lock (`ROOT/.lock`, flock) is held while pulling and unpacking, an exclusive one while
removing, so prune never deletes a blob a pull has written but not yet recorded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from shoal.oci.unpack import LayerError, unpack_layer, unpack_tar_stream

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class StoreError(Exception):
    """The store is asked for something it does not hold, or holds something inconsistent."""


def check_digest(digest: str) -> str:
    """Only sha256 digests: they become file names, so anything else is refused before it touches a path."""
    if not _DIGEST.match(digest):
        raise StoreError(f"not a sha256 digest: {digest!r}")
    return digest


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """What a container of the image starts with (the config's `config` object), as the runtime needs it."""

    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()

    @classmethod
    def from_oci(cls, config: dict) -> ImageConfig:
        c = config.get("config") or {}
        return cls(env=tuple(c.get("Env") or ()), workdir=c.get("WorkingDir") or "", user=c.get("User") or "",
                   entrypoint=tuple(c.get("Entrypoint") or ()), cmd=tuple(c.get("Cmd") or ()))


@dataclasses.dataclass(frozen=True)
class Layer:
    digest: str  # of the blob as stored (compressed)
    diff_id: str  # of the uncompressed tar: what the layer directory is named by
    media_type: str
    size: int


@dataclasses.dataclass(frozen=True)
class Image:
    name: str
    manifest_digest: str
    config_digest: str
    config: ImageConfig
    layers: tuple[Layer, ...]  # bottom first, as in the manifest
    index_digest: str = ""  # the multi-arch index the manifest was chosen from, if any

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Image:
        return cls(name=d["name"], manifest_digest=d["manifest_digest"], config_digest=d["config_digest"],
                   config=ImageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["config"].items()}),
                   layers=tuple(Layer(**x) for x in d["layers"]), index_digest=d.get("index_digest", ""))

    @property
    def blob_digests(self) -> set[str]:
        found = {self.manifest_digest, self.config_digest, *(x.digest for x in self.layers)}
        return found | ({self.index_digest} if self.index_digest else set())


@dataclasses.dataclass(frozen=True)
class PruneResult:
    images: tuple[str, ...]  # names of the images removed
    blobs: int
    layers: int
    bytes_freed: int


def _tree_bytes(path: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes on disk (allocated blocks) of a tree, each inode once: hard links and shared files count once."""
    seen = set() if seen is None else seen
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


class LayerStore:
    """`id_shift`: added to every uid/gid of an unpacked layer (sandbox.id_base() for a control plane running as
    root, so layer directories are lowerdirs of containers whose root is that host id); 0 keeps the tar's ids.
    One store directory is used with one id_shift (the layer directories are shared by every image)."""

    def __init__(self, root: Path | str, id_shift: int = 0) -> None:
        self.root = Path(root)
        self.id_shift = id_shift
        self.blobs = self.root / "blobs"
        self.layers = self.root / "layers"
        self.images = self.root / "images"
        self.tmp = self.root / "tmp"
        for d in (self.blobs / "sha256", self.layers, self.images, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    # -- locking ---------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *, exclusive: bool = False) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    def scratch_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))

    # -- blobs -----------------------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / "sha256" / check_digest(digest).split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_json_blob(self, digest: str) -> dict:
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is not in the store") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise StoreError(f"blob {digest} does not match its digest")
        return json.loads(data)

    # -- layers ----------------------------------------------------------------------------------------------------
    def layer_path(self, diff_id: str) -> Path:
        return self.layers / check_digest(diff_id).split(":", 1)[1]

    def unpack(self, layer: Layer) -> Path:
        """The layer's directory, unpacking it the first time (into scratch, renamed into place when complete)."""
        final = self.layer_path(layer.diff_id)
        if final.is_dir():
            return final
        with self.lock():  # prune waits: it would take this scratch for a crash's leftovers
            return self._unpack(layer, final)

    def _unpack(self, layer: Layer, final: Path) -> Path:
        work = self.scratch_dir("layer-")
        try:
            os.chmod(work, 0o755)
            os.chown(work, self.id_shift, self.id_shift)  # the layer's root, unless the tar has a "./" entry
            got = unpack_layer(self.blob_path(layer.digest), layer.media_type, work, self.id_shift)
            if got != layer.diff_id:
                raise LayerError(f"layer {layer.digest}: its content has diff id {got}, "
                                 f"the config says {layer.diff_id}")
            try:
                os.rename(work, final)
            except OSError:
                if not final.is_dir():  # another process finished the same layer first: theirs is as good
                    raise
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        return final

    def unpack_stream(self, stream: BinaryIO, name: str) -> str:
        """Unpacks a layer tar read from `stream` (uncompressed) and places it under the diff id its content has;
        returns that diff id. The name is computed here, so the directory is right by construction whatever the
        stream is; one no record names goes at the next prune. Call with the store's lock held (a pull does)."""
        work = self.scratch_dir("layer-")
        try:
            os.chmod(work, 0o755)
            os.chown(work, self.id_shift, self.id_shift)
            diff_id = unpack_tar_stream(stream, name, work, self.id_shift)
            final = self.layer_path(diff_id)
            if not final.is_dir():
                try:
                    os.rename(work, final)
                except OSError:
                    if not final.is_dir():
                        raise
            return diff_id
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)

    def _unpack_all(self, layers: tuple[Layer, ...]) -> None:
        """Unpacks the missing layers side by side: decompression, hashing and writes release the GIL."""
        todo = list({x.diff_id: x for x in layers if not self.layer_path(x.diff_id).is_dir()}.values())
        if len(todo) <= 1:
            for layer in todo:
                self.unpack(layer)
            return
        with concurrent.futures.ThreadPoolExecutor(min(len(todo), os.cpu_count() or 1, 4)) as pool:
            for future in [pool.submit(self.unpack, x) for x in todo]:
                future.result()  # the first failure is raised (after the others finish, so no scratch is left)

    def lowerdirs(self, image: Image) -> list[Path]:
        """The image's layer directories in overlayfs lowerdir order (top first), unpacking any missing."""
        return [self.unpack(x) for x in reversed(image.layers)]

    # -- images ----------------------------------------------------------------------------------------------------
    def _record_path(self, name: str) -> Path:
        return self.images / (hashlib.sha256(name.encode()).hexdigest()[:40] + ".json")

    def record(self, name: str, manifest_digest: str, *, index_digest: str = "") -> Image:
        """Records the image whose manifest (and config and layer blobs) are in the store, unpacking its layers."""
        with self.lock():
            return self._record(name, manifest_digest, index_digest)

    def _record(self, name: str, manifest_digest: str, index_digest: str) -> Image:
        manifest = self.read_json_blob(manifest_digest)
        if manifest.get("mediaType", MANIFEST_TYPES[0]) not in MANIFEST_TYPES or "layers" not in manifest:
            raise StoreError(f"{name}: {manifest_digest} is not an image manifest ({manifest.get('mediaType')})")
        config_digest = check_digest(manifest["config"]["digest"])
        config = self.read_json_blob(config_digest)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(manifest["layers"]):
            raise StoreError(f"{name}: {len(manifest['layers'])} layers but {len(diff_ids)} diff ids in the config")
        layers = tuple(Layer(digest=check_digest(d["digest"]), diff_id=check_digest(diff_id),
                             media_type=d.get("mediaType", ""), size=int(d.get("size", 0)))
                       for d, diff_id in zip(manifest["layers"], diff_ids, strict=True))
        image = Image(name=name, manifest_digest=manifest_digest, config_digest=config_digest,
                      config=ImageConfig.from_oci(config), layers=layers, index_digest=index_digest)
        for layer in layers:
            if not self.has_blob(layer.digest):
                raise StoreError(f"{name}: layer blob {layer.digest} is not in the store")
        self._unpack_all(layers)
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="image-")
        with os.fdopen(fd, "w") as f:
            json.dump(image.to_json(), f, indent=1)
        os.replace(tmp, self._record_path(name))  # last: the record appears only when every layer is there
        return image

    def record_image(self, name: str, layers: Iterable[Layer | dict], config: dict | None = None, *,
                     architecture: str = "amd64", os_name: str = "linux") -> Image:
        """Records an image made here from layers already in the store (bottom first; `Layer`s or the dicts
        upper.layer_from_upper returns) with `config` as its config's `config` object (Env, WorkingDir, User,
        Entrypoint, Cmd, …): its config and manifest blobs are written, so it is served like a pulled one."""
        descs = [x if isinstance(x, Layer) else Layer(digest=x["digest"], diff_id=x["diff_id"],
                                                       media_type=x["media_type"], size=int(x["size"]))
                 for x in layers]
        oci_config = {"architecture": architecture, "os": os_name, "config": config or {},
                      "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in descs]}}
        with self.lock():
            cfg = self._put_json(oci_config)
            manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPES[0],
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
                        "layers": [{"mediaType": x.media_type, "digest": x.digest, "size": x.size} for x in descs]}
            return self._record(name, self._put_json(manifest)["digest"], "")

    def _put_json(self, obj: dict) -> dict:
        data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="blob-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, self.blob_path(digest))
        return {"digest": digest, "size": len(data)}

    def get(self, name: str) -> Image | None:
        try:
            return Image.from_json(json.loads(self._record_path(name).read_text()))
        except FileNotFoundError:
            return None

    def recorded_at(self, name: str) -> float:
        """When the image was (last) recorded, as a Unix time; 0.0 if it is not."""
        try:
            return self._record_path(name).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def list(self) -> list[Image]:
        found = []
        for p in sorted(self.images.glob("*.json")):
            with contextlib.suppress(FileNotFoundError):
                found.append(Image.from_json(json.loads(p.read_text())))
        return found

    def remove(self, name: str) -> bool:
        """Forgets the image; its blobs and layers go at the next prune unless another image uses them."""
        with self.lock(exclusive=True):
            try:
                self._record_path(name).unlink()
                return True
            except FileNotFoundError:
                return False

    def prune(self, keep: Iterable[str] | None = None) -> PruneResult:
        """Deletes every blob and layer no image uses, and scratch left by crashed writers.

        With `keep`, images whose names are not in it are removed first (their shared layers stay while another
        kept image uses them)."""
        with self.lock(exclusive=True):
            removed: list[str] = []
            images = self.list()
            if keep is not None:
                keep = set(keep)
                for image in images:
                    if image.name not in keep:
                        self._record_path(image.name).unlink(missing_ok=True)
                        removed.append(image.name)
                images = [i for i in images if i.name in keep]
            used_blobs = {d.split(":", 1)[1] for i in images for d in i.blob_digests}
            used_layers = {x.diff_id.split(":", 1)[1] for i in images for x in i.layers}
            freed = blobs = layers = 0
            for p in (self.blobs / "sha256").iterdir():
                if p.name not in used_blobs:
                    freed += p.lstat().st_blocks * 512
                    p.unlink()
                    blobs += 1
            for p in self.layers.iterdir():
                if p.name not in used_layers:
                    freed += _tree_bytes(p)
                    shutil.rmtree(p)
                    layers += 1
            for p in self.tmp.iterdir():  # nobody holds the lock: whatever is here was left by a crash
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            return PruneResult(images=tuple(removed), blobs=blobs, layers=layers, bytes_freed=freed)

    def disk_usage(self) -> int:
        """Bytes the store takes on disk, each inode once."""
        seen: set[tuple[int, int]] = set()
        return _tree_bytes(self.blobs, seen) + _tree_bytes(self.layers, seen)
