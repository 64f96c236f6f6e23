"""Ray backend: each container runs inside a Ray actor, on whichever node of the cluster Ray places it.

The control plane still decides what runs; Ray only places containers and holds their resources. A container's
actor reserves its `cpu=`, `memory=`, GPUs (`num_gpus`, the model as the `accelerator_type:<MODEL>` resource) and
`region=` (the `region:<NAME>` resource): see shoal/backends/ray_placement.py. On its node the actor starts the
container exactly as the local backend does (the same `LocalBackend`, sandboxed where the node allows), and the
container's runtime connects back to the control plane over TCP (`SHOAL_CONTROL=tcp://host:port`), saying who it
is with its container token, as on the unix socket.

    control plane ──ray actor call──▶ ContainerActor (one Ray worker process, on some node)
         ▲                                  └─ LocalBackend.start → supervisor → init → `python -m shoal.runtime`
         └──────────── TCP: frames ─────────────────────────────────────────────────────┘

What the control plane's handle does with the actor:

- output: a long-polled actor call (`output`) brings the container's stdout/stderr, and finally its exit status;
- `wait()` returns that status; if the actor died instead (its node died, or Ray killed it), it returns -9 and
  `exit_reason()` says why ("its Ray node … died"), and the dispatcher re-queues the container's inputs;
- `kill()`/`terminate()` signal the container through the actor; the actor is killed once the container's exit
  is known (or after a grace period), which frees its resources;
- `web_connect(port)`: the actor listens on its node's address (port 0: Ray hands out no ports) and forwards each
  connection that starts with the container's forwarding key into the container's own port.

Fencing: a container must stop taking work once its actor is gone. The container's processes die with the actor
process (parent-death signals in the supervisor and the runtime); the actor watches its raylet (its parent
process) and kills the container and itself the moment the raylet goes, rather than when Ray notices (seconds
later); and the control plane discards whatever still arrives from a container it has declared dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from . import ray_placement as placement
from .base import ContainerImage, ContainerSpec, OutputSink, Unschedulable
from .local_exec import children
from .sandbox import _LOOPBACK, SHOAL_PACKAGE_DIR, layer_id_shift

if TYPE_CHECKING:
    from ..oci.store import LayerStore

log = logging.getLogger("shoal.backend.ray")

NAMESPACE = "shoal"
OUTPUT_POLL_S = 20.0  # how long one `output` call waits for output before returning empty
OUTPUT_BUFFER_BYTES = 8 * 1024 * 1024  # output the actor keeps while nobody reads it; older chunks are dropped
KILL_GRACE_S = 2.0  # after asking the actor to kill its container: when to kill the actor itself
PLACE_TIMEOUT_S = 30.0  # an actor Ray has not placed by then gives its resources back and waits as pending
NODES_TTL_S = 1.0
CACHE_TTL_S = 600.0  # how long a node trusts what an earlier container's start found out (_NodeCache)
# Settings of the control plane's environment the containers' actors (on other machines) need for the sandbox.
PASSED_ENV = ("SHOAL_ISOLATION", "SHOAL_SANDBOX_SHARE", "SHOAL_SANDBOX_UID", "SHOAL_SANDBOX_TRACE",
              "SHOAL_IMAGE_GC_GRACE")
KEY_BYTES = 16  # the forwarding key a web connection to an actor's forwarder starts with
_UNSPECIFIED = {"0.0.0.0", "::", ""}


# -- inside the actor (on some node) -----------------------------------------------------------------------------
class _Gate(asyncio.Protocol):
    """One connection to an actor's web forwarder: the first KEY_BYTES bytes must be the container's forwarding
    key; then the bytes go to and from the container's port (through its network namespace)."""

    def __init__(self, actor: ContainerActor, port: int) -> None:
        self.actor = actor
        self.port = port
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.pipe: Any = None  # the sandbox's _Pipe once linked

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        asyncio.get_running_loop().call_later(10.0, self._expire)

    def _expire(self) -> None:
        if self.pipe is None and self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.data_received(data)
            return
        self.buf += data
        if len(self.buf) < KEY_BYTES:
            return
        key, rest = self.buf[:KEY_BYTES], self.buf[KEY_BYTES:]
        self.buf = b""
        if not hmac.compare_digest(key, self.actor.web_key):
            assert self.transport is not None
            self.transport.close()
            return
        self.transport.pause_reading()  # type: ignore[union-attr]
        asyncio.get_running_loop().create_task(self._link(rest))

    async def _link(self, early: bytes) -> None:
        from .sandbox import _Pipe

        assert self.transport is not None
        container = self.actor.container
        try:
            if container is None:
                raise OSError("no container")
            sock = await container.web_connect(self.port)
            _, inner = await asyncio.get_running_loop().create_connection(_Pipe, sock=sock)
        except OSError:
            self.transport.close()
            return
        outer = _Pipe()
        outer.connection_made(self.transport)
        self.pipe = outer
        inner.link(outer)
        outer.link(inner)
        if early:
            outer.data_received(early)
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        if self.pipe is not None:
            return self.pipe.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pipe is not None:
            self.pipe.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.pause_writing()

    def resume_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.resume_writing()


