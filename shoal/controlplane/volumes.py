"""Volumes: named file trees shared by functions, mounted into containers, with Modal's commit/reload semantics.

Storage (`VolumeStorage`, on the control plane's disk under `SHOAL_HOME/volumes/<volume id>/`):

    versions/<n>/     committed versions: immutable trees; a new one is a hard-link copy of the current one
                      with the changes applied as new inodes, so versions share every unchanged file
    current           the number of the current version (replaced atomically: a commit is one rename)
    work/<mount>/g<k>/upper, work, manifest.json
                      a container's overlay for one mount (its writes), and what of them it has committed
    uploads/<id>/     files of a `batch_upload` until the batch commits
    tmp/              versions being built (removed at start: a crash mid-commit leaves the old version current)

A container mounting volume V at P gets an overlayfs at P whose lower layer is the version current when it
started (read-only) and whose upper layer is its own directory: it sees the state at its start plus its own
writes. `commit()` merges the upper directory into a new version (volume_fs.scan_upper/apply_upper); when the
container exits (normally, after an error, killed) whatever it has not committed is committed the same way.
`reload()` commits, then swaps the mount for one of the current version with an empty upper directory
(shoal/runtime/volume_mount.py does that inside the container's mount namespace); it fails with "volume busy"
while files under P are open. Read-only mounts are a read-only bind of the version.

Everything a version is made of is reached through `VolumeStorage`: a later object-store backend keeps the same
shape (immutable versions, one atomic pointer) with versions materialised in a local cache for mounting.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import marshal
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .._spec import requests as req
from .._spec.definitions import FunctionDefinition
from .._spec.limits import VOLUME_FILE_MAX
from . import volume_fs as vfs
from .core.model import new_id
from .idempotency import Recent, request_key
from .rest import ApiError, body_of, check_length, path_of, query_of, reply, too_large
from .store import Store, objects
from .store import idempotency as keyed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from ..backends.base import Backend
    from .core.model import Container

log = logging.getLogger("shoal.volumes")
CHUNK = 1 << 20
UPLOAD_TTL_S = 24 * 3600
BUSY_EXIT = 2  # volume_mount.py: the old mount could not be unmounted (files open)
RUNTIME_DIR = str(Path(__file__).resolve().parent.parent / "runtime")
REMOUNT_BOOT = f"import sys; sys.path.insert(0, {RUNTIME_DIR!r}); import volume_mount; volume_mount.main()"
# Container paths a volume cannot be mounted at (or below): the container's own system trees.
RESERVED = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys", "/dev",
            "/run")
RESERVED_EXACT = ("/", "/root", "/tmp", "/var", "/home", "/mnt", "/opt")


def mount_path(path: Any) -> str:
    """A normalised absolute container path for a mount, or ApiError."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ApiError(400, f"volume mount path must be an absolute path, got {path!r}")
    parts = path.split("/")
    if any(p in (".", "..") for p in parts) or "\0" in path:
        raise ApiError(400, f"volume mount path {path!r} must not contain '.' or '..' components")
    norm = "/" + "/".join(p for p in parts if p)
    if norm in RESERVED_EXACT or any(norm == r or norm.startswith(r + "/") for r in RESERVED):
        raise ApiError(400, f"a volume cannot be mounted at {norm!r}: that path belongs to the container itself")
    return norm


