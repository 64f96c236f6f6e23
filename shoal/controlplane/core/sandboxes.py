"""`shoal.Sandbox` on the control plane: a sandbox is one container running a command of the caller's (not the
runtime), with its stdin a pipe and its output appended to files (sandbox_streams.py); commands run in it
(`exec`) enter its namespaces as `shoal container exec` does (backends/local_exec.py), with pipes, from here.

Its row (store/sandboxes.py) keeps its app, name, tags, command, image, state and how it ended; its output stays
under SHOAL_HOME/sandboxes/<id>/. It ends when its command exits, when terminated, at its `timeout`, after
`idle_timeout` with no exec running and no stdin written, or when its app stops. A sandbox container holds no
control-plane credential: nothing in it can call the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..._spec import requests as req
from ..._spec.definitions import FunctionDefinition, Options, SecretRef
from ...backends import local_exec
from ...backends.base import Backend, ContainerHandle, ContainerImage, ContainerSpec, Unschedulable
from ...exception import ImageBuildError, InvalidError
from ...oci.store import StoreError
from ...oci.unpack import LayerError
from ..rest import ApiError
from ..store import Store
from ..store import objects as object_rows
from ..store import sandboxes as rows
from .containers import modal_environment
from .model import new_id
from .registry import Registry
from .sandbox_exec import LOST, Agent, AgentProcess, NsenterProcess, agent_python
from .sandbox_streams import OutputFile, StdinPipe
from .sandbox_warm import Warm, WarmSandboxes, fits

log = logging.getLogger("shoal.sandbox")
TERM_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this
RESTARTED = "control plane restarted"
_ID = re.compile(r"(sb|ex)-[0-9a-f]{1,64}")  # ids as new_id makes them: safe in a path, never a glob
FDS = ("stdout", "stderr")
PIDS_MAX = 2048
EXEC_KEEP_S = 300.0  # a finished exec stays in memory this long
TARGET_WAIT_S = 60.0  # an exec (or file operation) right after creation waits this long for the sandbox's setup


@dataclass
class Proc:
    """A process of a sandbox (its command, or an exec) as readers and writers see it."""

    id: str
    out: dict[str, OutputFile]
    stdin: StdinPipe
    returncode: int | None = None
    reason: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def finish(self, returncode: int | None, reason: str) -> None:
        if self.done.is_set():
            return
        self.returncode, self.reason = returncode, reason
        for f in self.out.values():
            f.close()
        self.stdin.close()
        self.done.set()


@dataclass
class Exec:
    proc: Proc
    sandbox: Sandbox
    process: AgentProcess | NsenterProcess | None = None


@dataclass
class Sandbox:
    id: str
    app_id: str
    name: str | None
    tags: dict[str, str]
    body: req.SandboxCreate
    created_at: float
    proc: Proc
    container_id: str
    state: str = "pending"
    handle: ContainerHandle | None = None
    image: ContainerImage | None = None
    execs: dict[str, Exec] = field(default_factory=dict)
    last_active: float = field(default_factory=time.monotonic)
    end_reason: str | None = None  # why the control plane ended it ("timeout", "terminated", …)
    target: local_exec.ExecTarget | None = None
    env: dict[str, str] = field(default_factory=dict)  # what the control plane gave it: its execs get it whatever
    agent: Agent | None = None  # runs its execs (sandbox_exec.py), started at the first
    agent_failed: bool = False  # it could not start: execs go through nsenter
    agent_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ports: dict[int, Any] = field(default_factory=dict)  # tunnels: port -> its listener (sandbox_tunnels.py)
    rootfs_dir: Path | None = None  # on an OCI image: its writable layer on the host (ContainerSpec.rootfs_dir)

    def info(self) -> dict[str, Any]:
        return {"sandbox_id": self.id, "app_id": self.app_id, "name": self.name, "tags": self.tags,
                "state": self.state, "returncode": self.proc.returncode, "reason": self.proc.reason,
                "created_at": self.created_at, "container_id": self.container_id}


def pids_max() -> int:
    """Most processes (threads count) one sandbox may have at once: SHOAL_SANDBOX_PIDS_MAX, default 2048."""
    raw = os.environ.get("SHOAL_SANDBOX_PIDS_MAX", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else PIDS_MAX


def end_reason(ours: str | None, backend: str | None) -> str:
    """Why a sandbox ended, as stored: the control plane's reason ("timeout", "terminated", …), else "oom" for an
    OOM kill, "failed to start: …" for a sandbox that could not be set up, else "exited"."""
    if ours is not None:
        return ours
    if backend and backend.startswith("out of memory"):
        return "oom"
    if backend and backend.startswith("sandbox setup failed"):
        return f"failed to start: {backend}"
    return "exited"


def row_info(r: rows.SandboxRow) -> dict[str, Any]:
    return {"sandbox_id": r.sandbox_id, "app_id": r.app_id, "name": r.name, "tags": r.tags, "state": r.state,
            "returncode": r.returncode, "reason": r.reason, "created_at": r.created_at,
            "container_id": r.container_id}


class Sandboxes:
    def __init__(self, store: Store, backend: Backend, registry: Registry, secrets: Any, volumes: Any,
                 images: Any, state_dir: Path) -> None:
        self.store = store
        self.backend = backend
        self.registry = registry
        self.secrets = secrets
        self.volumes = volumes
        self.images = images
        self.dir = Path(state_dir) / "sandboxes"
        self.live: dict[str, Sandbox] = {}
        self.execs: dict[str, Exec] = {}
        self._tasks: set[asyncio.Task] = set()
        self.warm = WarmSandboxes(backend, pids_max(), self.dir / "warm")
        self.on_start: list[Any] = []  # callbacks(sandbox) once its container runs (tunnels)
        self.snapshots: dict[str, tuple[str, float]] = {}  # image id -> (sandbox id, when taken)
        self.building: dict[str, int] = {}  # image id -> creations building (or finding) it now
        self.on_end: list[Any] = []

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def recover(self) -> None:
        """At start: sandboxes the previous control plane ran died with it."""
        n = await rows.end_unfinished(self.store, RESTARTED, time.time())
        await asyncio.to_thread(self._remove_layers)
        if n:
            log.info("%d sandbox(es) of the previous control plane marked terminated (%s)", n, RESTARTED)

    def _remove_layers(self) -> None:
        """The writable layers the previous control plane's sandboxes left (their containers died with it)."""
        shutil.rmtree(self.dir / "warm", ignore_errors=True)
        for d in self.dir.glob("sb-*/rootfs"):
            shutil.rmtree(d, ignore_errors=True)

    # -- creating --------------------------------------------------------------------------------------------
    async def create(self, body: req.SandboxCreate) -> Sandbox:
        if self.backend.name != "local":
            raise ApiError(400, f"sandboxes run on the local backend only; this control plane uses "
                                f"{self.backend.name!r}")
        app = self.registry.apps.get(body.app_id)
        if app is None:
            raise ApiError(404, f"app {body.app_id} not found or stopped", "NotFoundError")
        if body.name is not None and any(s.app_id == body.app_id and s.name == body.name
                                         and s.state != "terminated" for s in self.live.values()):
            raise ApiError(409, f"a running sandbox of this app is already named {body.name!r}",
                           "AlreadyExistsError")
        if (body.block_network or body.outbound_cidr_allowlist is not None) and self.backend.isolation != "sandbox":
            raise ApiError(400, "`block_network`/`outbound_cidr_allowlist` need the Linux sandbox; containers "
                                "here are plain processes")
        image = None
        if body.image is not None:
            building = body.image.image_id
            self.building[building] = self.building.get(building, 0) + 1  # (the clean-up leaves it alone)
            try:
                image = await self.images.ensure(
                    await self.secrets.resolve_image(body.image),
                    log=lambda text: app.logs.append(body.image.image_id, "stderr", text))
            except InvalidError as exc:
                raise ApiError(400, f"`image`: {exc}") from exc
            except ImageBuildError as exc:  # its steps failed: the caller's
                raise ApiError(400, f"`image`: {exc}", "ImageBuildError") from exc
            finally:
                self.building[building] -= 1
                if not self.building[building]:
                    del self.building[building]
        refs = [SecretRef(name=n) for n in body.secret_names]
        await self.secrets.check(refs)
        warm = self.warm.take(image) if fits(body) else None
        sid = new_id("sb")
        sdir = self.dir / sid
        proc = Proc(sid, {fd: OutputFile(sdir / fd) for fd in FDS}, StdinPipe(None))
        sb = Sandbox(sid, body.app_id, body.name, dict(body.tags), body, time.time(), proc,
                     warm.container_id if warm is not None else new_id("ta"))
        sb.image = image
        if warm is not None:
            sb.rootfs_dir = warm.rootfs_dir
        elif image is not None and image.layers is not None:
            sb.rootfs_dir = sdir / "rootfs"
        self.live[sid] = sb
        inserted = rows.insert(self.store, rows.SandboxRow(
            sid, body.app_id, body.name, sb.tags, "pending", None, None, sb.created_at, None, list(body.command),
            image.image_id if image else None, sb.container_id))
        try:
            # The row is committed before the caller hears of the sandbox; the container starts meanwhile.
            start = self._adopt(sb, warm, refs) if warm is not None else self._start(sb, refs)
            await asyncio.gather(self.store.flushed(inserted), start)
            if warm is None and fits(body):
                self.warm.fill(image)  # the next creation of this image may find one ready
        except BaseException as exc:
            reason = f"failed to start: {exc}"
            if sb.handle is not None and sb.state != "running":  # (a warm container whose command did not start)
                sb.handle.kill()
            watched = sb.state == "running"  # (`_watch` removes its layer once it ended)
            self._ended(sb, None, reason)
            if sb.handle is None:
                self._drop_layer(sb)
            elif not watched and sb.rootfs_dir is not None:
                self.spawn(self._drop_layer_after(sb, sb.handle))
            if isinstance(exc, ApiError):
                raise
            raise ApiError(400, f"the sandbox could not start: {exc}") from exc
        return sb

    def _definition(self, sb: Sandbox) -> FunctionDefinition:
        b = sb.body
        extra: dict[str, Any] = {"pids_max": pids_max()}
        if b.block_network:
            extra["block_network"] = True
        return FunctionDefinition(tag=f"sandbox:{sb.id}", options=Options(
            timeout=max(1, int(b.timeout)), cpu=b.cpu, memory=b.memory, gpu=[b.gpu] if b.gpu else None,
            extra=extra))

    async def _start(self, sb: Sandbox, refs: list[SecretRef]) -> None:
        b = sb.body
        env = await self.secrets.resolve(refs) if refs else {}
        env.update(b.env)
        env.update(modal_environment(sb.container_id, sb.image))
        env.update({"SHOAL_SANDBOX_ID": sb.id, "MODAL_SANDBOX_ID": sb.id, "SHOAL_CONTAINER_ID": sb.container_id})
        sb.env = env
        image = sb.image
        if b.workdir is not None:
            image = replace(image, workdir=b.workdir) if image is not None else ContainerImage(
                image_id="im-host", python=getattr(self.backend, "python", ""), workdir=b.workdir)
        definition = self._definition(sb)
        if b.volumes:
            definition.volumes = await self._volume_refs(b.volumes)
        spec = ContainerSpec(
            container_id=sb.container_id, function_id=sb.id, app_id=sb.app_id, definition=definition, env=env,
            image=image, command=list(b.command) or None, idle=not b.command, stdin=True,
            raw_output=lambda fd, data: self._output(sb, fd, data),
            outbound_cidr_allowlist=b.outbound_cidr_allowlist,
            rootfs_dir=str(sb.rootfs_dir) if sb.rootfs_dir is not None else None,
        )
        holder = _Holder(sb.container_id, definition)
        if definition.volumes:
            spec.volumes = await self.volumes.prepare(holder)
        try:
            handle = await self.backend.start(spec, on_output=None)
        except Unschedulable as exc:
            await self.volumes.release(sb.container_id)
            raise ApiError(503, f"no room for the sandbox now: {exc}", "ResourceExhaustedError") from exc
        except BaseException:
            await self.volumes.release(sb.container_id)
            raise
        sb.handle = handle
        sb.proc.stdin = StdinPipe(getattr(handle, "stdin", None))
        sb.state = "running"
        rows.started(self.store, sb.id, sb.container_id)
        loop = asyncio.get_running_loop()
        loop.call_later(b.timeout, self._timed_out, sb)
        for cb in self.on_start:
            cb(sb)
        self.spawn(self._watch(sb, handle))

    async def _adopt(self, sb: Sandbox, w: Warm, refs: list[SecretRef]) -> None:
        """Serve a creation with a warm container: its command starts through the container's agent, with the
        sandbox's environment (the container's own, its secrets, `env`, its ids)."""
        b = sb.body
        env = dict(w.target.env)
        env.update(await self.secrets.resolve(refs) if refs else {})
        env.update(b.env)
        env.update(modal_environment(sb.container_id, sb.image))
        env.update({"SHOAL_SANDBOX_ID": sb.id, "MODAL_SANDBOX_ID": sb.id, "SHOAL_CONTAINER_ID": sb.container_id})
        sb.handle, sb.target, sb.agent, sb.env = w.handle, replace(w.target, env=env), w.agent, env
        main = await w.agent.run(list(b.command), env, b.workdir) if b.command else None
        sb.state = "running"
        rows.started(self.store, sb.id, sb.container_id)
        asyncio.get_running_loop().call_later(b.timeout, self._timed_out, sb)
        for cb in self.on_start:
            cb(sb)
        self.spawn(self._watch(sb, w.handle))
        if main is not None:
            sb.proc.stdin = StdinPipe(main.stdin)
            self.spawn(self._run_main(sb, main))

    async def _run_main(self, sb: Sandbox, main: AgentProcess) -> None:
        """A warm sandbox's command: the sandbox ends when it exits (its container is then stopped)."""
        async def pump(stream: asyncio.StreamReader, fd: str) -> None:
            while chunk := await stream.read(65536):
                self._output(sb, fd, chunk)

        pumps = asyncio.gather(pump(main.stdout, "stdout"), pump(main.stderr, "stderr"))
        code = await main.wait()
        if code == LOST:  # the container ended first (terminated, timed out): `_watch` says how
            return
        try:
            await asyncio.wait_for(asyncio.shield(pumps), 2.0)  # what it wrote last (a child may keep the pipes)
        except asyncio.TimeoutError:
            pass
        self._ended(sb, code, sb.end_reason or "exited")
        if sb.handle is not None:
            sb.handle.kill()

    async def _volume_refs(self, volumes: list[req.SandboxVolume]) -> list:
        from ..._spec.definitions import VolumeMount

        refs = []
        for v in volumes:
            vid, _ = await object_rows.find_or_create(self.store, "volume", v.volume_name, create=False,
                                                      new_id="", app_id=None)
            if not vid:
                raise ApiError(404, f"`volumes`: Volume {v.volume_name!r} not found", "NotFoundError")
            refs.append(VolumeMount(mount_path=v.path, volume_id=vid, name=v.volume_name, read_only=v.read_only))
        return refs

    def _output(self, sb: Sandbox, fd: str, data: bytes) -> None:
        f = sb.proc.out.get(fd)
        if f is not None:
            f.append(data)

    async def _watch(self, sb: Sandbox, handle: ContainerHandle) -> None:
        code = await handle.wait()
        await self.volumes.release(sb.container_id)
        self._ended(sb, code, end_reason(sb.end_reason, handle.exit_reason()))
        self._drop_layer(sb)

    async def _drop_layer_after(self, sb: Sandbox, handle: ContainerHandle) -> None:
        await handle.wait()
        self._drop_layer(sb)

    def _drop_layer(self, sb: Sandbox) -> None:
        """Its writable layer, once its container is gone (a snapshot taken before is a layer of its own)."""
        if sb.rootfs_dir is not None:
            self.spawn(asyncio.to_thread(shutil.rmtree, sb.rootfs_dir, True))

    def _ended(self, sb: Sandbox, code: int | None, reason: str) -> None:
        if sb.state == "terminated":  # (a warm sandbox's command ended it before its container)
            return
        sb.state = "terminated"
        sb.proc.finish(code, reason)
        for ex in list(sb.execs.values()):
            self._kill_exec(ex, "sandbox terminated")
        if sb.agent is not None:
            sb.agent.close()
        # Kept here until its row says so, so a reader never sees the row's older state in between.
        ticket = rows.ended(self.store, sb.id, code, reason, time.time())
        self.store.after(ticket, lambda: self.live.pop(sb.id, None))
        for eid in [e for e, ex in self.execs.items() if ex.sandbox is sb and ex.proc.done.is_set()]:
            self.execs.pop(eid, None)  # their output and exit are on disk
        for cb in self.on_end:
            cb(sb)

    async def snapshot(self, sb: Sandbox) -> str:
        """A new image of the sandbox's root filesystem now (oci_images.OciBuilder.snapshot): its image's layers
        and its writable layer as one more, without the mountpoints the container's setup made."""
        if sb.image is None or sb.image.layers is None:
            raise ApiError(400, f"snapshot_filesystem needs a sandbox whose image is an OCI image "
                                f"(Image.from_registry/from_dockerfile, or a snapshot), run as its root filesystem; "
                                f"sandbox {sb.id} runs image {sb.image.image_id if sb.image else 'im-host'}, whose "
                                f"files are the host's and the image's directories bound read-only, with no layer "
                                f"of its own to record")
        if sb.rootfs_dir is None or not (sb.rootfs_dir / "upper").is_dir():
            raise ApiError(409, f"sandbox {sb.id} has no writable layer to snapshot (not started yet?)")
        try:
            skip = (sb.rootfs_dir / "mountpoints").read_text().splitlines()
        except OSError:
            skip = []
        def claim(image_id: str) -> None:  # (before the image is recorded: no clean-up takes it half made)
            self.snapshots[image_id] = (sb.id, time.time())

        try:
            return await asyncio.to_thread(self.images.oci.snapshot, sb.image.image_id, sb.rootfs_dir / "upper",
                                           skip, claim)
        except (ImageBuildError, LayerError, StoreError) as exc:
            raise ApiError(400, f"snapshot of sandbox {sb.id}: {exc}") from exc
        except OSError as exc:  # (its files changed under the walk: gone, or a symlink now)
            raise ApiError(409, f"snapshot of sandbox {sb.id}: its files changed while they were read ({exc}); "
                                "try again", "ConflictError") from exc

    def images_in_use(self, grace: float) -> dict[str, str]:
        """{image id: why it must stay} for the image clean-up (image_gc.ImageCatalog.busy_sources): the images
        running sandboxes and warm containers run on, and the snapshots taken here less than `grace` seconds ago
        (their ids were handed to a caller who may not have used them yet)."""
        held: dict[str, str] = {}
        now = time.time()
        for image_id, (sid, taken) in list(self.snapshots.items()):
            if now - taken < grace:
                held[image_id] = f"a snapshot of sandbox {sid} taken {now - taken:.0f} s ago (kept {grace:.0f} s)"
            else:
                del self.snapshots[image_id]
        for image_id in self.building:
            held[image_id] = "a sandbox's creation is building or finding it"
        for image_id in self.warm.images():
            held[image_id] = "warm sandbox containers run on it"
        for sb in list(self.live.values()):
            if sb.image is not None and sb.state != "terminated":
                held[sb.image.image_id] = f"sandbox {sb.id} runs on it"
        return held

    # -- ending ----------------------------------------------------------------------------------------------
    def terminate(self, sb: Sandbox, reason: str = "terminated") -> None:
        if sb.state == "terminated" or sb.end_reason is not None:
            return
        sb.end_reason = reason
        if sb.handle is None:
            return
        sb.handle.terminate()
        asyncio.get_running_loop().call_later(TERM_GRACE_S, sb.handle.kill)

    def _timed_out(self, sb: Sandbox) -> None:
        if sb.state == "running":
            self.terminate(sb, "timeout")

    def tick(self, now: float) -> None:
        """Once a second: idle timeouts, and sandboxes whose app stopped."""
        for sb in list(self.live.values()):
            if sb.state != "running":
                continue
            if sb.app_id not in self.registry.apps:
                self.terminate(sb, "app stopped")
            elif sb.body.idle_timeout is not None and not any(
                    not e.proc.done.is_set() for e in sb.execs.values()) \
                    and now - sb.last_active > sb.body.idle_timeout:
                self.terminate(sb, "idle_timeout")

    async def housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.tick(time.monotonic())
            except Exception:  # noqa: BLE001 - the next second tries again
                log.exception("sandbox housekeeping failed")

    def shutdown(self) -> None:
        self.warm.shutdown()
        for sb in list(self.live.values()):
            if sb.handle is not None:
                sb.handle.kill()

    def container_rows(self) -> list[dict[str, Any]]:
        """The containers of running sandboxes, as `GET /v1/containers` lists containers (with their app)."""
        now = time.time()
        return [{"container_id": sb.container_id, "app_id": sb.app_id, "function": f"sandbox {sb.id}",
                 "function_id": sb.id, "sandbox_id": sb.id, "state": sb.state, "pending_reason": None,
                 "running_inputs": len(sb.execs), "age_s": now - sb.created_at, "timings": None, "node": None}
                for sb in self.live.values() if sb.state != "terminated"]

    def container_info(self, container_id: str) -> dict[str, Any] | None:
        """A running sandbox's container as `GET /v1/containers/{id}` describes one (`shoal container exec`)."""
        sb = next((s for s in self.live.values() if s.container_id == container_id and s.state != "terminated"),
                  None)
        if sb is None or sb.handle is None:
            return None
        row = next(r for r in self.container_rows() if r["sandbox_id"] == sb.id)
        h = sb.handle
        return {**row, "pid": h.pid, "sandboxed": bool(h.sandboxed), "isolation": h.isolation or self.backend.isolation,
                "backend": self.backend.name, "cgroups": list(h.cgroup.dirs) if h.cgroup is not None else []}

    # -- looking up ------------------------------------------------------------------------------------------
    async def get_live(self, sandbox_id: str) -> Sandbox:
        """A running sandbox: 404 when there is no such sandbox, 409 (SandboxTerminatedError) when it ended."""
        sb = self.live.get(sandbox_id)
        if sb is None or sb.state == "terminated":
            info = await self.info(sandbox_id)
            raise ApiError(409, f"sandbox {sandbox_id} is terminated ({info['reason']})", "SandboxTerminatedError")
        return sb

    async def info(self, sandbox_id: str) -> dict[str, Any]:
        sb = self.live.get(sandbox_id)
        if sb is not None:
            return sb.info()
        row = await rows.get(self.store, sandbox_id) if _ID.fullmatch(sandbox_id) else None
        if row is None:
            raise ApiError(404, f"sandbox {sandbox_id} not found", "NotFoundError")
        return row_info(row)

    async def app_of(self, sandbox_id: str) -> str | None:
        """The app of a sandbox, running or ended (None: no such sandbox)."""
        sb = self.live.get(sandbox_id)
        if sb is not None:
            return sb.app_id
        row = await rows.get(self.store, sandbox_id)
        return row.app_id if row is not None else None

    async def app_of_exec(self, exec_id: str) -> str | None:
        ex = self.execs.get(exec_id)
        if ex is not None:
            return ex.sandbox.app_id
        files = self.exec_files(exec_id)
        return await self.app_of(files["stdout"].parent.parent.name) if files is not None else None

    # -- exec ------------------------------------------------------------------------------------------------
    async def _target(self, sb: Sandbox) -> local_exec.ExecTarget:
        if sb.target is None or not os.path.isdir(f"/proc/{sb.target.pid}"):
            handle = sb.handle
            assert handle is not None
            # `env`: over what its runtime's /proc environ says, which a loaded machine can catch mid-setup
            info = {"container_id": sb.container_id, "pid": handle.pid, "sandboxed": handle.sandboxed,
                    "cgroups": list(handle.cgroup.dirs) if handle.cgroup is not None else [], "env": sb.env}
            try:
                # (a sandbox still being set up is waited for: on a loaded machine that can take many seconds)
                sb.target = await asyncio.to_thread(local_exec.find_target, info, TARGET_WAIT_S)
            except local_exec.ExecError as exc:
                raise ApiError(409, str(exc), "SandboxTerminatedError") from exc
        return sb.target

    async def exec(self, sb: Sandbox, body: req.ExecCreate) -> Exec:
        if sb.state != "running" or sb.handle is None or sb.end_reason is not None:
            raise ApiError(409, f"sandbox {sb.id} is not running", "SandboxTerminatedError")
        target = await self._target(sb)
        env = dict(target.env)
        if body.secret_names:
            refs = [SecretRef(name=n) for n in body.secret_names]
            await self.secrets.check(refs)
            env.update(await self.secrets.resolve(refs))
        env.update(body.env)
        eid = new_id("ex")
        edir = self.dir / sb.id / "execs"
        proc = Proc(eid, {fd: OutputFile(edir / f"{eid}.{fd}") for fd in FDS}, StdinPipe(None))
        ex = Exec(proc, sb)
        try:
            process = await self._spawn(sb, target, list(body.argv), env, body.workdir or sb.body.workdir, body.pty)
        except OSError as exc:
            proc.finish(None, f"failed to start: {exc}")
            raise ApiError(400, f"`argv`: cannot run {body.argv[0]!r}: {exc}") from exc
        ex.process = process
        proc.stdin = StdinPipe(process.stdin, b"\x04" if body.pty else b"")
        sb.execs[eid] = ex
        self.execs[eid] = ex
        sb.last_active = time.monotonic()
        timer = asyncio.get_running_loop().call_later(body.timeout, self._kill_exec, ex, "timeout") \
            if body.timeout else None
        self.spawn(self._run_exec(ex, process, timer))
        return ex

    async def _ensure_agent(self, sb: Sandbox, target: local_exec.ExecTarget | None = None) -> None:
        async with sb.agent_lock:
            if (sb.agent is None or not sb.agent.alive) and not sb.agent_failed and sb.state == "running":
                python = agent_python(self.backend, sb.image)
                try:
                    if not python:
                        raise OSError("the image has no Python for the exec agent")
                    sb.agent = await Agent.start(target or await self._target(sb), python)
                except (OSError, ApiError) as exc:
                    log.warning("sandbox %s: no exec agent (%s): execs go through nsenter", sb.id, exc)
                    sb.agent_failed = True

    async def _spawn(self, sb: Sandbox, target: local_exec.ExecTarget, argv: list[str], env: dict[str, str],
                     workdir: str | None, pty: bool = False) -> AgentProcess | NsenterProcess:
        """A command in the sandbox: through its agent, started at the first exec; through nsenter where the
        agent cannot run."""
        for attempt in (1, 2):  # an agent that died before its first command is started once more
            await self._ensure_agent(sb, target)
            if sb.agent is None or not sb.agent.alive:
                break
            try:
                tty = None
                if pty:
                    try:
                        tty = local_exec.open_pty(target)
                    except local_exec.ExecError as exc:
                        raise ApiError(400, f"`pty`: {exc}") from exc
                    env = {"TERM": "xterm-256color", **env}
                return await sb.agent.run(argv, env, workdir, tty)
            except OSError:
                if sb.agent.alive:
                    raise
                # It never came up twice (no interpreter?): not again.
                sb.agent_failed = not sb.agent.served and attempt == 2
        if pty:
            raise ApiError(400, "`pty`: this sandbox's exec agent is not running, and execs with a terminal need it")
        if workdir is not None:
            argv = ["/usr/bin/env", "-C", workdir, "--", *argv]
        process = await asyncio.create_subprocess_exec(
            *local_exec.command_argv(target, argv, pty=False), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            cwd=target.cwd if not target.sandboxed else "/", start_new_session=True,
            preexec_fn=(lambda: local_exec.prepare_process(target)) if target.sandboxed else None)
        return NsenterProcess(process)

    async def _run_exec(self, ex: Exec, process: AgentProcess | NsenterProcess, timer: Any) -> None:
        async def pump(stream: asyncio.StreamReader | None, f: OutputFile) -> None:
            while stream is not None:
                try:
                    chunk = await stream.read(65536)
                except OSError:  # a terminal's master: EIO once every process holding it is gone
                    break
                if not chunk:
                    break
                f.append(chunk)
            f.close()  # every writer is gone: readers get their end now, not at the exit status

        await asyncio.gather(pump(process.stdout, ex.proc.out["stdout"]), pump(process.stderr, ex.proc.out["stderr"]))
        code = await process.wait()
        if timer is not None:
            timer.cancel()
        if code == LOST:
            ex.proc.finish(None, ex.proc.reason or "exec agent died")
        else:
            ex.proc.finish(code, ex.proc.reason or "exited")
        sb = ex.sandbox
        sb.execs.pop(ex.proc.id, None)
        sb.last_active = time.monotonic()
        try:  # how it ended, next to its output: readable once it is forgotten here, and after a restart
            path = self.dir / sb.id / "execs" / f"{ex.proc.id}.exit"
            path.write_text(json.dumps({"returncode": ex.proc.returncode, "reason": ex.proc.reason}))
        except OSError as exc:
            log.warning("exec %s: cannot record its exit: %s", ex.proc.id, exc)
        if sb.state == "terminated":
            self.execs.pop(ex.proc.id, None)
        else:  # its output and exit are on disk: readers find them there once it is forgotten
            asyncio.get_running_loop().call_later(EXEC_KEEP_S, self.execs.pop, ex.proc.id, None)

    def _kill_exec(self, ex: Exec, reason: str) -> None:
        """An exec's timeout (or its sandbox's end): the exec's process group, nothing else of the sandbox."""
        if ex.process is None or ex.process.returncode is not None:
            return
        if ex.proc.reason is None:
            ex.proc.reason = reason
        ex.process.kill_group()

    def get_exec(self, exec_id: str) -> Exec:
        ex = self.execs.get(exec_id)
        if ex is None:
            raise ApiError(404, f"exec {exec_id} not found", "NotFoundError")
        return ex

    def exec_exit(self, exec_id: str) -> dict[str, Any]:
        """How an exec this control plane no longer holds ended: from its `.exit` file; without one it was running
        when its control plane stopped."""
        files = self.exec_files(exec_id)
        if files is None:
            raise ApiError(404, f"exec {exec_id} not found", "NotFoundError")
        try:
            return json.loads(files["stdout"].with_suffix(".exit").read_text())
        except (OSError, ValueError):
            return {"returncode": None, "reason": RESTARTED}

    def exec_files(self, exec_id: str) -> dict[str, Path] | None:
        """A finished exec's output files (after a restart, or once forgotten)."""
        if not _ID.fullmatch(exec_id):
            return None
        for d in self.dir.glob(f"*/execs/{exec_id}.stdout"):
            return {fd: d.parent / f"{exec_id}.{fd}" for fd in FDS}
        return None


class _Holder:
    """What `Volumes.prepare` reads of a container: its id and its definition's mounts."""

    def __init__(self, container_id: str, definition: FunctionDefinition) -> None:
        self.id = container_id
        self.pool = type("PoolView", (), {"definition": definition})()
