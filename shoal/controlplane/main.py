"""Start the control plane: store, dispatcher, container stream, HTTP API; publish its address.

One control plane per state directory, enforced with a lock file. Its URL and pid go to
`SHOAL_HOME/server.json`, its API token to `SHOAL_HOME/token` (mode 0600). With `--replica` it is one of several
sharing a PostgreSQL schema and the state directory (controlplane/replicas.py); its own files go to
`SHOAL_HOME/replicas/<replica id>/`.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from .._spec.config import env_flag, home
from ..backends.base import Backend
from ..backends.local import LocalBackend
from .api import Api
from .build import build_core
from .core.containers import ControlPlaneAddress
from .core.model import new_id
from .core.sandboxes import Sandboxes
from .credentials import pull_credential
from .definitions import Definitions
from .deploy import Deployments
from .image_gc import ImageCatalog
from .images import ImageBuilder
from .logfmt import configure_logging
from .objects import Objects
from .oci_serve import ImageRegistry
from .proxy import Proxy
from .proxy_tokens import ProxyTokens
from .sandbox_tunnels import Tunnels
from .sandboxes import SandboxRoutes
from .store import StoreError, open_store

log = logging.getLogger("shoal.controlplane")
DEFAULT_WEB_PORT = 8700


def load_token(state_dir: Path) -> str:
    path = state_dir / "token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def control_socket_path(state_dir: Path) -> Path:
    """Unix socket for container runtimes; falls back to /tmp when the state path is too long for AF_UNIX."""
    path = state_dir / "control.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"shoal-{os.getuid()}-{digest}.sock"


class AlreadyRunningError(Exception):
    pass


def web_port_for(state_dir: Path) -> int | None:
    """The ingress proxy's port: SHOAL_WEB_PORT (0: any free one), else the one this state directory used
    last (web URLs stay the same across restarts); None: DEFAULT_WEB_PORT if free, else any."""
    if "SHOAL_WEB_PORT" in os.environ:
        return int(os.environ["SHOAL_WEB_PORT"])
    try:
        return int((state_dir / "web_port").read_text())
    except (OSError, ValueError):
        return None


async def start_proxy(proxy: Proxy, port: int | None) -> int:
    if port is not None:
        return await proxy.start(port)
    try:
        return await proxy.start(DEFAULT_WEB_PORT)
    except OSError:  # taken (another control plane, another program): any free port
        return await proxy.start(0)


def take_lock(state_dir: Path) -> int:
    fd = os.open(state_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise AlreadyRunningError(f"a shoal control plane already runs for {state_dir}") from exc
    return fd


def make_backend(name: str, state_dir: Path, ray_address: str | None = None) -> Backend:
    """The container backend: "local" (this machine) or "ray" (actors on the Ray cluster at `ray_address`)."""
    name = (name or "local").strip().lower()
    if name == "local":
        return LocalBackend(state_dir=state_dir)
    if name == "ray":
        try:
            from ..backends.ray import RayBackend
        except ImportError as exc:
            raise BackendError(f"the Ray backend needs ray (pip install 'shoal[ray]'): {exc}") from exc
        try:
            return RayBackend(ray_address, state_dir)
        except Exception as exc:  # noqa: BLE001 - no cluster there, a wrong token, …: say which
            raise BackendError(f"cannot use the Ray cluster at {ray_address or 'auto'}: "
                               f"{type(exc).__name__}: {exc}") from exc
    raise BackendError(f"unknown backend {name!r}: 'local' or 'ray'")


class BackendError(Exception):
    pass


async def serve(host: str, port: int, state_dir: Path, replica: bool = False, backend: str = "local",
                ray_address: str | None = None) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    # A replica (one of several control planes on one PostgreSQL schema: controlplane/replicas.py) shares the state
    # directory's token, sources, images and volumes with the others, and keeps what is its own (lock, container
    # socket, address, web port) under replicas/<id>/.
    replica_id = (os.environ.get("SHOAL_REPLICA_ID") or new_id("cp")) if replica else None
    run_dir = state_dir / "replicas" / replica_id if replica_id else state_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = take_lock(run_dir)
    token = load_token(state_dir)
    store = open_store(state_dir, replica=replica)
    await store.open()
    sock_path = control_socket_path(run_dir)
    sock_path.unlink(missing_ok=True)
    backend = make_backend(backend, state_dir, ray_address)
    # The sockets are bound first: their addresses go to every container the core starts.
    http_sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                     reuse_port=False)
    url = f"http://{host}:{http_sock.getsockname()[1]}"
    control_address, tcp_sock = f"unix:{sock_path}", None
    if backend.name != "local":
        # Containers on other machines: their runtimes connect over TCP and say who they are with their
        # container token (the hello frame), as on the unix socket.
        bind = os.environ.get("SHOAL_CONTROL_BIND") or backend.control_ip
        tcp_sock = socket.create_server((bind, int(os.environ.get("SHOAL_CONTROL_PORT", "0"))),
                                        family=socket.AF_INET6 if ":" in bind else socket.AF_INET)
        tcp_port = tcp_sock.getsockname()[1]
        host_part = backend.control_ip
        control_address = f"tcp://[{host_part}]:{tcp_port}" if ":" in host_part else f"tcp://{host_part}:{tcp_port}"
    core = build_core(store, backend, state_dir, ControlPlaneAddress(control_address, url),
                      replica_id=replica_id,
                      warm_size=0 if backend.name != "local" else None)  # warm sources live on this disk
    replicas = core.replicas
    control_tcp = None
    if tcp_sock is not None:
        control_tcp = await asyncio.start_server(core.runtime.handle_runtime, sock=tcp_sock, limit=2**26)
    stop = asyncio.Event()
    proxy_tokens = ProxyTokens(store)
    proxy = Proxy(core.router, core.registry.pools, core.web, core.variants, proxy_tokens.lookup,
                  core.operations.health_failed)
    definitions = Definitions(state_dir, ImageBuilder(state_dir), core.secrets, core.volumes)
    deployments = Deployments(core, definitions)
    api = Api(core, deployments, definitions, proxy, token, on_shutdown=stop.set)
    # handler_cancellation: a client that disconnects ends its long-poll at once, so a dead client's app
    # session is noticed in milliseconds, not when the poll would have timed out.
    http_app = api.app()
    ImageRegistry(state_dir / "oci", api.gate).add_routes(http_app.router)  # Ray nodes pull images there
    if backend.name == "ray":
        backend.image_registry = (url, pull_credential(token.encode()))  # type: ignore[attr-defined]
    objects = Objects(store, shared=replica)
    objects.add_routes(http_app.router)
    if replicas is not None:
        http_app.middlewares.append(replicas.middleware)  # after auth: requests for other replicas' apps go there
    core.secrets.add_routes(http_app.router)
    proxy_tokens.add_routes(http_app.router)
    core.volumes.add_routes(http_app.router)
    images = ImageCatalog(state_dir, store, core.registry, definitions)
    images.add_routes(http_app.router)
    objects.on_delete.append(core.volumes.on_deleted)
    sandboxes = Sandboxes(store, backend, core.registry, core.secrets, core.volumes, definitions.images, state_dir)
    images.busy_sources.append(lambda: sandboxes.images_in_use(images.grace))
    tunnels = Tunnels(core.router)
    sandboxes.on_start.append(tunnels.opened)
    sandboxes.on_end.append(tunnels.closed)
    sandbox_routes = SandboxRoutes(sandboxes, core.registry, tunnels)
    sandbox_routes.add_routes(http_app.router)
    api.gate.sandbox_app = sandbox_routes.app_of
    api.more_containers = sandboxes.container_rows
    api.more_container = sandboxes.container_info
    runner = web.AppRunner(http_app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    site = web.SockSite(runner, http_sock)
    await site.start()
    web_port = await start_proxy(proxy, web_port_for(run_dir))
    (run_dir / "web_port").write_text(str(web_port))
    backend.forward_ports[web_port] = ("127.0.0.1", web_port)  # web URLs work inside containers
    proxy_tasks = [asyncio.create_task(proxy.housekeeping()), asyncio.create_task(proxy.health_checks())]
    control = await asyncio.start_unix_server(core.runtime.handle_runtime, str(sock_path), limit=2**26)
    os.chmod(sock_path, 0o600)
    if replicas is None:
        await core.volumes.recover()  # before any container starts: commits what the last run left
        await core.recovery.recover()
        await sandboxes.recover()  # before any sandbox starts: those of the last run died with it
    else:
        if not await replicas.others_alive():  # the others' containers may be writing to volumes
            await core.volumes.recover()

        def taken_over(app_id: str) -> None:
            deployments.reload_version(app_id)
            for function_id in core.registry.apps[app_id].functions.values():
                core.scheduler.forget(function_id)  # read again from the store

        replicas.on_takeover.append(taken_over)
        # The address the other replicas forward to: SHOAL_REPLICA_URL when this one listens on 0.0.0.0 or
        # behind a name.
        await replicas.start(os.environ.get("SHOAL_REPLICA_URL", "").rstrip("/") or url,
                             f"http://{host}:{web_port}")
    housekeeping = asyncio.create_task(core.housekeeping())
    sandbox_housekeeping = asyncio.create_task(sandboxes.housekeeping())
    objects_housekeeping = asyncio.create_task(objects.housekeeping())
    images_housekeeping = asyncio.create_task(images.housekeeping())  # its own pace: a pass may walk the disk
    scheduling = asyncio.create_task(core.scheduler.run())
    info = {"url": url, "pid": os.getpid(), "state_dir": str(state_dir), "web_port": web_port,
            "backend": backend.name}
    if replica_id:
        info["replica_id"] = replica_id
    tmp = run_dir / f".server.json.{os.getpid()}"
    tmp.write_text(json.dumps(info))
    tmp.replace(run_dir / "server.json")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    role = f"replica {replica_id} " if replica_id else ""
    print(f"shoal control plane {role}listening on {url} (state in {state_dir})", flush=True)
    await stop.wait()
    print("shoal control plane stopping", flush=True)
    housekeeping.cancel()
    sandbox_housekeeping.cancel()
    for task in proxy_tasks:
        task.cancel()
    proxy.close()
    objects_housekeeping.cancel()
    images_housekeeping.cancel()
    scheduling.cancel()
    core.shutdown()
    sandboxes.shutdown()
    if replicas is not None:
        await store.all_flushed()  # everything it did is committed before another replica takes over
        await replicas.close()
    control.close()
    if control_tcp is not None:
        control_tcp.close()
    backend.shutdown()
    await runner.cleanup()
    await store.close()
    (run_dir / "server.json").unlink(missing_ok=True)
    sock_path.unlink(missing_ok=True)
    os.close(lock_fd)


def run(host: str = "127.0.0.1", port: int = 0, state_dir: Path | None = None, replica: bool = False,
        backend: str | None = None, ray_address: str | None = None) -> int:
    configure_logging()  # SHOAL_LOGLEVEL, SHOAL_LOG_FORMAT=json (controlplane/logfmt.py)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(host, port, state_dir or home(), replica,
                     backend or os.environ.get("SHOAL_BACKEND") or "local",
                     ray_address or os.environ.get("SHOAL_RAY_ADDRESS") or None))
    except (AlreadyRunningError, StoreError, ValueError, BackendError) as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return 1
    return 0


def cli_main() -> None:
    parser = argparse.ArgumentParser(prog="python -m shoal.controlplane")
    parser.add_argument("--host", default=os.environ.get("SHOAL_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SHOAL_PORT", "0")))
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--replica", action="store_true", default=env_flag("SHOAL_REPLICA"),
                        help="one of several control planes sharing SHOAL_DATABASE_URL's schema (and the state "
                             "directory); SHOAL_REPLICA=1 says the same")
    parser.add_argument("--backend", choices=("local", "ray"), default=os.environ.get("SHOAL_BACKEND") or "local",
                        help="where containers run (default: SHOAL_BACKEND, else local)")
    parser.add_argument("--ray-address", default=os.environ.get("SHOAL_RAY_ADDRESS") or None,
                        help="the Ray cluster for --backend ray (default: SHOAL_RAY_ADDRESS, else 'auto')")
    args = parser.parse_args()
    sys.exit(run(args.host, args.port, args.state_dir, args.replica, args.backend, args.ray_address))
