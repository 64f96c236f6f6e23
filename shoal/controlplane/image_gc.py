"""Built images: listing (`GET /v1/images`), removal (`DELETE /v1/images/{image_id}`, `POST /v1/images/prune`) and the
automatic clean-up of images no app has used for a grace period (`SHOAL_IMAGE_GC_GRACE` seconds, default one day).

Images are found where the builders leave them: venv images as `SHOAL_HOME/images/<id>/` (built once their
`manifest.json` is there; a thin image of `copy=False` files names its `base`), OCI images as records of the layer
store `SHOAL_HOME/oci` named by their image id. "Used" is read from the store — the image of every function of a
running app, and of apps stopped since the last look (their stop time is their last use) — and from this control
plane's memory: containers, the images app registrations are building or asked for moments ago (definitions.py),
and what `busy_sources` name (sandboxes' images and fresh snapshots), which are never removed. The last time each
image was seen used is kept in `SHOAL_HOME/images/.last_used.json`, so the grace period survives restarts. Which
images go is decided by image_policy.py; this module gathers the facts and removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .._spec import requests as req
from .._spec.images import IMAGE_ID_RE
from .image_policy import ImageUse, collectable, refusal, stale_records
from .rest import ApiError, body_of, path_of, reply
from .store import apps as app_rows

if TYPE_CHECKING:
    from ..oci.store import LayerStore
    from .core.registry import Registry
    from .definitions import Definitions
    from .store import Store

GRACE_ENV = "SHOAL_IMAGE_GC_GRACE"
DEFAULT_GRACE_S = 86400.0
# An image an app registration asked for this recently may be in a definition not yet stored: it stays.
REGISTERING_S = 10.0
log = logging.getLogger("shoal.images")


def grace_from_env() -> float:
    raw = os.environ.get(GRACE_ENV, "").strip()
    if not raw:
        return DEFAULT_GRACE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(f"{GRACE_ENV} must be a number of seconds >= 0, not {raw!r}")
    return value


def tree_bytes(path: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes on disk of a tree, each inode once (hard links count once)."""
    seen = set() if seen is None else seen
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


@dataclass
class OnDisk:
    """One built (or half-built) image as found on disk."""

    image_id: str
    kind: str  # "venv" | "oci"
    created: float
    name: str = ""
    complete: bool = True
    parents: tuple[str, ...] = ()
    directory: Path | None = None  # SHOAL_HOME/images/<id>
    record: bool = False  # a layer-store record of this id
    layers: frozenset[str] = frozenset()  # its layers' diff ids (OCI)


@dataclass
class Facts:
    images: dict[str, OnDisk]
    uses: dict[str, ImageUse]
    others: list[tuple[str, frozenset[str], float]] = field(default_factory=list)  # non-image store records


