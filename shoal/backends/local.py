"""Local backend: each container is a process tree on this machine running `python -m shoal.runtime`.

On Linux, where the kernel allows it, each container is sandboxed (its own mount, pid, ipc, uts, user and network
namespaces; see docs/sandbox.md, shoal/backends/sandbox.py and shoal/runtime/sandbox_init.py). Elsewhere, or
with `SHOAL_ISOLATION=process`, containers are plain processes and the backend says so once. Either way, when the
host lets us, each container gets a cgroup with its `cpu=`/`memory=` limits, and an OOM kill is reported as one.
GPUs of the machine (`nvidia-smi -L`) are handed out exclusively through `CUDA_VISIBLE_DEVICES`; a container
whose `gpu=` cannot be met now raises `Unschedulable` with the reason, and the control plane tries again later.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import glob
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from .._spec.config import home
from . import egress
from . import gpus as gpu_mod
from .base import ContainerSpec, OutputSink, RawSink, Unschedulable
from .netns import open_netns, socket_in
from .netpool import NetnsPool
from .sandbox import (
    ID_COUNT,
    ISOLATION_ENV,
    OCI_BOOT,
    SETUP_FAILED,
    Availability,
    Cgroups,
    ContainerCgroup,
    Forwarding,
    Limits,
    control_plane_ports,
    host_upper,
    id_base,
    image_layers,
    image_root_view,
    interpreter_paths,
    launcher_argv,
    minimal_paths,
    newroot_dir,
    probe,
    rewrite_server_url,
    shares_from_env,
    source_binds,
    under,
    wanted_isolation,
)

log = logging.getLogger("shoal.backend")

# The only variables a container inherits from the control plane's environment; everything else it gets
# comes from its function's secrets and env.
INHERITED_ENV = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "TERM"}
_said_process_isolation = False


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by {name}"
    return f"exited with code {returncode}"


HOST_WATCH_S = 1.0  # how often running containers' rules are checked against the host's addresses


class LocalContainer:
    isolation: str | None = None  # its backend's (LocalBackend.isolation)
    node_id: str | None = None  # this machine

    def __init__(self, proc: asyncio.subprocess.Process, pumps: list[asyncio.Task], *, sandboxed: bool = False,
                 cgroup: ContainerCgroup | None = None, forwarding: Forwarding | None = None,
                 release: list = (), setup_error: list[str] | None = None) -> None:
        self.proc = proc
        self.stdin = proc.stdin  # a `ContainerSpec.stdin` pipe, else None
        self._pumps = pumps
        self.sandboxed = sandboxed
        self.cgroup = cgroup
        self.forwarding = forwarding
        self._release = list(release)  # callbacks once the process is gone (GPUs)
        self._setup_error = setup_error if setup_error is not None else []
        self._returncode: int | None = None
        self._oom_kills = 0
        self._netns: int | None = None  # the container's network namespace, opened on the first web request
        # With outbound network: its allow-list and the host addresses its rules block (late_host_rules).
        self.allowlist: list[egress.Network] | None = None
        self.hosts_blocked: frozenset[egress.Network] = frozenset()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def web_socket(self) -> socket.socket:
        """An unconnected socket from which 127.0.0.1:PORT is the container's own loopback: made inside its
        network namespace when sandboxed (the supervisor's), else a plain socket (containers share the host's)."""
        if not self.sandboxed:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        if self._netns is None:
            self._netns = open_netns(self.proc.pid)
        return socket_in(self._netns)

    async def web_connect(self, port: int) -> socket.socket:
        sock = self.web_socket()
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def wait(self) -> int:
        code = await self.proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._returncode is None:
            self._returncode = code
            await self._cleanup()
        return code

    async def _cleanup(self) -> None:
        if self._netns is not None:
            os.close(self._netns)
            self._netns = None
        if self.forwarding is not None:
            self.forwarding.close()
        for release in self._release:
            release()
        if self.cgroup is not None:
            self._oom_kills = self.cgroup.oom_kills()
            await self.cgroup.remove()

    def exit_reason(self) -> str | None:
        """Why the container ended, when the backend knows better than its exit status: an OOM kill (from the
        cgroup's own counter), or a sandbox that could not be set up. None: describe the exit status."""
        code = self._returncode
        if code is None:
            return None
        if self._oom_kills:
            limit = self.cgroup.limits.memory_limit_mib if self.cgroup else None
            where = f"at its memory limit of {limit} MiB" if limit else "when the machine ran out of memory"
            return f"out of memory: OOM-killed {where} ({_describe(code)})"
        if self.sandboxed and code == SETUP_FAILED and self._setup_error:
            return f"sandbox setup failed: {self._setup_error[-1]}"
        if self.cgroup is not None and self.cgroup.memory_dir is not None:
            return _describe(code)  # the cgroup saw no OOM kill: no need to guess one
        return None

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)  # the whole process group: user code may have started children
            except ProcessLookupError:
                pass