class VolumeStorage:
    """The versions of every volume on this machine's disk (see the module docstring). Blocking: call from a
    thread, except the cheap `ensure`/`current`/`version_dir`."""

    def __init__(self, root: Path, owner: tuple[int, int] | None) -> None:
        self.root = root
        self.owner = owner  # who a container's root is on the host: new files and directories belong to it

    def dir(self, vid: str) -> Path:
        return self.root / vid

    def version_dir(self, vid: str, n: int) -> Path:
        return self.dir(vid) / "versions" / str(n)

    def ensure(self, vid: str) -> None:
        """Version 0, empty, for a volume never written to."""
        d = self.dir(vid)
        if (d / "current").exists():
            return
        for sub in ("versions", "work", "uploads", "tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        v0 = d / "versions" / "0"
        v0.mkdir(mode=0o755, exist_ok=True)
        vfs.chown(str(v0), self.owner)
        self._set_current(vid, 0)

    def current(self, vid: str) -> int:
        self.ensure(vid)
        return int((self.dir(vid) / "current").read_text().strip())

    def _set_current(self, vid: str, n: int) -> None:
        tmp = self.dir(vid) / f".current.{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            f.write(str(n))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.dir(vid) / "current")

    def new_version(self, vid: str, apply: Any) -> tuple[int, Any]:
        """Version current+1 = a hard-link copy of the current one changed by `apply(stage_dir)`; made current
        atomically. `apply` raising leaves the volume as it was. Callers hold the volume's lock."""
        cur = self.current(vid)
        stage = self.dir(vid) / "tmp" / uuid.uuid4().hex
        vfs.clone_tree(str(self.version_dir(vid, cur)), str(stage))
        try:
            result = apply(str(stage))
            target = self.version_dir(vid, cur + 1)
            if target.exists():  # left by a commit that crashed before switching `current`
                vfs.rmtree(str(target))
            os.rename(stage, target)
        except BaseException:
            vfs.rmtree(str(stage))
            raise
        self._set_current(vid, cur + 1)
        return cur + 1, result

    def collect(self, vid: str, keep: set[int]) -> None:
        """Remove versions neither current nor in `keep` (mounted in a container, being read)."""
        versions = self.dir(vid) / "versions"
        try:
            names = os.listdir(versions)
        except FileNotFoundError:
            return
        keep = keep | {self.current(vid)}
        for name in names:
            if name.isdigit() and int(name) not in keep:
                vfs.rmtree(str(versions / name))

    def delete(self, vid: str) -> None:
        d = self.dir(vid)
        if d.exists():
            trash = self.root / ".trash" / f"{vid}.{uuid.uuid4().hex[:8]}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(d, trash)
            vfs.rmtree(str(trash))


@dataclass
class Mount:
    """One volume mounted in one container."""

    volume_id: str
    name: str | None
    path: str  # inside the container
    read_only: bool
    version: int  # the version its lower layer is
    dir: Path | None = None  # work/<container>.<i>/: overlay layers per generation (read-write mounts)
    gen: int = 0  # bumped by each reload (a fresh upper directory)
    manifest: dict[str, list] = field(default_factory=dict)

    def gen_dir(self, gen: int | None = None) -> Path:
        assert self.dir is not None
        return self.dir / f"g{self.gen if gen is None else gen}"

    @property
    def upper(self) -> Path:
        return self.gen_dir() / "upper"


def make_gen_dirs(gen_dir: Path, owner: tuple[int, int] | None) -> tuple[str, str]:
    upper, work = gen_dir / "upper", gen_dir / "work"
    upper.mkdir(parents=True, mode=0o755)
    vfs.chown(str(upper), owner)  # the merged root takes the upper root's owner: the container's root
    work.mkdir(mode=0o700)
    return str(upper), str(work)


def commit_upper(storage: VolumeStorage, vid: str, gen_dir: Path, manifest: dict[str, list]
                 ) -> tuple[int | None, dict[str, list]]:
    """Merge what changed in `gen_dir/upper` since `manifest` into a new version; the new manifest is saved
    next to it before returning. Returns (the new version or None when nothing changed, the new manifest)."""
    upper = str(gen_dir / "upper")
    if not os.path.isdir(upper):
        return None, manifest
    changes, gone = vfs.scan_upper(upper, manifest)
    if not changes and not gone:
        return None, manifest
    n, new = storage.new_version(
        vid, lambda stage: vfs.apply_upper(upper, stage, changes, gone, manifest, storage.owner))
    tmp = gen_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(new))
    tmp.replace(gen_dir / "manifest.json")
    return n, new