class ImageCatalog:
    def __init__(self, state_dir: Path, store: Store, registry: Registry, definitions: Definitions,
                 grace: float | None = None) -> None:
        self.images_dir = Path(state_dir) / "images"
        self.oci_dir = Path(state_dir) / "oci"
        self.store = store
        self.registry = registry
        self.definitions = definitions
        self.grace = grace_from_env() if grace is None else grace
        self.state_file = self.images_dir / ".last_used.json"
        self.last_used: dict[str, float] = self._load_last_used()
        self.looked_at = 0.0  # when the store was last read for stopped apps (0: never: read them all)
        self.sizes: dict[str, int] = {}  # built images do not change: their size is computed once
        self.lock = asyncio.Lock()  # one look-and-remove at a time
        # Other holders of images (e.g. Sandboxes): each gives {image id: why it is busy now}; those stay.
        self.busy_sources: list[Callable[[], dict[str, str]]] = []

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/v1/images", self.list)
        r.add_delete("/v1/images/{image_id}", self.remove)
        r.add_post("/v1/images/prune", self.prune)

    # -- routes ----------------------------------------------------------------------------------------------
    async def list(self, request: web.Request) -> web.Response:
        async with self.lock:
            facts = await self.facts()
            sizes = await asyncio.to_thread(self._sizes_of, list(facts.images.values()))
        out = []
        for image_id, d in sorted(facts.images.items(), key=lambda kv: kv[1].created, reverse=True):
            use = facts.uses[image_id]
            out.append({"image_id": image_id, "kind": d.kind, "name": d.name,
                        "state": "built" if d.complete else "incomplete", "size": sizes.get(image_id, 0),
                        "created": d.created, "last_used": use.last_used, "apps": list(use.apps),
                        "busy": use.busy, "base": list(d.parents)})
        return reply({"images": out, "grace_s": self.grace})

    async def remove(self, request: web.Request) -> web.Response:
        image_id = path_of(request, req.ImagePath).image_id
        async with self.lock:
            facts = await self.facts()
            if image_id not in facts.images:
                raise ApiError(404, f"image {image_id} not found", "NotFoundError")
            why = refusal(image_id, facts.uses.values()) or self._busy_now(image_id)
            if why:
                raise ApiError(409, why, "ConflictError")
            removed, freed = await self._remove([facts.images[image_id]])
            if not removed:
                raise ApiError(409, f"image {image_id} cannot be removed now: {self._busy_now(image_id)}",
                               "ConflictError")
            freed += await self._tidy_store(facts, removed=set(removed))
        return reply({"removed": removed, "bytes_freed": freed})

    async def prune(self, request: web.Request) -> web.Response:
        body = await body_of(request, req.PruneImages)
        grace = self.grace if body.grace_s is None else body.grace_s
        removed, freed = await self.collect(grace, dry_run=body.dry_run)
        return reply({"removed": removed, "bytes_freed": freed, "dry_run": body.dry_run, "grace_s": grace})

    # -- the clean-up ----------------------------------------------------------------------------------------
    async def housekeeping(self) -> None:
        """Every grace/4 seconds (1 s to 10 min): remove the images no app has used for the grace period."""
        interval = min(max(self.grace / 4, 1.0), 600.0)
        while True:
            await asyncio.sleep(interval)
            try:
                removed, freed = await self.collect(self.grace)
                if removed:
                    log.info("removed %d unused image(s), %d bytes: %s", len(removed), freed, ", ".join(removed))
            except Exception:  # noqa: BLE001 - tried again at the next pass
                log.exception("image clean-up pass failed")

    async def collect(self, grace: float, dry_run: bool = False) -> tuple[list[str], int]:
        """Remove what the policy lets go (unused for `grace` seconds); returns (ids, bytes freed)."""
        async with self.lock:
            facts = await self.facts()
            ids = [i for i in collectable(facts.uses.values(), time.time(), grace) if not self._busy_now(i)]
            if dry_run:
                return ids, 0
            removed, freed = await self._remove([facts.images[i] for i in ids])
            freed += await self._tidy_store(facts, removed=set(removed), grace=grace)
            return removed, freed

    # -- facts -----------------------------------------------------------------------------------------------
    async def facts(self) -> Facts:
        """What is on disk, and what uses it; records what was seen used."""
        now = time.time()
        since = max(self.looked_at - 60.0, 0.0) if self.looked_at else 0.0  # apps stopped since the last look
        images, others = await asyncio.to_thread(self._scan)
        apps, seen = await self._used(since, now)
        self.looked_at = now
        busy = self._busy(images)
        changed = False
        for image_id, when in seen.items():
            if when > self.last_used.get(image_id, 0.0):
                self.last_used[image_id] = when
                changed = True
        for image_id in [i for i in self.last_used if i not in images]:
            del self.last_used[image_id]  # removed, by us or by hand
            changed = True
        if changed:
            await asyncio.to_thread(self._save_last_used)
        uses = {i: ImageUse(i, created=d.created, last_used=self.last_used.get(i),
                            apps=tuple(sorted(apps.get(i, ()))), busy=busy.get(i, ""), parents=d.parents)
                for i, d in images.items()}
        return Facts(images, uses, others)

    def _scan(self) -> tuple[dict[str, OnDisk], list[tuple[str, frozenset[str], float]]]:
        images: dict[str, OnDisk] = {}
        if self.images_dir.is_dir():
            for entry in os.scandir(self.images_dir):
                if not IMAGE_ID_RE.match(entry.name) or not entry.is_dir(follow_symlinks=False):
                    continue
                path = Path(entry.path)
                try:
                    manifest = json.loads((path / "manifest.json").read_bytes())
                except FileNotFoundError:
                    images[entry.name] = OnDisk(entry.name, "venv", entry.stat().st_mtime, complete=False,
                                                directory=path)
                    continue
                except (OSError, ValueError):
                    manifest = {}
                kind = "oci" if manifest.get("kind") == "oci" or "layers" in manifest else "venv"
                steps = [str(s) for s in manifest.get("steps") or []]
                name = ".".join(steps if kind == "oci" else ["debian_slim()", *steps])
                images[entry.name] = OnDisk(
                    entry.name, kind, float(manifest.get("built_at") or entry.stat().st_mtime),
                    name=name if len(name) <= 200 else name[:197] + "...", directory=path,
                    parents=(manifest["base"],) if isinstance(manifest.get("base"), str) else ())
        others: list[tuple[str, frozenset[str], float]] = []
        store = self._layer_store()
        if store is not None:
            for record in store.list():
                layers = frozenset(x.diff_id for x in record.layers)
                try:  # when it was recorded: the record file's time (the store keeps no other)
                    recorded = store._record_path(record.name).stat().st_mtime  # noqa: SLF001
                except FileNotFoundError:
                    continue
                if not IMAGE_ID_RE.match(record.name):
                    others.append((record.name, layers, recorded))
                    continue
                d = images.setdefault(record.name, OnDisk(record.name, "oci", recorded))
                d.kind, d.record, d.layers = "oci", True, layers
                d.complete = True
        return images, others

    async def _used(self, since: float, now: float) -> tuple[dict[str, set[str]], dict[str, float]]:
        """({image id: running apps using it}, {image id: when last seen used})."""
        apps: dict[str, set[str]] = {}
        seen: dict[str, float] = {}
        for app_id, name, state, stopped_at, d in await app_rows.image_users(self.store, since):
            image_id = _image_of(d)
            if image_id is None:
                continue
            if state == "running":
                apps.setdefault(image_id, set()).add(_shown(name, app_id))
                seen[image_id] = now
            elif stopped_at:
                seen[image_id] = max(seen.get(image_id, 0.0), float(stopped_at))
        for pool in list(self.registry.pools.values()):  # registered here, perhaps not committed yet
            image_id = _image_of(pool.definition)
            if image_id is not None:
                app = self.registry.apps.get(pool.app_id)
                apps.setdefault(image_id, set()).add(_shown(app.name if app is not None else None, pool.app_id))
                seen[image_id] = now
        return apps, seen

    def _busy(self, images: dict[str, OnDisk]) -> dict[str, str]:
        busy = self._holders()
        if self.definitions.preparing:  # a build may be writing a directory it has no manifest in yet
            for image_id, d in images.items():
                if not d.complete:
                    busy.setdefault(image_id, "an image build may be writing it")
        return busy

    def _busy_now(self, image_id: str) -> str:
        """Why this control plane needs the image this moment ("" if it does not)."""
        return self._holders().get(image_id, "")

    def _holders(self) -> dict[str, str]:
        """{image id: why it is needed now}: registrations building or asking for it, containers running on it,
        the other holders (`busy_sources`)."""
        now = time.time()
        held: dict[str, str] = {}
        for source in self.busy_sources:
            held.update(source())
        for c in list(self.registry.containers.values()):
            image_id = _image_of(getattr(getattr(c, "pool", None), "definition", None))
            if image_id is not None:
                held[image_id] = f"container {c.id} runs on it"
        for image_id, asked in list(self.definitions.requested_at.items()):
            if now - asked < REGISTERING_S:
                held[image_id] = f"an app registration asked for it {now - asked:.0f} s ago"
            elif image_id not in self.definitions.preparing:
                del self.definitions.requested_at[image_id]  # past the window: nothing to remember
        for image_id in self.definitions.preparing:
            held[image_id] = "an app registration is building or looking it up"
        return held

    # -- removing --------------------------------------------------------------------------------------------
    async def _remove(self, images: list[OnDisk]) -> tuple[list[str], int]:
        """Remove these images (checked by the caller); returns (those removed, bytes freed). A directory is
        renamed away at once, in the event loop, so no registration can find it half gone; deleting it happens
        in a thread."""
        freed = 0
        removed: list[str] = []
        trash = self.images_dir / ".trash"
        for d in images:
            if self._busy_now(d.image_id):
                continue  # asked for while we looked
            removed.append(d.image_id)
            self.sizes.pop(d.image_id, None)
            if d.directory is not None and d.directory.exists():
                trash.mkdir(parents=True, exist_ok=True)
                moved = trash / f"{d.image_id}.{time.time_ns()}"
                d.directory.rename(moved)
                freed += await asyncio.to_thread(_delete, moved)
            if d.record and (store := self._layer_store()) is not None:
                await asyncio.to_thread(store.remove, d.image_id)
            self.last_used.pop(d.image_id, None)
        if removed:
            await asyncio.to_thread(self._save_last_used)
        return removed, freed

    async def _tidy_store(self, facts: Facts, removed: set[str], grace: float | None = None) -> int:
        """Records that are not images and that no kept image needs (after `grace`, on a clean-up), then the
        layers and blobs no record names. Skipped while a registration builds: its layers may not be recorded
        yet."""
        store = self._layer_store()
        if store is None or self.definitions.preparing:
            return 0
        kept = frozenset(x for i, d in facts.images.items() if i not in removed for x in d.layers)
        for name in stale_records(facts.others, kept, time.time(), self.grace if grace is None else grace):
            await asyncio.to_thread(store.remove, name)
        result = await asyncio.to_thread(store.prune)
        return result.bytes_freed

    def _layer_store(self) -> LayerStore | None:
        if not self.oci_dir.is_dir():
            return None
        from ..oci.store import LayerStore

        return LayerStore(self.oci_dir)

    def _sizes_of(self, images: list[OnDisk]) -> dict[str, int]:
        store = self._layer_store()
        for d in images:
            if d.image_id in self.sizes or not d.complete:
                continue
            size = tree_bytes(d.directory) if d.directory is not None else 0
            if store is not None and d.layers:
                seen: set[tuple[int, int]] = set()
                size += sum(tree_bytes(store.layer_path(x), seen) for x in sorted(d.layers))
            self.sizes[d.image_id] = size
        return {d.image_id: self.sizes.get(d.image_id, 0) for d in images}

    # -- last use --------------------------------------------------------------------------------------------
    def _load_last_used(self) -> dict[str, float]:
        try:
            data = json.loads(self.state_file.read_text())
            return {k: float(v) for k, v in data.items() if IMAGE_ID_RE.match(k)}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _save_last_used(self) -> None:
        self.images_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".last_used.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.last_used, sort_keys=True))
        tmp.replace(self.state_file)


def _shown(name: str | None, app_id: str) -> str:
    return f"{name} ({app_id})" if name else app_id


def _delete(path: Path) -> int:
    """Delete a tree; returns the bytes it took (an OCI image's layers are counted by the store's prune)."""
    size = tree_bytes(path)
    shutil.rmtree(path, ignore_errors=True)
    return size


def _image_of(definition: Any) -> str | None:
    """The image id a function definition runs on (None: a definition that cannot be read, or no image)."""
    built = getattr(definition, "image_built", None)
    if built is not None:
        return built.image_id
    spec = getattr(definition, "image", None)
    return spec.image_id if spec is not None else None