class _NodeCache:
    """What the local backend learns about this node once (whether it can sandbox; which paths an interpreter's
    containers must see), kept for the node's next containers: each runs in a fresh actor process, and
    finding these out again costs 0.1-0.4 s a container start. Entries expire after CACHE_TTL_S."""

    def __init__(self, isolation: str) -> None:
        self.dir = _node_dir()
        self.path = self.dir / "node-cache.json" if self.dir else None
        self.isolation = isolation

    def load(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if data.get("isolation") != self.isolation or time.time() - data.get("at", 0) > CACHE_TTL_S \
                or data.get("shoal") != SHOAL_PACKAGE_DIR:
            return {}
        paths = {py: p for py, (seen, p) in (data.get("paths") or {}).items() if _fingerprint(py) == seen}
        return {"availability": data.get("availability"), "paths": paths}

    def save(self, backend: Any) -> None:
        if self.path is None:
            return
        data = {"isolation": self.isolation, "at": time.time(), "availability": asdict(backend.availability),
                "shoal": SHOAL_PACKAGE_DIR, "paths": {py: [_fingerprint(py), p] for py, p in backend._paths.items()}}
        try:
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(self.path)
        except OSError:
            pass


def _node_dir() -> Path | None:
    """This node's private directory for shoal (node cache, unpacked sources): ours alone, or None. What is in
    it decides what containers see, so a directory someone else made or may write is never used."""
    path = Path(tempfile.gettempdir()) / f"shoal-ray-{os.geteuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        log.warning("not using %s: it is not a private directory of this user", path)
        return None
    return path


def _node_store(node_home: str | None) -> LayerStore | None:
    """This node's layer store: `SHOAL_HOME/oci` of the node's own environment, else in its private directory."""
    from ..oci.store import LayerStore

    if node_home:
        return LayerStore(Path(node_home) / "oci", id_shift=layer_id_shift())
    node_dir = _node_dir()
    return LayerStore(node_dir / "oci", id_shift=layer_id_shift()) if node_dir is not None else None


def _fingerprint(path: str) -> list[int]:
    """What an interpreter's cached paths hold for: the file at its path (a venv's link, made anew when the venv is,
    even at the same path) and the interpreter it resolves to. (The paths also name shoal's package: the cache
    holds for one SHOAL_PACKAGE_DIR.)"""
    try:
        return [os.lstat(path).st_mtime_ns, os.stat(path).st_mtime_ns]
    except OSError:
        return [-1, -1]


class ContainerActor:
    """One container on a Ray node. Its Ray worker process is the container's parent: when Ray kills the actor,
    or the node's raylet dies, the container dies with it."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.container: Any = None  # the LocalContainer
        self.image_hold: int | None = None  # ray_images.hold_image's descriptor, while the container runs
        self.chunks: list[tuple[str, str]] = []
        self.buffered = 0
        self.dropped = 0
        self.exit: int | None = None
        self.reason: str | None = None
        self.changed = asyncio.Event()
        self.node_lost = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.web_key = secrets.token_bytes(KEY_BYTES)
        self.forwarders: dict[int, tuple[str, int]] = {}
        self.node_id = ray.get_runtime_context().get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.node_home = os.environ.get("SHOAL_HOME")  # the node's own, before start() sets the control plane's
        self._start_watchdog()

    # The raylet (the worker's parent) going away means the node is lost to the cluster: the control plane will
    # hear "node died" and start a replacement, so this container must stop at once.
    def _start_watchdog(self) -> None:
        parent = os.getppid()
        try:
            with open(f"/proc/{parent}/comm") as f:
                is_raylet = f.read().strip() == "raylet"
        except OSError:
            is_raylet = False
        if not is_raylet:
            return

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.05)
            self.node_lost = True
            self._kill_container_now()
            loop = self.loop
            if loop is not None:
                # The answer to the control plane's pending `output` call goes to it directly (not through the
                # raylet): it learns now, not when Ray declares the node dead, that this container is gone.
                loop.call_soon_threadsafe(self._node_lost)
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="shoal-raylet-watch", daemon=True).start()

    def _node_lost(self) -> None:
        if self.exit is None:
            self.exit = -signal.SIGKILL
        self.changed.set()

    def _kill_container_now(self) -> None:
        """SIGKILL the container's whole process tree and return once none of it runs any more (fencing: only
        then may the control plane hear that it is gone)."""
        c = self.container
        if c is None or c.proc.returncode is not None:
            return
        tree = _process_tree(c.proc.pid)  # the supervisor, the init, the runtime and what user code started
        with contextlib.suppress(OSError):
            os.killpg(c.proc.pid, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while any(_running(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.005)

    async def placed(self) -> str:
        """Answers once the actor runs on a node (while a concurrent `start` may still be pulling an image)."""
        return self.node_id

    async def start(self, spec: ContainerSpec, sources: list[Any], image_pull: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
        """Start the container; returns where it runs. `sources`: [the app's source as a tarball (an object
        ref)], used only where the node does not have the source directory (another machine). `image_pull`: for
        an OCI image, where and how this node pulls it from the control plane (RayBackend._image_pull)."""
        from .local import LocalBackend

        self.loop = asyncio.get_running_loop()
        s = self.settings
        for k, v in s["env"].items():
            os.environ[k] = v
        os.environ["SHOAL_HOME"] = s["state_dir"]
        cache = _NodeCache(os.environ.get("SHOAL_ISOLATION", "auto"))
        backend = LocalBackend(state_dir=s["state_dir"], known=cache.load(), netns_pool=0)  # one container each
        same_machine = self.node_ip == s["control_ip"]
        backend.forward_ports = {port: (host if same_machine or host not in _LOOPBACK else s["control_ip"], p)
                                 for port, (host, p) in s["forward_ports"].items()}
        definition = spec.definition
        env = dict(spec.env)
        env["SHOAL_NODE_ID"] = self.node_id
        env["SHOAL_NODE_IP"] = self.node_ip
        if definition.options.gpu:
            # Ray chose the GPUs (its CUDA_VISIBLE_DEVICES for this actor): the container gets exactly those.
            ids = [str(i) for i in ray.get_gpu_ids()]
            definition = msgspec.structs.replace(
                definition, options=msgspec.structs.replace(definition.options, gpu=None))
            spec.gpus = ids
            env["CUDA_VISIBLE_DEVICES"] = env["NVIDIA_VISIBLE_DEVICES"] = ",".join(ids)
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        spec = replace(spec, env=env, definition=definition)
        if spec.source_dir and not os.path.isdir(spec.source_dir):
            spec.source_dir = await self._fetch_dir("sources", spec.source_dir, sources)
        if spec.image is not None and spec.image.layers is not None:
            spec.image = await self._node_image(spec.image, image_pull)
        elif spec.image is not None and not os.path.exists(spec.image.python):
            raise RuntimeError(f"image {spec.image.image_id} is not on node {self.node_id[:12]} ({self.node_ip}): "
                               f"{spec.image.python} is missing (images are built on the control plane's machine; "
                               "see docs/cluster.md)")
        self.container = await backend.start(spec, self._on_output)
        cache.save(backend)
        asyncio.get_running_loop().create_task(self._wait())
        return {"pid": self.container.pid, "node_id": self.node_id, "node_ip": self.node_ip,
                "sandboxed": bool(getattr(self.container, "sandboxed", False)), "isolation": backend.isolation}

    async def _node_image(self, image: ContainerImage, pull: dict[str, Any] | None) -> ContainerImage:
        """The OCI image with this node's own layer directories (pulled from the control plane if it lacks any)
        and runtime packages."""
        from .ray_images import ensure_image, hold_image

        layers = image.layers or []
        if self.node_home is None and all(os.path.isdir(p) for p in layers):
            local = layers  # no store of its own: the control plane's machine, or its SHOAL_HOME shared
        elif pull is None:
            raise RuntimeError(f"image {image.image_id} is not on node {self.node_id[:12]} ({self.node_ip}) and "
                               "the control plane gave no registry to pull it from")
        else:
            store = _node_store(self.node_home)
            if store is None:
                raise RuntimeError(f"no private directory on node {self.node_id[:12]} to keep images in")
            # held until the container exits (_wait): the node's prune leaves its layers alone
            self.image_hold = await asyncio.to_thread(hold_image, store, image.image_id)
            local, _ = await asyncio.to_thread(ensure_image, store, pull["url"], pull["credential"],
                                               image.image_id, pull["digest"], layers)
        runtime_dir = image.runtime_dir
        if runtime_dir and not os.path.isdir(runtime_dir):
            runtime_dir = await self._fetch_dir("runtimes", runtime_dir, (pull or {}).get("runtime") or [])
        return replace(image, layers=local, runtime_dir=runtime_dir)

    async def _fetch_dir(self, kind: str, source_dir: str, sources: list[Any]) -> str:
        """A directory of the control plane's (the app's source; an image's runtime packages) on this node:
        unpacked once per node from the control plane's tarball, under the directory's own name (its content's
        hash: one directory per content)."""
        what = "the app's source" if kind == "sources" else "the runtime's packages"
        if not sources:
            raise RuntimeError(f"{what} {source_dir} is not on node {self.node_id[:12]}")
        node_dir = _node_dir()
        if node_dir is None:
            raise RuntimeError(f"no private directory on node {self.node_id[:12]} to unpack {what} in")
        cache = node_dir / kind
        target = cache / Path(source_dir).name
        if not target.is_dir():
            blob = await sources[0]
            cache.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".unpack-"))
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
                tar.extractall(tmp, filter="data")
            try:
                os.rename(tmp, target)
            except OSError:  # another container of this node unpacked it meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
        return str(target)

    def _on_output(self, _container_id: str, fd: str, text: str) -> None:
        self.chunks.append((fd, text))
        self.buffered += len(text)
        while self.buffered > OUTPUT_BUFFER_BYTES and len(self.chunks) > 1:
            _, old = self.chunks.pop(0)
            self.buffered -= len(old)
            self.dropped += len(old)
        self.changed.set()

    async def _wait(self) -> None:
        code = await self.container.wait()
        if self.image_hold is not None:
            os.close(self.image_hold)
            self.image_hold = None
        self.reason = self.container.exit_reason()
        if self.exit is None:
            self.exit = code
        self.changed.set()

    async def output(self, timeout: float = OUTPUT_POLL_S) -> dict[str, Any]:
        """The container's output since the last call (waiting up to `timeout` for some), and its exit status
        once it has exited and its output is drained."""
        if not self.chunks and self.exit is None:
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)
        chunks, self.chunks, self.buffered = self.chunks, [], 0
        if self.dropped:
            chunks.insert(0, ("stderr", f"[shoal: {self.dropped} bytes of output dropped: nobody read them]\n"))
            self.dropped = 0
        reason = self.reason
        if self.node_lost:
            reason = f"its Ray node {self.node_id[:12]} ({self.node_ip}) died (its raylet is gone)"
        return {"chunks": chunks, "exit": self.exit, "reason": reason}

    def signal(self, sig: int) -> None:
        c = self.container
        if c is None:
            return
        if sig == signal.SIGKILL:
            c.kill()
        else:
            c.terminate()

    async def expose(self, port: int) -> tuple[str, int, bytes]:
        """A listener on this node's address that leads to the container's `port`: (address, port, key)."""
        if port not in self.forwarders:
            server = await asyncio.get_running_loop().create_server(
                lambda: _Gate(self, port), host=self.node_ip, port=0, reuse_address=True)
            self.forwarders[port] = server.sockets[0].getsockname()[:2]
        host, fport = self.forwarders[port]
        return host, fport, self.web_key


RemoteContainerActor = ray.remote(max_restarts=0, max_task_retries=0)(ContainerActor)


# -- in the control plane ----------------------------------------------------------------------------------------
class RayContainer:
    """The control plane's handle on one container in a Ray actor."""

    cgroup = None  # its cgroups are on its node, out of the control plane's reach

    def __init__(self, backend: RayBackend, actor: Any, container_id: str, info: dict[str, Any],
                 on_output: OutputSink | None) -> None:
        self.backend = backend
        self.actor = actor
        self.container_id = container_id
        self.pid: int = info["pid"]
        self.node_id: str = info["node_id"]
        self.node_ip: str = info["node_ip"]
        self.isolation: str = info.get("isolation", "")
        self.sandboxed = bool(info.get("sandboxed"))
        self._on_output = on_output
        self._returncode: int | None = None
        self._reason: str | None = None
        self._actor_killed = False  # by us (ray.kill), after its container did not exit when told to
        self._exposed: dict[int, asyncio.Future] = {}
        self._done = asyncio.get_running_loop().create_future()
        self._pump = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        try:
            while True:
                try:
                    r = await self.actor.output.remote(OUTPUT_POLL_S)
                except ActorUnavailableError:
                    # The actor's node is unreachable for now; Ray says "died" once the node is declared dead.
                    await asyncio.sleep(0.2)
                    continue
                for fd, text in r["chunks"]:
                    if self._on_output is not None:
                        self._on_output(self.container_id, fd, text)
                if r["exit"] is not None:
                    self._returncode, self._reason = r["exit"], r["reason"]
                    break
        except (ActorDiedError, RayActorError) as exc:
            self._returncode = -signal.SIGKILL
            self._reason = await self.backend.describe_death(self.node_id, exc, killed=self._actor_killed)
        except asyncio.CancelledError:
            self._returncode = -signal.SIGKILL
            raise
        finally:
            self.backend.release(self)
            if not self._done.done():
                self._done.set_result(self._returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    def exit_reason(self) -> str | None:
        return self._reason

    def kill(self) -> None:
        if self._done.done():
            return
        self.actor.signal.remote(signal.SIGKILL)
        # Should the actor not answer (its node is going), it goes the hard way: the container dies with it.
        asyncio.get_running_loop().call_later(KILL_GRACE_S, self.backend.kill_actor, self)

    def terminate(self) -> None:
        if not self._done.done():
            self.actor.signal.remote(signal.SIGTERM)

    async def web_connect(self, port: int) -> socket.socket:
        fut = self._exposed.get(port)
        if fut is None or (fut.done() and fut.exception() is not None):
            fut = self._exposed[port] = asyncio.ensure_future(self.actor.expose.remote(port))
        host, fport, key = await fut
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await loop.sock_connect(sock, (host, fport))
            await loop.sock_sendall(sock, key)
        except BaseException:
            sock.close()
            raise
        return sock


class RayBackend:
    """Containers as Ray actors on the cluster at `address` (`ray.init(address=...)`: "auto", "host:port",
    "ray://…"). `control_ip`: the address containers on other nodes reach this control plane at (default: the
    address Ray uses for this machine)."""

    name = "ray"
    availability = None  # the sandboxes are on the nodes (each actor reports its container's isolation)
    volumes_unsupported = ("containers on the Ray backend cannot mount volumes yet: volumes live on the control "
                           "plane's disk (docs/cluster.md)")

    def __init__(self, address: str | None, state_dir: str | Path, isolation: str | None = None,
                 namespace: str = NAMESPACE) -> None:
        if not ray.is_initialized():
            _check_reachable(address)
            ray.init(address=address or "auto", namespace=namespace, log_to_driver=False,
                     logging_level=logging.WARNING)
        self.address = address
        self.state_dir = os.path.realpath(state_dir)
        self.isolation = (isolation or os.environ.get("SHOAL_ISOLATION") or "auto").strip().lower()
        self.control_ip = os.environ.get("SHOAL_CONTROL_HOST") or ray.util.get_node_ip_address()
        self.forward_ports: dict[int, tuple[str, int]] = {}
        self.strategy = os.environ.get("SHOAL_RAY_SCHEDULING", "SPREAD")
        self.max_containers = int(os.environ["SHOAL_RAY_MAX_CONTAINERS"]) if os.environ.get(
            "SHOAL_RAY_MAX_CONTAINERS") else None
        self._nodes: list[placement.NodeView] = []
        self._nodes_at = 0.0
        self._nodes_lock = asyncio.Lock()
        self._refreshing: asyncio.Task | None = None
        self._live: dict[str, RayContainer] = {}
        self._sources: dict[str, Any] = {}  # source dir -> object ref of its tarball
        # (the control plane's API URL, the node pull credential): where nodes pull OCI images (main.py sets it)
        self.image_registry: tuple[str, str] | None = None
        self._digests: dict[tuple[str, ...], str] = {}  # (OCI image id, *layers) -> the digest nodes pull it by
        self._refresh_nodes_sync()

    # -- the cluster ---------------------------------------------------------------------------------------------
    def _refresh_nodes_sync(self) -> list[placement.NodeView]:
        from ray._private import state

        available = state.available_resources_per_node()
        nodes = []
        for n in ray.nodes():
            node_id = n["NodeID"]
            alive = bool(n.get("Alive"))
            nodes.append(placement.NodeView(node_id, alive, dict(n.get("Resources") or {}),
                                            dict(available.get(node_id, {})) if alive else {},
                                            n.get("NodeManagerAddress", "")))
        self._nodes = nodes
        self._nodes_at = time.monotonic()
        return nodes

    async def nodes(self, fresh: bool = False) -> list[placement.NodeView]:
        if fresh or time.monotonic() - self._nodes_at > NODES_TTL_S:
            async with self._nodes_lock:
                if fresh or time.monotonic() - self._nodes_at > NODES_TTL_S:
                    await asyncio.to_thread(self._refresh_nodes_sync)
        return self._nodes

    def capacity(self) -> int:
        if time.monotonic() - self._nodes_at > NODES_TTL_S and self._refreshing is None:
            with contextlib.suppress(RuntimeError):  # refreshed in the background: the next call sees it
                self._refreshing = asyncio.get_running_loop().create_task(self.nodes())
                self._refreshing.add_done_callback(lambda _t: setattr(self, "_refreshing", None))
        if self.max_containers is not None:
            return self.max_containers
        return max(1, placement.capacity(self._nodes))

    async def describe_death(self, node_id: str, exc: BaseException, killed: bool = False) -> str:
        nodes = await self.nodes(fresh=True)
        node = next((n for n in nodes if n.node_id == node_id), None)
        where = f"{node_id[:12]}" + (f" ({node.address})" if node and node.address else "")
        if node is None or not node.alive:
            return f"its Ray node {where} died"
        if killed:
            return f"killed: its Ray actor on node {where} did not answer, so it was killed"
        return f"its Ray actor on node {where} died ({_first_line(exc)})"

    # -- starting ------------------------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {"state_dir": self.state_dir, "control_ip": self.control_ip,
                "forward_ports": dict(self.forward_ports),
                "env": {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
                | ({"SHOAL_ISOLATION": self.isolation} if self.isolation != "auto" else {})}

    async def _source_ref(self, source_dir: str | None) -> list[Any]:
        """[an object ref of the directory as a tarball] (made once; nodes fetch it only if they lack the
        directory), or [] when there is none."""
        if not source_dir or not os.path.isdir(source_dir):
            return []
        ref = self._sources.get(source_dir)
        if ref is None:
            data = await asyncio.to_thread(_tar_of, source_dir)  # an image's runtime packages: tens of MB
            ref = self._sources.setdefault(source_dir, ray.put(data))
        return [ref]

    def _reachable(self, url: str) -> str:
        """A control plane listening on every address: nodes and containers use the address Ray knows."""
        with contextlib.suppress(ValueError):
            u = urlsplit(url)
            if u.hostname in _UNSPECIFIED and u.port:
                return url.replace(u.netloc, f"{self.control_ip}:{u.port}", 1)
        return url

    def _container_env(self, spec: ContainerSpec) -> dict[str, str]:
        env = dict(spec.env)
        if env.get("SHOAL_SERVER_URL"):
            env["SHOAL_SERVER_URL"] = self._reachable(env["SHOAL_SERVER_URL"])
        return env

    async def _image_pull(self, spec: ContainerSpec) -> dict[str, Any] | None:
        """For a container of an OCI image: where its node pulls the image (the control plane's registry, the
        image's manifest digest, the node pull credential) and its runtime packages as a tarball."""
        image = spec.image
        if image is None or image.layers is None or self.image_registry is None:
            return None
        from ..oci.store import LayerStore
        from .ray_images import served_digest

        key = (image.image_id, *image.layers)  # a forced rebuild keeps the id, not the layers
        digest = self._digests.get(key)
        if digest is None:
            store = LayerStore(Path(self.state_dir) / "oci")
            digest = self._digests[key] = await asyncio.to_thread(served_digest, store, image.image_id,
                                                                  image.layers)
        url, credential = self.image_registry
        return {"url": self._reachable(url), "credential": credential, "digest": digest,
                "runtime": await self._source_ref(image.runtime_dir)}

    async def start(self, spec: ContainerSpec, on_output: OutputSink | None) -> RayContainer:
        alternatives = placement.alternatives(spec.definition.options)
        nodes = await self.nodes(fresh=True)
        chosen = placement.choose(alternatives, nodes)
        if chosen is None:
            raise Unschedulable(placement.waiting_reason(alternatives, nodes))
        spec = replace(spec, env=self._container_env(spec))
        sources, image_pull = await self._source_ref(spec.source_dir), await self._image_pull(spec)
        actor = RemoteContainerActor.options(
            **chosen.actor_options(), scheduling_strategy=self.strategy).remote(self._settings())
        started = actor.start.remote(spec, sources, image_pull)
        try:
            if image_pull is not None:
                # Its start pulls the image first (minutes, for a large one): only the placement is timed.
                await asyncio.wait_for(asyncio.shield(_as_future(actor.placed.remote())), PLACE_TIMEOUT_S)
                info = await _as_future(started)
            else:
                info = await asyncio.wait_for(asyncio.shield(_as_future(started)), PLACE_TIMEOUT_S)
        except asyncio.TimeoutError:
            ray.kill(actor, no_restart=True)
            raise Unschedulable(f"waiting for room: Ray did not place {chosen.describe()} within "
                                f"{PLACE_TIMEOUT_S:g}s") from None
        except RayTaskError as exc:  # the start itself failed on the node (e.g. the image is not there)
            ray.kill(actor, no_restart=True)
            cause = getattr(exc, "cause", None)
            raise RuntimeError(str(cause) if cause is not None else str(exc).splitlines()[0]) from None
        except ActorDiedError as exc:
            # Its node died (or was removed) under it: not the function's failure, so not a failed start that
            # counts toward failing the queue; the dispatcher tries again, on the nodes that are left.
            ray.kill(actor, no_restart=True)
            raise Unschedulable("the container's Ray actor died while starting (its node went?): "
                                f"{_first_line(exc)}") from None
        except BaseException:
            ray.kill(actor, no_restart=True)
            raise
        handle = RayContainer(self, actor, spec.container_id, info, on_output)
        handle.placement = chosen  # type: ignore[attr-defined]
        self._live[spec.container_id] = handle
        return handle

    def release(self, handle: RayContainer) -> None:
        """The container has exited (or its actor died): the actor goes, and its resources with it."""
        self._live.pop(handle.container_id, None)
        self.kill_actor(handle)

    def kill_actor(self, handle: RayContainer) -> None:
        if not handle._done.done():
            handle._actor_killed = True
        with contextlib.suppress(Exception):
            ray.kill(handle.actor, no_restart=True)

    def shutdown(self) -> None:
        for handle in list(self._live.values()):
            self.kill_actor(handle)
        self._live.clear()


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail at once, saying so, when nothing listens at a `host:port` address (`ray.init` would retry for
    minutes). A loopback host is also tried as this machine's address, as Ray itself does."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    hosts = [host]
    if host in _LOOPBACK:
        from ray._private.services import get_node_ip_address

        hosts.append(get_node_ip_address())
    errors = []
    for h in hosts:
        try:
            socket.create_connection((h, int(port)), timeout=timeout).close()
            return
        except (OSError, ValueError) as exc:
            errors.append(f"{h}:{port}: {exc}")
    raise ConnectionError(f"no Ray cluster answers at {address} ({'; '.join(errors)})")


def _tar_of(directory: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(directory, arcname=".")
    return buf.getvalue()


def _as_future(ref: Any) -> asyncio.Future:
    return asyncio.wrap_future(ref.future())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _process_tree(root: int) -> list[int]:
    """`root` and its descendants."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        with contextlib.suppress(OSError):  # gone meanwhile
            todo.extend(children(pid))
    return out


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed process waiting to be reaped runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