class LocalBackend:
    name = "local"
    control_ip = "127.0.0.1"  # containers reach the control plane over its unix socket on this machine
    volumes_unsupported: str | None = None

    def __init__(self, python: str | None = None, max_containers: int | None = None,
                 isolation: str | None = None, state_dir: str | Path | None = None,
                 known: dict | None = None, netns_pool: int | None = None) -> None:
        """`known`: what an earlier backend on this machine found, to skip finding it again (the Ray backend
        makes one backend per container): {"availability": {...} (the isolation probe's result), "paths":
        {interpreter: paths a container of it must see}}. `netns_pool`: network namespaces with pasta kept ready
        (netpool.py; default `SHOAL_NETNS_POOL`, 2)."""
        # The resolved interpreter, never a shim on PATH: a pyenv shim costs ~130 ms per start.
        self.python = python or sys.executable
        default_cap = max(4, 4 * (os.cpu_count() or 1))
        self.max_containers = max_containers or int(os.environ.get("SHOAL_LOCAL_MAX_CONTAINERS", default_cap))
        self.state_dir = os.path.realpath(state_dir or home())
        self.shares = shares_from_env()
        self.forward_ports: dict[int, tuple[str, int]] = {}  # more host ports to reach from inside containers
        self._paths: dict[str, list[str]] = dict((known or {}).get("paths") or {})
        self._paths_locks: dict[str, asyncio.Lock] = {}
        avail = (known or {}).get("availability")
        self.availability = Availability(**avail) if avail else self._choose_isolation(isolation)
        self.isolation = self.availability.isolation
        self.cgroups = Cgroups()
        if not self.cgroups.available:
            log.warning("cgroup limits unavailable (%s): cpu= and memory= are not enforced", self.cgroups.reason)
        else:
            self.cgroups.collect_garbage()
        self._live_cgroups: dict[str, ContainerCgroup] = {}
        atexit.register(self._remove_cgroups_at_exit)
        found, note = gpu_mod.detect()
        self.gpus = gpu_mod.GpuAllocator(found, note, gpu_mod.fallback_setting(os.environ))
        self._newroot = newroot_dir()
        self._said_cpu: set[str] = set()  # functions told once that they asked for more cores than there are
        self._networked: set[LocalContainer] = set()  # running containers with outbound network
        self._host_watch: asyncio.Task | None = None
        # Outbound network of sandboxed containers (egress.py): pasta, and what the installation allows anyway.
        self.allowed_cidrs = egress.installation_allowed()
        self.pasta = egress.find_pasta() if self.isolation == "sandbox" and egress.wanted() else None
        self._resolv = egress.resolv_conf() if self.pasta else ""
        pool_size = _pool_setting() if netns_pool is None else netns_pool
        self.netpool = (NetnsPool([self.pasta, *egress.PASTA_ARGS], pool_size)
                        if self.pasta and self.availability.mode == "root" and pool_size > 0 else None)
        if self.netpool is not None:
            self.netpool.prime()

    # -- isolation -------------------------------------------------------------------------------------------
    def _exclude(self) -> list[str]:
        return [self.state_dir, os.path.realpath(home())]

    def _choose_isolation(self, requested: str | None) -> Availability:
        global _said_process_isolation
        wanted = wanted_isolation(requested)
        if wanted == "process":
            avail = Availability("process", reason=f"{ISOLATION_ENV}=process")
        else:
            # The probe needs only the interpreter's own trees; what else it imports (its sys.path, bytecode
            # warmed up) is worked out in the background meanwhile.
            if self.python == sys.executable:
                prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
            else:
                prefixes = [os.path.dirname(os.path.dirname(self.python))]
            prefixes.append(os.path.dirname(os.path.dirname(os.path.realpath(self.python))))
            if self.python not in self._paths:
                warm = threading.Thread(target=self._warm_paths, name="shoal-sandbox-paths", daemon=True)
                warm.start()
            avail = probe(self.python, minimal_paths(prefixes, self._exclude()))
            if avail.isolation != "sandbox" and wanted == "sandbox":
                raise RuntimeError(f"{ISOLATION_ENV}=sandbox, but containers cannot be sandboxed here: "
                                   f"{avail.reason}")
        if avail.isolation == "process" and not _said_process_isolation:
            _said_process_isolation = True
            msg = f"isolation=process: containers are not sandboxed ({avail.reason})"
            log.warning(msg)  # once per control plane: the server log, or stderr where logging is not set up
        return avail

    def _warm_paths(self) -> None:
        self._paths.setdefault(self.python, interpreter_paths(self.python, self._exclude()))

    async def _interpreter_paths(self, python: str, image_root: str | None = None) -> list[str]:
        if python in self._paths:
            return self._paths[python]
        lock = self._paths_locks.setdefault(python, asyncio.Lock())
        async with lock:
            if python not in self._paths:
                # An image's interpreter: only its own trees (the image, the state dir's images) are exposed.
                allowed = None
                if python != self.python and image_root:
                    allowed = [image_root, os.path.dirname(os.path.realpath(image_root))]
                mode = self.availability.mode if self.isolation == "sandbox" else None
                self._paths[python] = await asyncio.to_thread(interpreter_paths, python, self._exclude(), allowed,
                                                              mode)
        return self._paths[python]

    def capacity(self) -> int:
        return self.max_containers

    def shutdown(self) -> None:
        """The pool's namespaces go; the control plane killed its containers, their cgroups go as they exit (and
        at interpreter exit, `_remove_cgroups_at_exit`)."""
        if self.netpool is not None:
            self.netpool.close()

    def _remove_cgroups_at_exit(self) -> None:
        """The control plane is exiting (its containers were killed): leave no cgroup behind."""
        for cgroup in list(self._live_cgroups.values()):
            cgroup.remove_now()

    # -- starting --------------------------------------------------------------------------------------------
    async def start(self, spec: ContainerSpec, on_output: OutputSink | None) -> LocalContainer:
        container_id = spec.container_id
        options = spec.definition.options
        full_env = self._env(spec)
        release = []
        request = options.gpu
        placed = self.gpus.place(container_id, list(request)) if request else None
        if placed is not None and placed.fail:
            raise RuntimeError(placed.fail)  # never schedulable here: the start fails, and so do its calls
        if placed is not None and placed.wait:
            raise Unschedulable(placed.wait)
        if placed is not None and placed.cpu and on_output is not None:
            on_output(container_id, "system", f"no GPU here matches gpu={','.join(request)!r}: running on the CPU "
                                              f"({gpu_mod.FALLBACK_ENV}=cpu)\n")
        if placed is not None and placed.ids:
            release.append(lambda: self.gpus.release(container_id))
            spec.gpus = [str(i) for i in placed.ids]
            full_env["CUDA_VISIBLE_DEVICES"] = full_env["NVIDIA_VISIBLE_DEVICES"] = ",".join(spec.gpus)
            full_env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # indices as nvidia-smi numbers them
        short = cpu_shortfall(options.cpu, os.cpu_count() or 1)
        said = f"{spec.definition.variant_of or spec.function_id} {short}"  # once per function (its variants too)
        if short and on_output is not None and said not in self._said_cpu:
            self._said_cpu.add(said)
            on_output(container_id, "system", short + "\n")
        cgroup = None
        try:
            if self.cgroups.available:
                try:
                    cgroup = self.cgroups.create(container_id, Limits.from_options(options))
                    self._live_cgroups[container_id] = cgroup
                    release.append(lambda: self._live_cgroups.pop(container_id, None))
                except OSError as exc:
                    log.warning("container %s runs without cgroup limits: %s", container_id, exc)
            if self.isolation == "sandbox":
                return await self._start_sandboxed(spec, full_env, on_output, cgroup, release)
            return await self._start_process(spec, full_env, on_output, cgroup, release)
        except BaseException:
            for r in release:
                r()
            if cgroup is not None:
                await cgroup.remove()
            raise

    def _env(self, spec: ContainerSpec) -> dict[str, str]:
        on_layers = spec.image is not None and spec.image.layers is not None  # an OCI image: its own env only
        full_env = {k: v for k, v in os.environ.items()
                    if not on_layers and (k in INHERITED_ENV or k.startswith("LC_"))}
        if spec.image is not None:
            full_env.update(spec.image.env)  # the image's PATH, LD_LIBRARY_PATH, PYTHONPATH and ENV steps
        full_env.update(spec.env)
        if spec.idle:
            full_env.pop("SHOAL_CONTROL", None)  # nothing in it talks to the control plane's socket
        full_env["SHOAL_IMAGE_ID"] = spec.image.image_id if spec.image else "im-host"
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["SHOAL_HOME"] = str(home())
        return full_env

    async def _start_process(self, spec: ContainerSpec, full_env: dict[str, str], on_output: OutputSink | None,
                             cgroup: ContainerCgroup | None, release: list) -> LocalContainer:
        if spec.volumes:
            raise RuntimeError(f"a volume is mounted at {spec.volumes[0][0]}, which needs the sandbox; containers "
                               f"here are plain processes ({self.availability.reason})")
        if _network_limited(spec):
            raise RuntimeError(f"block_network and outbound_cidr_allowlist need the sandbox; containers here are "
                               f"plain processes ({self.availability.reason})")
        if spec.image is not None and spec.image.layers is not None:
            raise RuntimeError(f"image {spec.image.image_id} is an OCI image (a root filesystem of its own), which "
                               f"needs the sandbox; containers here are plain processes ({self.availability.reason})")
        source_dir = spec.source_dir
        if source_dir:
            full_env["PYTHONPATH"] = source_dir + os.pathsep + full_env.get("PYTHONPATH", "")
        python = spec.image.python if spec.image else self.python
        cwd = source_dir or None
        if spec.image is not None and spec.image.workdir and spec.image.root:
            # Without a mount namespace the image's workdir is its copy under the image's files/.
            workdir = os.path.join(spec.image.root, "files", spec.image.workdir.lstrip("/"))
            cwd = workdir if os.path.isdir(workdir) else cwd
        full_env["SHOAL_T_EXEC"] = repr(time.time())  # no sandbox to build: the interpreter starts now
        proc = await asyncio.create_subprocess_exec(
            *_runtime_argv(python, spec),
            stdin=_stdin(spec), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=full_env, cwd=cwd, start_new_session=True,
        )
        # The runtime has not allocated much yet; children follow it in.
        if cgroup is not None and not await self._join_cgroup(spec.container_id, cgroup, proc.pid):
            log.warning("container %s runs without cgroup limits", spec.container_id)
            await cgroup.remove()
            cgroup = None
        pumps = [
            asyncio.create_task(_pump(proc.stdout, spec.container_id, "stdout", on_output, spec.raw_output)),
            asyncio.create_task(_pump(proc.stderr, spec.container_id, "stderr", on_output, spec.raw_output)),
        ]
        return LocalContainer(proc, pumps, cgroup=cgroup, release=release)

    async def _start_sandboxed(self, spec: ContainerSpec, env: dict[str, str], on_output: OutputSink | None,
                               cgroup: ContainerCgroup | None, release: list) -> LocalContainer:
        image = spec.image
        python = image.python if image else self.python
        _runtime_argv(python, spec)  # (what cannot run is refused before anything is set up)
        devices = sorted(glob.glob("/dev/nvidia*")) if spec.gpus else []
        if image is not None and image.layers is not None:
            view = image_root_view(spec, env, self.shares, self._exclude())
            if spec.rootfs_dir:
                view["rootfs"].update(host_upper(spec.rootfs_dir))
        else:
            ro = list(await self._interpreter_paths(python, image.root if image else None))
            if image is not None and image.root:
                ro.append(os.path.realpath(image.root))
            image_binds, overlays = image_layers(image.root if image else None)
            taken = {"/root/" + p.split("/")[2] for p in ro if under(p, "/root") and p != "/root"}
            binds = image_binds + source_binds(spec.source_dir, taken) + [list(b) for b in spec.binds]
            mask = sorted({d for d in self._exclude() if any(under(d, p) for p in ro + self.shares)})
            view = {"ro": ro, "rw": self.shares, "binds": binds, "overlays": overlays, "mask": mask}
            env["HOME"] = "/root"
            env["USER"] = env["LOGNAME"] = "root"
            env["TMPDIR"] = "/tmp"
            env["PYTHONPATH"] = "/root" + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        blocked = _blocks_network(spec)
        if blocked:
            forwards: dict[int, tuple[str, int]] = {}  # not even the control plane's URL: only its channel
        else:
            forwards = {**self.forward_ports, **control_plane_ports(env)}
            rewrite_server_url(env, forwards)
        net = None
        if self.pasta and not blocked:
            allow = None
            if spec.outbound_cidr_allowlist is not None:
                allow = egress.parse_cidrs(spec.outbound_cidr_allowlist, "outbound_cidr_allowlist")
            hosts = egress.host_addresses()
            net = egress.net_config(self.pasta, allow, self.allowed_cidrs, hosts)
            pooled = self.netpool.take() if self.netpool is not None else None
            if pooled is not None:
                release.append(pooled.release)
                net["netns_fd"] = pooled.fd
        control = env.get("SHOAL_CONTROL", "")

        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfg = {
            "mode": self.availability.mode, "uid": id_base(), "gid": id_base(), "ids": ID_COUNT,
            "newroot": self._newroot, "hostname": spec.container_id[:63],
            **view, "devices": devices,
            "volumes": [list(v) for v in spec.volumes], "net": net, "resolv": self._resolv if net else "",
            "wait_go": cgroup is not None, "listen": sorted(forwards), "chan_fd": child_end.fileno(),
            "cgroup_dirs": cgroup.dirs if cgroup else [], "cgroup_homes": cgroup.homes if cgroup else [],
            "control": control[5:] if control.startswith("unix:") else None,
            "control_tcp": list(tcp_address(control)) if control.startswith("tcp://") else None,
            "argv": _runtime_argv(python, spec),
            "cwd": (image.workdir if image is not None and image.workdir else "/root"),
        }
        if os.environ.get("SHOAL_SANDBOX_TRACE"):
            cfg["trace"] = time.perf_counter()
        forwarding = Forwarding(forwards)
        try:
            proc = await asyncio.create_subprocess_exec(
                *launcher_argv(self.python, cfg),
                stdin=_stdin(spec), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=env, cwd="/", start_new_session=True,
                pass_fds=(child_end.fileno(), *([net["netns_fd"]] if net and "netns_fd" in net else [])),
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        if cgroup is not None:
            # While the supervisor's interpreter starts: it forks the container's init only after this.
            joined = await self._join_cgroup(spec.container_id, cgroup, proc.pid)
            parent_end.send(b"G" if joined else b"X")
        forwarding.start(parent_end)
        setup_error: list[str] = []

        def watch(container_id: str, fd: str, text: str) -> None:
            if fd == "stderr" and "shoal sandbox: " in text:
                setup_error.append(text.split("shoal sandbox: ", 1)[1].strip().splitlines()[0])
            if on_output is not None:
                on_output(container_id, fd, text)

        pumps = [
            asyncio.create_task(_pump(proc.stdout, spec.container_id, "stdout", on_output, spec.raw_output)),
            asyncio.create_task(_pump(proc.stderr, spec.container_id, "stderr", watch, spec.raw_output)),
        ]
        container = LocalContainer(proc, pumps, sandboxed=True, cgroup=cgroup, forwarding=forwarding,
                                   release=release, setup_error=setup_error)
        if net is not None:
            container.allowlist, container.hosts_blocked = allow, frozenset(hosts)
            self._watch_host_addresses(container)
        return container

    async def _join_cgroup(self, container_id: str, cgroup: ContainerCgroup, pid: int) -> bool:
        """Move `pid` into the container's cgroups; a failed move is tried once more after making any directory
        that is gone again (with its parent). False, logged with its errno, when it still fails."""
        try:
            await cgroup.add_async(pid)
            return True
        except OSError as exc:
            first = exc
        try:
            await asyncio.to_thread(self.cgroups.restore, cgroup)
            await cgroup.add_async(pid)
            log.info("container %s: joined its cgroups on the second try (the first: %s)", container_id,
                     _errno_text(first))
            return True
        except OSError as exc:
            log.warning("container %s: could not join its cgroups %s: %s (first try: %s)", container_id,
                        cgroup.dirs, _errno_text(exc), _errno_text(first))
            return False

    def _watch_host_addresses(self, container: LocalContainer) -> None:
        """Host addresses that appear while a container with outbound network runs (an interface brought up
        later) get blocked in its namespace too: pasta's sockets are the host's, so they would reach the host."""
        self._networked.add(container)
        container._release.append(lambda: self._networked.discard(container))
        if self._host_watch is None or self._host_watch.done():
            self._host_watch = asyncio.create_task(self._host_watch_loop())

    async def _host_watch_loop(self) -> None:
        while self._networked:
            await asyncio.sleep(HOST_WATCH_S)
            hosts = frozenset(egress.host_addresses(fresh=True))
            for c in list(self._networked):
                appeared = sorted(hosts - c.hosts_blocked, key=lambda n: (n.version, n))
                if not appeared or c.proc.returncode is not None:
                    continue
                rules = egress.late_host_rules(c.allowlist, self.allowed_cidrs, appeared)
                if rules:
                    cfg = {"late_rules": rules, "netns": f"/proc/{c.pid}/ns/net"}
                    proc = await asyncio.create_subprocess_exec(
                        *launcher_argv(self.python, cfg), stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
                    _, err = await proc.communicate()
                    if proc.returncode != 0 and c.proc.returncode is None:
                        log.warning("container (pid %s): could not block new host addresses %s: %s", c.pid, appeared,
                                    err.decode(errors="replace").strip())
                        continue
                c.hosts_blocked = c.hosts_blocked | frozenset(appeared)


# An idle container (`shoal shell`) waits for signals; it dies with the control plane like a runtime would.
IDLE_CODE = ("import ctypes, signal\ntry:\n    ctypes.CDLL(None).prctl(1, signal.SIGKILL)\nexcept Exception:\n"
             "    pass\nwhile True:\n    signal.pause()\n")


# The same for an OCI image without Python (it dies with the container's init, as every process inside does).
IDLE_SH = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"


def _errno_text(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "?")
    return f"{name} ({exc})"


def _pool_setting() -> int:
    raw = os.environ.get("SHOAL_NETNS_POOL", "2")
    try:
        size = int(raw)
    except ValueError:
        size = -1
    if not 0 <= size <= 64:
        raise ValueError(f"SHOAL_NETNS_POOL must be a whole number from 0 to 64, got {raw!r}")
    return size


def _blocks_network(spec: ContainerSpec) -> bool:
    return spec.definition.options.extra.get("block_network") is True


def _network_limited(spec: ContainerSpec) -> bool:
    return _blocks_network(spec) or spec.outbound_cidr_allowlist is not None


def tcp_address(address: str) -> tuple[str, int]:
    """`tcp://host:port` (`tcp://[::1]:port` for IPv6) → (host, port)."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return host.strip("[]"), int(port)


def _runtime_argv(python: str, spec: ContainerSpec) -> list[str]:
    image = spec.image
    if spec.idle:
        return [python, "-I", "-S", "-c", IDLE_CODE] if python else ["/bin/sh", "-c", IDLE_SH]
    if spec.command:
        # The sandbox's init execs argv[0] as a path: a bare name is found on the container's PATH by `env`.
        return list(spec.command) if spec.command[0].startswith("/") else ["/usr/bin/env", "--", *spec.command]
    if image is not None and image.layers is not None:
        if not python:
            raise RuntimeError(f"image {image.image_id} has no Python: functions cannot run on it")
        return [python, "-c", OCI_BOOT]
    return [python, "-m", "shoal.runtime"]


def _stdin(spec: ContainerSpec) -> int:
    return asyncio.subprocess.PIPE if spec.stdin else asyncio.subprocess.DEVNULL


async def _pump(stream: asyncio.StreamReader | None, container_id: str, fd: str, sink: OutputSink | None,
                raw: RawSink | None = None) -> None:
    """Forward output as it is written (not line-buffered), so `print()` shows up at once; as bytes to `raw`
    when given (a sandbox's output), else decoded to `sink`."""
    if stream is None:
        return
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        if raw is not None:
            if fd == "stderr" and sink is not None and b"shoal sandbox: " in chunk:
                sink(container_id, fd, chunk.decode("utf-8", "replace"))  # a setup failure, for exit_reason
            raw(fd, chunk)
        elif sink is not None:
            sink(container_id, fd, chunk.decode("utf-8", "replace"))


def cpu_shortfall(cpu: float | list[float] | tuple[float, ...] | None, cores: int) -> str | None:
    """What a function asking for more cores than this machine has gets, said once (None when it fits)."""
    asked = float(cpu[0]) if isinstance(cpu, (list, tuple)) else cpu
    if asked is None or asked <= cores:
        return None
    return (f"cpu={asked:g} asked, but this machine has {cores} core{'s' if cores != 1 else ''}: its containers "
            f"share those {cores} (no more than {cores} at once)")