def load_manifest(gen_dir: Path) -> dict[str, list]:
    try:
        return json.loads((gen_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _path_error(exc: vfs.VolumePathError) -> ApiError:
    """The client raises FileNotFoundError / FileExistsError for these (shoal/volume.py)."""
    if exc.kind == "NotFoundError":
        return ApiError(404, str(exc), "NotFoundError")
    if exc.kind == "FileExistsError":
        return ApiError(409, str(exc), "AlreadyExistsError")
    return ApiError(400, str(exc), "InvalidError")


class Upload:
    def __init__(self, vid: str, path: Path) -> None:
        self.vid = vid
        self.path = path
        self.created = time.time()
        self.received: set[int] = set()


class Volumes:
    def __init__(self, store: Store, state_dir: Path, backend: Backend, containers: Mapping[str, Container]) -> None:
        self.store = store
        self.containers = containers  # the control plane's, by id: commits come from inside them
        availability = backend.availability
        self.isolation = availability.isolation if availability else "process"
        self.isolation_reason = availability.reason if availability else "no sandbox backend"
        self.rootless = availability is not None and availability.mode == "rootless"
        self.unsupported: str | None = backend.volumes_unsupported  # the backend's reason
        owner = None
        if self.isolation == "sandbox" and not self.rootless:
            from ..backends.sandbox import id_base

            owner = (id_base(), id_base())  # the container's root, as the host sees it
        self.storage = VolumeStorage(state_dir / "volumes", owner)
        self.locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.mounts: dict[str, list[Mount]] = {}  # container id -> its mounts
        self.reading: collections.Counter[tuple[str, int]] = collections.Counter()  # versions being streamed
        self.uploads: dict[str, Upload] = {}
        self.started_uploads = Recent(UPLOAD_TTL_S)  # idempotency key -> the batch it started (in memory, as batches)
        self._tasks: set[asyncio.Task] = set()

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v1/volumes/rename", self.rename)
        r.add_get("/v1/volumes/{volume_id}/entries", self.list_entries)
        r.add_get("/v1/volumes/{volume_id}/file", self.get_file)
        r.add_post("/v1/volumes/{volume_id}/remove", self.remove)
        r.add_post("/v1/volumes/{volume_id}/copy", self.copy)
        r.add_post("/v1/volumes/{volume_id}/uploads", self.start_upload)
        r.add_put("/v1/volumes/{volume_id}/uploads/{upload_id}/{index}", self.put_upload)
        r.add_post("/v1/volumes/{volume_id}/uploads/{upload_id}/commit", self.commit_upload)
        r.add_post("/v1/volumes/{volume_id}/commit", self.container_commit)
        r.add_post("/v1/volumes/{volume_id}/reload", self.container_reload)

    # -- start-up, deletion, housekeeping ----------------------------------------------------------------------
    async def recover(self) -> None:
        """At start (no container runs yet): commit what containers of the previous control plane left
        uncommitted (they died with it), and drop half-built versions, stale uploads and deleted volumes."""
        root = self.storage.root
        if not root.exists():
            return
        known = await objects.ids(self.store, "volume")
        for entry in sorted(os.listdir(root)):
            if entry not in known:
                await asyncio.to_thread(vfs.rmtree, str(root / entry))
                continue
            await asyncio.to_thread(self._recover_volume, entry)

    def _recover_volume(self, vid: str) -> None:
        d = self.storage.dir(vid)
        self.storage.ensure(vid)
        for sub in ("tmp", "uploads"):
            vfs.rmtree(str(d / sub))
            (d / sub).mkdir()
        work = d / "work"
        for mount_dir in sorted(work.iterdir()) if work.exists() else []:
            for gen_dir in sorted(mount_dir.glob("g*")):
                try:
                    n, _ = commit_upper(self.storage, vid, gen_dir, load_manifest(gen_dir))
                    if n is not None:
                        log.info("volume %s: committed what container %s left (version %d)", vid, mount_dir.name, n)
                except Exception:  # noqa: BLE001 - keep the rest of the volume usable
                    log.exception("volume %s: could not commit what %s left", vid, mount_dir)
            vfs.rmtree(str(mount_dir))
        self.storage.collect(vid, set())

    def on_deleted(self, object_id: str) -> None:
        """The object was deleted (`Volume.objects.delete`, an ephemeral volume's end): its files go too."""
        if object_id.startswith("vo-"):
            task = asyncio.get_running_loop().create_task(self._delete_files(object_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _delete_files(self, vid: str) -> None:
        async with self.locks[vid]:
            await asyncio.to_thread(self.storage.delete, vid)
        self.locks.pop(vid, None)

    async def _collect(self, vid: str) -> None:
        """Remove versions nobody uses. Under the volume's lock, so `current` cannot move meanwhile: what a
        reader pins (the current version, read on the event loop) is always kept."""
        async with self.locks[vid]:
            keep = {m.version for ms in self.mounts.values() for m in ms if m.volume_id == vid}
            keep |= {n for (v, n), count in self.reading.items() if v == vid and count > 0}
            try:
                await asyncio.to_thread(self.storage.collect, vid, keep)
            except OSError as exc:
                log.warning("volume %s: could not remove old versions: %s", vid, exc)

    async def _existing(self, vid: str) -> str | None:
        """The volume's name (None when unnamed); 404 when it does not exist."""
        found, name = await objects.name_of(self.store, vid, "volume")
        if not found:
            raise ApiError(404, f"Volume {vid} not found (deleted?)", "NotFoundError")
        return name

    # -- functions and containers ------------------------------------------------------------------------------
    async def check(self, definition: FunctionDefinition) -> None:
        """At registration: the mounts a function asks for are well-formed (their paths normalised), their
        volumes exist, and this control plane can mount them (it needs the sandbox)."""
        paths = set()
        for ref in definition.volumes:
            ref.mount_path = path = mount_path(ref.mount_path)
            if path in paths:
                raise ApiError(400, f"two volumes are mounted at {path!r}")
            paths.add(path)
            label = ref.name or ref.volume_id
            if not await objects.exists(self.store, ref.volume_id, "volume"):
                raise ApiError(404, f"Volume {label!r} not found", "NotFoundError")
            if self.unsupported:
                raise ApiError(400, f"function {definition.tag!r} mounts Volume {label!r} at {path}, "
                                    f"but {self.unsupported}")
            if self.isolation != "sandbox":
                raise ApiError(400, f"function {definition.tag!r} mounts Volume {label!r} at {path}, "
                                    "but this control plane runs containers as plain processes "
                                    f"({self.isolation_reason}): mounting volumes needs the Linux sandbox "
                                    "(unset SHOAL_ISOLATION=process, on Linux with user namespaces)")

    async def prepare(self, c: Any) -> list[list]:
        """The mounts of a container about to start: [container path, lower dir, upper dir|None, work dir|None]
        for the backend, pinned to each volume's current version."""
        refs = c.pool.definition.volumes
        if not refs:
            return []
        mounts: list[Mount] = []
        out: list[list] = []
        self.mounts[c.id] = mounts
        for i, ref in enumerate(refs):
            vid = ref.volume_id
            await self._existing(vid)
            async with self.locks[vid]:
                n = await asyncio.to_thread(self.storage.current, vid)
                m = Mount(vid, ref.name, ref.mount_path, ref.read_only, n)
                lower = str(self.storage.version_dir(vid, n))
                if m.read_only:
                    mounts.append(m)
                    out.append([m.path, lower, None, None])
                    continue
                m.dir = self.storage.dir(vid) / "work" / f"{c.id}.{i}"
                upper, work = await asyncio.to_thread(make_gen_dirs, m.gen_dir(), self.storage.owner)
                mounts.append(m)
                out.append([m.path, lower, upper, work])
        return out

    async def release(self, container_id: str) -> None:
        """The container is gone: commit what it left uncommitted, then remove its overlay directories."""
        mounts = self.mounts.get(container_id) or []
        for m in mounts:
            if m.dir is None:
                continue
            try:
                async with self.locks[m.volume_id]:
                    if self.storage.dir(m.volume_id).exists():
                        n, _ = await asyncio.to_thread(commit_upper, self.storage, m.volume_id, m.gen_dir(),
                                                       m.manifest)
                        if n is not None:
                            log.info("volume %s: committed container %s's changes at exit (version %d)",
                                     m.volume_id, container_id, n)
            except Exception:  # noqa: BLE001 - the other mounts still get theirs
                log.exception("volume %s: commit at the exit of container %s failed", m.volume_id, container_id)
            await asyncio.to_thread(vfs.rmtree, str(m.dir))
        self.mounts.pop(container_id, None)
        for vid in {m.volume_id for m in mounts}:
            await self._collect(vid)

    def _container_mounts(self, vid: str, body: req.ContainerVolume) -> tuple[Any, list[Mount]]:
        c = self.containers.get(body.container_id) if body.container_id is not None else None
        if c is None or body.container_token != c.token:
            raise ApiError(403, "commit() and reload() work only inside a running container", "InvalidError")
        mounts = [m for m in self.mounts.get(c.id, []) if m.volume_id == vid]
        if not mounts:
            raise ApiError(400, f"Volume {vid} is not mounted in container {c.id}: add it to the function's "
                                "`volumes=` to commit or reload it there")
        return c, mounts

    async def _commit_mount(self, m: Mount) -> int | None:
        if m.dir is None:
            return None
        async with self.locks[m.volume_id]:
            await self._existing(m.volume_id)
            n, m.manifest = await asyncio.to_thread(commit_upper, self.storage, m.volume_id, m.gen_dir(),
                                                    m.manifest)
        if n is not None:
            await self._collect(m.volume_id)
        return n

    async def container_commit(self, request: web.Request) -> web.Response:
        vid = request.match_info["volume_id"]
        body = await body_of(request, req.ContainerVolume)
        _, mounts = self._container_mounts(vid, body)
        version = None
        for m in mounts:
            version = await self._commit_mount(m) or version
        return reply({"ok": True, "version": version})

    async def container_reload(self, request: web.Request) -> web.Response:
        """Commit this container's changes, then show it the current version (with an empty upper layer)."""
        vid = request.match_info["volume_id"]
        body = await body_of(request, req.ContainerVolume)
        c, mounts = self._container_mounts(vid, body)
        if self.rootless:
            raise ApiError(400, "Volume.reload() needs a control plane running as root (rootless sandboxes "
                                "cannot swap a mount inside a running container); commit() works")
        for m in mounts:
            await self._commit_mount(m)
            await self._remount(c, m)
        await self._collect(vid)
        return reply({"ok": True, "version": mounts[-1].version})

    async def reload_all(self, c: Any) -> None:
        """`Sandbox.reload_volumes()`: every writable or read-only mount of container `c` (with `.id`, `.handle`)
        commits its changes and then shows its volume's current version, as `container_reload` does for one."""
        if self.rootless:
            raise ApiError(400, "reload_volumes() needs a control plane running as root (rootless sandboxes "
                                "cannot swap a mount inside a running container)")
        for m in list(self.mounts.get(c.id, [])):
            await self._commit_mount(m)
            await self._remount(c, m)
            await self._collect(m.volume_id)

    async def _remount(self, c: Any, m: Mount) -> None:
        async with self.locks[m.volume_id]:
            n = await asyncio.to_thread(self.storage.current, m.volume_id)
            if n == m.version and not m.manifest:
                return  # nothing newer, nothing committed from here: the mount already shows the current state
            lower = str(self.storage.version_dir(m.volume_id, n))
            upper = work = None
            if m.dir is not None:
                upper, work = await asyncio.to_thread(make_gen_dirs, m.gen_dir(m.gen + 1), self.storage.owner)
            pinned = m.version
            m.version = n  # pinned from now on, whatever happens below
            cfg = {"pid": c.handle.pid if c.handle is not None else 0, "path": m.path, "lower": lower,
                   "upper": upper, "work": work, "userxattr": self.rootless}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", "-c", REMOUNT_BOOT, marshal.dumps(cfg).hex(),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0:
                m.version = pinned
                if m.dir is not None:
                    await asyncio.to_thread(vfs.rmtree, str(m.gen_dir(m.gen + 1)))
                message = err.decode(errors="replace").strip().splitlines()
                if proc.returncode == BUSY_EXIT:
                    raise ApiError(409, f"cannot reload Volume {m.name or m.volume_id} at {m.path}: volume busy "
                                        "(files or directories under it are open, or a process's working directory "
                                        "is there); its changes were committed", "ConflictError")
                raise ApiError(500, f"reloading Volume {m.name or m.volume_id} at {m.path} failed: "
                                    f"{message[-1] if message else f'exit status {proc.returncode}'}",
                               "ExecutionError")
            if m.dir is not None:
                old = m.gen_dir()
                m.gen += 1
                m.manifest = {}
                await asyncio.to_thread(vfs.rmtree, str(old))

    # -- the Volume API (committed state) ----------------------------------------------------------------------
    def _pin_current(self, vid: str) -> int:
        n = self.storage.current(vid)
        self.reading[(vid, n)] += 1
        return n

    def _unpin(self, vid: str, n: int) -> None:
        self.reading[(vid, n)] -= 1
        if self.reading[(vid, n)] <= 0:
            del self.reading[(vid, n)]

    async def list_entries(self, request: web.Request) -> web.Response:
        vid = request.match_info["volume_id"]
        query = query_of(request, req.EntriesQuery)
        await self._existing(vid)
        path, recursive = query.path, query.recursive
        n = self._pin_current(vid)
        try:
            entries = await asyncio.to_thread(
                lambda: list(vfs.listdir(str(self.storage.version_dir(vid, n)), path, recursive)))
        except vfs.VolumePathError as exc:
            raise _path_error(exc) from exc
        finally:
            self._unpin(vid, n)
        return reply({"entries": entries, "version": n})

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        """A file's bytes, streamed (from an open descriptor: later commits cannot change what is sent)."""
        vid = request.match_info["volume_id"]
        path = query_of(request, req.FileQuery).path
        await self._existing(vid)
        n = self._pin_current(vid)
        try:
            host, size = vfs.open_file(str(self.storage.version_dir(vid, n)), path)
            f = open(host, "rb")  # noqa: SIM115 - closed below
        except vfs.VolumePathError as exc:
            raise _path_error(exc) from exc
        finally:
            self._unpin(vid, n)
        try:
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            resp.content_length = size
            await resp.prepare(request)
            while True:
                chunk = await asyncio.to_thread(f.read, CHUNK)
                if not chunk:
                    break
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        finally:
            f.close()

    async def _change(self, vid: str, apply: Any) -> int:
        """A new version made by `apply(stage)`, for the API's changes (`VolumePathError` → 4xx)."""
        await self._existing(vid)
        try:
            async with self.locks[vid]:
                n, _ = await asyncio.to_thread(self.storage.new_version, vid, apply)
        except vfs.VolumePathError as exc:
            raise _path_error(exc) from exc
        await self._collect(vid)
        return n

    async def _keyed(self, request: web.Request, change: Callable[[], Awaitable[int]]) -> web.Response:
        """A change of the files (`change`: the new version) done once per idempotency key: a resend gets the
        first answer. The files are on disk, not in the store, so the key is kept just after the version is
        current: a control plane killed between the two does a remove or copy again on the resend (a remove
        of what is gone then answers 404), and a resent upload commit finds no batch (404)."""
        key = request_key(request)
        done = await keyed.replayed(self.store, key)
        if done is not None:
            return reply(done.result)
        answer = {"ok": True, "version": await change()}
        if key is not None:
            await self.store.transact(lambda c: keyed.record(c, key, answer))
        return reply(answer)

    async def remove(self, request: web.Request) -> web.Response:
        vid = request.match_info["volume_id"]
        body = await body_of(request, req.RemovePath)
        return await self._keyed(request, lambda: self._change(
            vid, lambda stage: vfs.remove(stage, body.path, body.recursive)))

    async def copy(self, request: web.Request) -> web.Response:
        vid = request.match_info["volume_id"]
        body = await body_of(request, req.CopyPaths)
        return await self._keyed(request, lambda: self._change(
            vid, lambda stage: vfs.copy(stage, body.src_paths, body.dst_path, body.recursive, self.storage.owner)))

    async def start_upload(self, request: web.Request) -> web.Response:
        vid = request.match_info["volume_id"]
        key = request_key(request)
        done = self.started_uploads.get(key)  # a resend: the batch its first send started
        if done is not None:
            return reply(done)
        await self._existing(vid)
        now = time.time()
        for uid, up in list(self.uploads.items()):  # batches abandoned by their clients
            if now - up.created > UPLOAD_TTL_S:
                self.uploads.pop(uid, None)
                await asyncio.to_thread(vfs.rmtree, str(up.path))
        await asyncio.to_thread(self.storage.ensure, vid)
        upload_id = new_id("vu")
        path = self.storage.dir(vid) / "uploads" / upload_id
        path.mkdir(parents=True)
        self.uploads[upload_id] = Upload(vid, path)
        return reply(self.started_uploads.put(key, {"upload_id": upload_id}))

    def _upload(self, request: web.Request) -> Upload:
        up = self.uploads.get(request.match_info["upload_id"])
        if up is None or up.vid != request.match_info["volume_id"]:
            raise ApiError(404, "upload batch not found (expired, or the control plane restarted)", "NotFoundError")
        return up

    async def put_upload(self, request: web.Request) -> web.Response:
        """One file of a batch: the body streams to disk (no whole-file buffering)."""
        index = path_of(request, req.UploadPath).index
        up = self._upload(request)
        check_length(request, VOLUME_FILE_MAX)
        target = up.path / str(index)
        size = 0
        with open(target, "wb") as f:
            buf = bytearray()
            async for chunk in request.content.iter_chunked(CHUNK):
                if size + len(buf) + len(chunk) > VOLUME_FILE_MAX:
                    raise too_large(VOLUME_FILE_MAX)
                buf += chunk
                if len(buf) >= CHUNK:
                    await asyncio.to_thread(f.write, bytes(buf))
                    size += len(buf)
                    buf.clear()
            if buf:
                await asyncio.to_thread(f.write, bytes(buf))
                size += len(buf)
        up.received.add(index)
        return reply({"ok": True, "size": size})

    async def commit_upload(self, request: web.Request) -> web.Response:
        """The batch's files into a new version at once (all or none)."""
        body = await body_of(request, req.CommitUpload)
        return await self._keyed(request, lambda: self._commit_upload(request, body))

    async def _commit_upload(self, request: web.Request, body: req.CommitUpload) -> int:
        up = self._upload(request)
        files = body.files
        missing = [f[1] for f in files if f[0] not in up.received]
        if missing:
            raise ApiError(400, f"these files of the batch were not uploaded: {', '.join(missing[:5])}")
        force = body.force
        owner = self.storage.owner

        def apply(stage: str) -> None:
            placed: set[str] = set()
            for index, path, mode in files:
                key = "/".join(vfs.split(path))
                vfs.place_file(stage, str(up.path / str(index)), path, mode, owner, force or key in placed)
                placed.add(key)

        try:
            n = await self._change(up.vid, apply)
        finally:
            self.uploads.pop(request.match_info["upload_id"], None)
            await asyncio.to_thread(vfs.rmtree, str(up.path))
        return n

    async def rename(self, request: web.Request) -> web.Response:
        body = await body_of(request, req.RenameVolume)
        old, new = body.old_name, body.new_name
        result = await objects.rename(self.store, "volume", old, new, request_key(request))
        if result == "exists":
            raise ApiError(409, f"Volume {new!r} already exists", "AlreadyExistsError")
        if result == "missing":
            raise ApiError(404, f"Volume {old!r} not found", "NotFoundError")
        return reply({"ok": True})
