"""The host side of the Linux sandbox (see docs/sandbox.md): whether containers can be sandboxed here, what each
one sees, its cgroup limits, and its way back to the control plane's TCP ports.

`shoal/runtime/sandbox_init.py` does the work inside the new namespaces; this module only decides and plans.
"""

from __future__ import annotations

import asyncio
import errno
import glob
import json
import logging
import marshal
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .._spec.definitions import Options
    from .base import ContainerSpec

log = logging.getLogger("shoal.sandbox")

ISOLATION_ENV = "SHOAL_ISOLATION"  # "sandbox" (fail if unavailable), "process" (never), unset: sandbox if possible


def wanted_isolation(requested: str | None = None) -> str:
    """"auto", "sandbox" or "process": `requested`, else `SHOAL_ISOLATION` (a bad value is a ValueError)."""
    wanted = (requested or os.environ.get(ISOLATION_ENV) or "auto").strip().lower()
    if wanted not in ("auto", "sandbox", "process"):
        raise ValueError(f"{ISOLATION_ENV} must be 'sandbox' or 'process', not {wanted!r}")
    return wanted
SHARE_ENV = "SHOAL_SANDBOX_SHARE"  # host directories containers may read and write, at the same path
UID_ENV = "SHOAL_SANDBOX_UID"  # first host uid/gid of the range container ids map to (root mode)
DEFAULT_ID_BASE = 100000
ID_COUNT = 65536
SANDBOX_RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"
SHOAL_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Never bound into a container whole, whatever an interpreter's sys.path says.
_TOO_BROAD = {"/", "/root", "/home", "/tmp", "/var", "/var/tmp", "/run", "/mnt", "/opt", "/srv", "/media", "/work"}
# The setup runs as `python -I -S -c BOOT hexconfig`: importing the file (rather than running it as a script)
# lets Python cache its bytecode, which saves ~6 ms a start.
BOOT = f"import sys; sys.path.insert(0, {str(SANDBOX_RUNTIME_DIR)!r}); import sandbox_init; sandbox_init.main()"
SETUP_FAILED = 121
MIB = 1024 * 1024


def launcher_argv(python: str, cfg: dict[str, Any]) -> list[str]:
    return [python, "-I", "-S", "-c", BOOT, marshal.dumps(cfg).hex()]


def id_base() -> int:
    return int(os.environ.get(UID_ENV) or DEFAULT_ID_BASE)


def layer_id_shift() -> int:
    """What the layer store adds to a layer's uids and gids: as root, container ids 0..65535 are host ids from
    `id_base()`, so an image's root-owned files are the container's root's; rootless, ids stay as they are."""
    return id_base() if os.geteuid() == 0 else 0


def shares_from_env() -> list[str]:
    shares = []
    for p in (os.environ.get(SHARE_ENV) or "").split(os.pathsep):
        if not p.strip():
            continue
        real = os.path.realpath(p)
        if real in _TOO_BROAD:
            log.warning("%s: not sharing %s with containers (too broad)", SHARE_ENV, real)
            continue
        shares.append(real)
    return shares


def under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def newroot_dir() -> str:
    """An empty host directory each sandbox mounts its root on, in its own mount namespace only."""
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        return "/run/shoal-sandbox"
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"shoal-sandbox-{os.geteuid()}")


# -- interpreters ------------------------------------------------------------------------------------------------
_PATHS_CODE = r"""
import importlib.util, json, os, sys
paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
         os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
paths.update(p for p in sys.path if p)
for name in ("shoal", "msgpack", "cloudpickle", "tblib"):
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        continue
    if spec is not None:
        paths.update(spec.submodule_search_locations or [os.path.dirname(spec.origin or "")])
print(json.dumps(sorted(p for p in paths if p)), flush=True)
# Import what a container's runtime imports, here on the host, so their bytecode is cached: inside the sandbox
# these trees are read-only and every cold start would compile them again.
try:
    import shoal.runtime.worker, shoal.app, shoal.functions, shoal.cls, cloudpickle, msgpack, tblib
except Exception:
    pass
"""


def minimal_paths(paths: list[str], exclude: list[str] = ()) -> list[str]:
    """Existing paths (and their real paths) not already visible through a system dir or a parent in the list."""
    found: set[str] = set()
    for p in paths:
        if not p or not os.path.exists(p):
            continue
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if q in _TOO_BROAD or any(under(x, q) for x in exclude):
                log.warning("sandbox: not exposing %s to containers (too broad)", q)
                continue
            if any(under(q, s) for s in SYSTEM_DIRS):
                continue
            found.add(q)
    out: list[str] = []
    for q in sorted(found, key=lambda s: (s.count("/"), s)):
        if not any(under(q, kept) for kept in out):
            out.append(q)
    return sorted(out)


def _python_home(prefix: str) -> bool:
    """Whether `prefix` looks like a Python installation (has its standard library)."""
    return bool(glob.glob(os.path.join(prefix, "lib", "python3*", "os.py")))


def interpreter_paths(python: str, exclude: list[str] = (), allowed: list[str] | None = None,
                      sandbox_mode: str | None = None) -> list[str]:
    """What a container running `python` must see: its prefixes, its sys.path, the shoal package.

    `allowed`: for an image's interpreter, whose `.pth` files and venv a build step could have written, only paths
    below these directories (the image's trees), the shoal package, and the installation the interpreter binary
    belongs to are exposed; the control plane's own interpreter (None) is trusted. `sandbox_mode` ("root",
    "rootless"): the interpreter is asked inside a sandbox seeing only those trees, without network, never on the
    host (its site-packages may hold a build command's `.pth` file, which Python runs at start)."""
    real = os.path.realpath(python)
    own = [os.path.dirname(os.path.dirname(python)), os.path.dirname(os.path.dirname(real))]
    argv = [python, "-I", "-c", _PATHS_CODE]
    if sandbox_mode and allowed is not None:
        ro = minimal_paths([*own, *allowed, SHOAL_PACKAGE_DIR], exclude)
        cfg = {"mode": sandbox_mode, "uid": id_base(), "gid": id_base(), "ids": ID_COUNT, "newroot": newroot_dir(),
               "hostname": "paths", "ro": ro, "argv": argv, "cwd": "/"}
        argv = launcher_argv(sys.executable, cfg)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")} if sandbox_mode else None)
        paths = json.loads(out.stdout.splitlines()[0]) if out.stdout.strip() else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        paths = []
    paths = paths or own  # at least the interpreter's own tree
    if allowed is not None:
        roots = [os.path.realpath(a) for a in allowed] + [SHOAL_PACKAGE_DIR]
        roots += [p for p in own if _python_home(p)]
        kept = [p for p in paths if any(under(os.path.realpath(p), r) or under(os.path.abspath(p), r) for r in roots)]
        for p in sorted(set(paths) - set(kept)):
            log.warning("sandbox: not exposing %s (named by the image's interpreter) to containers", p)
        paths = kept + [p for p in own if _python_home(p) or any(under(p, r) for r in roots)]
    return minimal_paths([*paths, SHOAL_PACKAGE_DIR], exclude)


def _entry(base: str, name: str) -> str | None:
    """`base/name`, unless it is a symlink leading out of `base` (binding it would show the host's target)."""
    path = os.path.join(base, name)
    if os.path.islink(path) and not under(os.path.realpath(path), os.path.realpath(base)):
        log.warning("sandbox: not binding %s: a symlink out of %s", path, base)
        return None
    return path


# -- availability ------------------------------------------------------------------------------------------------
@dataclass
class Availability:
    isolation: str  # "sandbox" or "process"
    mode: str = ""  # "root" or "rootless" (sandbox only)
    reason: str = ""  # why not sandboxed


def probe(python: str, ro: list[str]) -> Availability:
    """Run one empty sandbox (`python -c pass` inside) to learn whether this kernel allows them."""
    if sys.platform != "linux":
        return Availability("process", reason=f"namespaces need Linux (this is {sys.platform})")
    mode = "root" if os.geteuid() == 0 else "rootless"
    cfg = {"mode": mode, "uid": id_base(), "gid": id_base(), "ids": ID_COUNT, "newroot": newroot_dir(),
           "hostname": "probe", "ro": ro, "argv": [python, "-I", "-S", "-c", "pass"], "cwd": "/"}
    try:
        proc = subprocess.run(launcher_argv(python, cfg), capture_output=True, text=True, timeout=30,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Availability("process", reason=str(exc))
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        reason = detail[-1] if detail else f"exit status {proc.returncode}"
        return Availability("process", reason=reason.removeprefix("shoal sandbox: "))
    return Availability("sandbox", mode=mode)


# -- cgroups -----------------------------------------------------------------------------------------------------
@dataclass
class Limits:
    """A container's resources, from the function's `cpu=` and `memory=` (request, or (request, limit))."""

    cpu_request: float = 0.125
    cpu_limit: float | None = None
    memory_request_mib: int = 128
    memory_limit_mib: int | None = None
    cpu_given: bool = False  # `cpu=` was set (else, on cgroup v1, the container skips the cpu hierarchy)
    pids_max: int | None = None  # most processes at once (sandboxes: options.extra["pids_max"]); None: no limit

    @classmethod
    def from_options(cls, options: Options) -> Limits:
        lim = cls()
        cpu, memory = options.cpu, options.memory
        if isinstance(cpu, (list, tuple)):
            lim.cpu_request, lim.cpu_limit = float(cpu[0]), float(cpu[1])
        elif cpu is not None:
            lim.cpu_request = float(cpu)
        lim.cpu_given = cpu is not None
        if isinstance(memory, (list, tuple)):
            lim.memory_request_mib, lim.memory_limit_mib = int(memory[0]), int(memory[1])
        elif memory is not None:
            lim.memory_request_mib = int(memory)
        pids = options.extra.get("pids_max")
        if isinstance(pids, int) and not isinstance(pids, bool) and pids > 0:
            lim.pids_max = pids
        return lim


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_counter(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class ContainerCgroup:
    version: int
    dirs: list[str]  # one per hierarchy (v2: one)
    memory_dir: str | None
    limits: Limits
    homes: list[str] = field(default_factory=list)  # cgroups the supervisor moves back to before removing these
    _oom_before: int = 0

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def add(self, pid: int) -> None:
        for f in self.procs_files():
            _write(f, str(pid))

    async def add_async(self, pid: int) -> None:
        """Move `pid` in, off the event loop and one thread per hierarchy: a migration may wait for an RCU grace
        period (10-20 ms measured)."""
        await asyncio.gather(*(asyncio.to_thread(_write, f, str(pid)) for f in self.procs_files()))

    def oom_kills(self) -> int:
        if self.memory_dir is None:
            return 0
        if self.version == 2:
            return _read_counter(os.path.join(self.memory_dir, "memory.events"), "oom_kill")
        return _read_counter(os.path.join(self.memory_dir, "memory.oom_control"), "oom_kill")

    def usage(self) -> tuple[float, int, int | None]:
        """(CPU seconds, memory bytes, peak memory bytes or None) of the processes in it; OSError, ValueError or
        KeyError where a hierarchy lacks the controller."""
        if self.version == 2:
            d = self.dirs[0]
            stat = dict(line.split() for line in _read(os.path.join(d, "cpu.stat")).splitlines())
            mem = int(_read(os.path.join(d, "memory.current")))
            try:
                peak: int | None = int(_read(os.path.join(d, "memory.peak")))
            except OSError:
                peak = None
            return int(stat["usage_usec"]) / 1e6, mem, peak
        cpu_dir = next((d for d in self.dirs if "cpuacct" in d), None)
        if cpu_dir is None or self.memory_dir is None:
            raise ValueError("no cpuacct or memory hierarchy")
        return (int(_read(os.path.join(cpu_dir, "cpuacct.usage"))) / 1e9,
                int(_read(os.path.join(self.memory_dir, "memory.usage_in_bytes"))),
                int(_read(os.path.join(self.memory_dir, "memory.max_usage_in_bytes"))))

    def _try_remove(self) -> bool:
        """rmdir each directory. False while processes are still leaving. The shared parent stays, empty or not:
        removing it raced with containers being created in it, by this control plane or another on the machine
        (their mkdir or their move into the new cgroup failed: ENOENT, ENODEV)."""
        for d in list(self.dirs):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    return False
                log.warning("could not remove cgroup %s: %s", d, exc)
            self.dirs.remove(d)
        return True

    async def remove(self) -> None:
        for _ in range(250):
            if self._try_remove():
                return
            await asyncio.sleep(0.02)
        log.warning("could not remove cgroups %s: processes are still in them", self.dirs)

    def remove_now(self, timeout: float = 1.0) -> None:
        """The same, blocking (at exit, when the event loop is gone)."""
        deadline = time.monotonic() + timeout
        while not self._try_remove() and time.monotonic() < deadline:
            time.sleep(0.01)


CONTROLLERS = ("memory", "cpu", "pids")  # pids: where the host has it, for limits that ask (`Limits.pids_max`)


class Cgroups:
    """Per-container cgroups below the control plane's own cgroup: `<own>/shoal/<container_id>`, on cgroup v2
    or on the v1 `memory`, `cpu` (and `pids`) hierarchies. `available` is False, with `reason`, where neither works."""

    def __init__(self) -> None:
        self.version = 0
        self.parents: dict[str, str] = {}  # controller -> parent dir
        self.homes: dict[str, str] = {}  # parent dir -> a cgroup of the control plane's that may hold processes
        self.reason = ""
        try:
            self._detect()
        except OSError as exc:
            self.parents, self.reason = {}, str(exc)

    @property
    def available(self) -> bool:
        return bool(self.parents)

    def collect_garbage(self, older_than_s: float = 60.0) -> None:
        """Remove container cgroups a control plane that died without cleaning up left behind (empty ones
        only: rmdir refuses a cgroup with processes; young ones may be another control plane's, just made)."""
        now = time.time()
        for parent in set(self.parents.values()):
            try:
                entries = os.listdir(parent)
            except OSError:
                continue
            for name in entries:
                d = os.path.join(parent, name)
                if not name.startswith("ta-") or not os.path.isdir(d):
                    continue
                try:
                    if now - os.stat(d).st_mtime > older_than_s:
                        os.rmdir(d)
                except OSError:
                    pass

    def _detect(self) -> None:
        if sys.platform != "linux":
            self.reason = "cgroups need Linux"
            return
        mounts: dict[str, str] = {}  # "cgroup2" or controller name -> mount point
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fstype, _, super_opts = (right.split() + ["", "", ""])[:3]
                point = left.split()[4]
                if fstype == "cgroup2":
                    mounts.setdefault("cgroup2", point)
                elif fstype == "cgroup":
                    for opt in super_opts.split(","):
                        if opt in CONTROLLERS:
                            mounts.setdefault(opt, point)
        own: dict[str, str] = {}
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    own["cgroup2"] = path
                for c in controllers.split(","):
                    if c in CONTROLLERS:
                        own[c] = path
        if "cgroup2" in mounts and "cgroup2" in own:
            base = mounts["cgroup2"] + own["cgroup2"].rstrip("/")
            try:
                with open(os.path.join(base, "cgroup.controllers")) as f:
                    have = set(f.read().split())
            except OSError:
                have = set()
            if {"memory", "cpu"} & have:
                self._setup_v2(base, sorted(set(CONTROLLERS) & have))
                if self.parents:
                    return
        v1 = {c: mounts[c] + own[c].rstrip("/") for c in CONTROLLERS if c in mounts and c in own}
        if {"memory", "cpu"} & set(v1):
            for c, base in v1.items():
                parent = os.path.join(base, "shoal")
                try:
                    os.makedirs(parent, exist_ok=True)
                    self.parents[c] = parent
                    self.homes[parent] = base
                except OSError as exc:
                    self.reason = f"cannot create {parent}: {exc.strerror}"
            if self.parents:
                self.version = 1
                self._tune_parent()
                return
        self.reason = self.reason or "no cgroup hierarchy with the memory or cpu controller is writable here"

    def _setup_v2(self, base: str, controllers: list[str]) -> None:
        enable = " ".join(f"+{c}" for c in controllers)
        try:
            _write(os.path.join(base, "cgroup.subtree_control"), enable)
        except OSError as exc:
            # A cgroup with processes of its own cannot hand controllers to children (the "no internal
            # processes" rule): move this process into a leaf of its own, if it is alone there.
            try:
                with open(os.path.join(base, "cgroup.procs")) as f:
                    procs = {int(p) for p in f.read().split()}
            except OSError:
                procs = set()
            if exc.errno != errno.EBUSY or procs - {os.getpid()}:
                self.reason = (f"cgroup v2: cannot enable {enable} in {base} ({exc.strerror}); run the control plane "
                               f"in a cgroup of its own (e.g. systemd-run --scope -p Delegate=yes)")
                return
            try:
                leaf = os.path.join(base, "shoal-control-plane")
                os.makedirs(leaf, exist_ok=True)
                _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
                _write(os.path.join(base, "cgroup.subtree_control"), enable)
            except OSError as exc2:
                self.reason = f"cgroup v2: cannot enable {enable} in {base}: {exc2.strerror}"
                return
            home = leaf
        else:
            home = base
        parent = os.path.join(base, "shoal")
        try:
            os.makedirs(parent, exist_ok=True)
            _write(os.path.join(parent, "cgroup.subtree_control"), enable)
        except OSError as exc:
            self.reason = f"cgroup v2: cannot use {parent}: {exc.strerror}"
            return
        self.version = 2
        self.parents = {c: parent for c in controllers}
        self.homes = {parent: home}
        self._tune_parent()

    def _tune_parent(self) -> None:
        """All containers together weigh like the machine's CPUs against the host's other processes."""
        ncpu = os.cpu_count() or 1
        cpu_parent = self.parents.get("cpu")
        if cpu_parent is None:
            return
        try:
            if self.version == 2:
                _write(os.path.join(cpu_parent, "cpu.weight"), str(min(10000, 100 * ncpu)))
            else:
                _write(os.path.join(cpu_parent, "cpu.shares"), str(1024 * ncpu))
        except OSError:
            pass

    def create(self, container_id: str, limits: Limits) -> ContainerCgroup:
        """A cgroup for one container with its limits written (see docs/sandbox.md for the mapping)."""
        made: list[str] = []
        try:
            by_dir: dict[str, list[str]] = {}
            for controller, parent in self.parents.items():
                if controller == "cpu" and self.version == 1 and not limits.cpu_given:
                    continue  # one migration fewer at start (each may cost an RCU grace period)
                if controller == "pids" and self.version == 1 and limits.pids_max is None:
                    continue  # likewise: only containers with a process limit (sandboxes) join it
                by_dir.setdefault(os.path.join(parent, container_id), []).append(controller)
            for d, controllers in by_dir.items():
                self._mkdir(d)
                made.append(d)
                for controller in controllers:
                    self._limit(d, controller, limits)
        except OSError:
            for d in made:
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            raise
        memory_dir = next((d for d, cs in by_dir.items() if "memory" in cs), None)
        homes = [self.homes[os.path.dirname(d)] for d in made if os.path.dirname(d) in self.homes]
        return ContainerCgroup(self.version, made, memory_dir, limits, homes)

    def _mkdir(self, d: str) -> None:
        """A container's cgroup directory, its parent made again where it is gone: an older control plane removed
        the shared parent when it was empty (ENOENT), or was removing it as we looked it up (ENODEV)."""
        for attempt in range(3):
            try:
                os.mkdir(d)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENODEV) or attempt == 2:
                    raise
            parent = os.path.dirname(d)
            os.makedirs(parent, exist_ok=True)
            if self.version == 2:
                _write(os.path.join(parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in self.parents))
            self._tune_parent()

    def restore(self, cgroup: ContainerCgroup) -> None:
        """A container's cgroup directories made again where gone, limits written: a failed move is tried again."""
        for d in (d for d in cgroup.dirs if not os.path.isdir(d)):
            self._mkdir(d)
            for controller, parent in self.parents.items():
                if parent == os.path.dirname(d):
                    self._limit(d, controller, cgroup.limits)

    def _limit(self, d: str, controller: str, lim: Limits) -> None:
        j = os.path.join
        if controller == "memory":
            if self.version == 2:
                _write(j(d, "memory.low"), str(lim.memory_request_mib * MIB))
                if lim.memory_limit_mib is not None:
                    _write(j(d, "memory.max"), str(lim.memory_limit_mib * MIB))
                    if os.path.exists(j(d, "memory.swap.max")):
                        _write(j(d, "memory.swap.max"), "0")
            else:
                _write(j(d, "memory.soft_limit_in_bytes"), str(lim.memory_request_mib * MIB))
                if lim.memory_limit_mib is not None:
                    _write(j(d, "memory.limit_in_bytes"), str(lim.memory_limit_mib * MIB))
                    if os.path.exists(j(d, "memory.memsw.limit_in_bytes")):
                        _write(j(d, "memory.memsw.limit_in_bytes"), str(lim.memory_limit_mib * MIB))
        elif controller == "pids":
            if lim.pids_max is not None:
                _write(j(d, "pids.max"), str(lim.pids_max))
        elif controller == "cpu":
            if self.version == 2:
                _write(j(d, "cpu.weight"), str(max(1, min(10000, round(100 * lim.cpu_request)))))
                if lim.cpu_limit is not None:
                    _write(j(d, "cpu.max"), f"{max(1000, round(lim.cpu_limit * 100000))} 100000")
            else:
                _write(j(d, "cpu.shares"), str(max(2, round(1024 * lim.cpu_request))))
                if lim.cpu_limit is not None:
                    _write(j(d, "cpu.cfs_period_us"), "100000")
                    _write(j(d, "cpu.cfs_quota_us"), str(max(1000, round(lim.cpu_limit * 100000))))


# -- ports -------------------------------------------------------------------------------------------------------
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}


def control_plane_ports(env: dict[str, str]) -> dict[int, tuple[str, int]]:
    """Ports of the control plane's own URLs (`SHOAL_SERVER_URL`: one, or replicas separated by commas) on this
    machine: inside the container's network namespace they lead to the host's port. Nothing else of the host's
    loopback is forwarded, whatever other URLs the environment holds. Returns {port inside: (host, port)}."""
    out: dict[int, tuple[str, int]] = {}
    for value in (env.get("SHOAL_SERVER_URL") or "").split(","):
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            continue
        try:
            u = urlsplit(value)
            port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            continue
        host = u.hostname or ""
        if host in _LOOPBACK or host.endswith(".localhost"):
            out[port] = ("127.0.0.1", port)
    return out


def rewrite_server_url(env: dict[str, str], forwards: dict[int, tuple[str, int]]) -> None:
    """SHOAL_SERVER_URL on a non-loopback address (a control plane listening on the LAN): inside, it is reached
    through the container's own loopback, forwarded to that address."""
    url = env.get("SHOAL_SERVER_URL") or ""
    try:
        u = urlsplit(url)
        host, port = u.hostname, u.port
    except ValueError:
        return
    if not host or not port or host in _LOOPBACK or host.endswith(".localhost"):
        return
    forwards[port] = (host, port)
    env["SHOAL_SERVER_URL"] = url.replace(u.netloc, f"127.0.0.1:{port}", 1)


class _Pipe(asyncio.Protocol):
    """One side of a forwarded TCP connection; writes what it reads to its peer, with back-pressure."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def link(self, peer: _Pipe) -> None:
        self.peer = peer
        for chunk in self.pending:
            peer.transport.write(chunk)  # type: ignore[union-attr]
        self.pending.clear()
        if self.eof:
            self.eof_received()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Inbound(_Pipe):
    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__()
        self.target = target

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.target
        if host in _LOOPBACK and self.transport is not None:
            # The loopback address it was sent to inside is the one it goes to outside (web URLs differ by it).
            host = (self.transport.get_extra_info("sockname") or (host,))[0]
        try:
            _, out = await loop.create_connection(_Pipe, host, port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        sock = out.transport.get_extra_info("socket") if out.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.transport is None or self.transport.is_closing():
            out.transport.close()  # type: ignore[union-attr]
            return
        out.peer = self
        out.link(self)
        self.link(out)


@dataclass
class Forwarding:
    """The listening sockets a sandbox opened in its network namespace, served by the control plane's loop."""

    targets: dict[int, tuple[str, int]]
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    _chan: socket.socket | None = None

    def start(self, chan: socket.socket) -> None:
        """Wait (on the event loop) for the sandbox to send its listening sockets over `chan`."""
        self._chan = chan
        chan.setblocking(False)
        asyncio.get_running_loop().add_reader(chan.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        chan = self._chan
        if chan is None:
            return
        try:
            _, fds, _, _ = socket.recv_fds(chan, 64, 16)
        except BlockingIOError:
            return
        except OSError:
            fds = []
        asyncio.get_running_loop().remove_reader(chan.fileno())
        chan.close()
        self._chan = None
        if fds:
            asyncio.get_running_loop().create_task(self._serve(fds))

    async def _serve(self, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        for fd in fds:
            sock = socket.socket(fileno=fd)
            port = sock.getsockname()[1]
            target = self.targets.get(port, ("127.0.0.1", port))
            try:
                self.servers.append(await loop.create_server(lambda t=target: _Inbound(t), sock=sock))
            except OSError as exc:
                log.warning("cannot forward port %s into a container: %s", port, exc)
                sock.close()

    def close(self) -> None:
        if self._chan is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._chan.fileno())
            except (RuntimeError, ValueError):
                pass
            self._chan.close()
            self._chan = None
        for s in self.servers:
            s.close()
        self.servers.clear()


# -- a container's view ------------------------------------------------------------------------------------------
def image_layers(root: str | None) -> tuple[list[list], dict[str, list[str]]]:
    """The image's files (`<root>/files/<container path>`) placed at their container paths: returns bind mounts
    [src, dst, writable] and overlays {system dir: [lower dirs, top first]} for files under /usr, /etc, …"""
    binds: list[list] = []
    overlays: dict[str, list[str]] = {}
    if not root:
        return binds, overlays
    files = os.path.join(root, "files")
    try:
        entries = sorted(os.listdir(files))
    except OSError:
        return binds, overlays
    for name in entries:
        src = _entry(files, name)
        dst = "/" + name
        if src is None or name in ("tmp", "proc", "sys", "dev", "run"):
            continue  # (the latter are the container's own)
        if dst in SYSTEM_DIRS and os.path.isdir(src) and not os.path.islink(src) and not os.path.islink(dst):
            overlays[dst] = [src, dst]
        elif name == "root" and os.path.isdir(src) and not os.path.islink(src):
            for entry in sorted(os.listdir(src)):
                inner = _entry(src, entry)
                if inner is not None:
                    binds.append([inner, f"/root/{entry}", False])
        else:
            binds.append([src, dst, False])
    return binds, overlays


# -- a container on an OCI image (docs/sandbox.md "Root filesystem from layers") --------------------------------
SDK_MOUNT = "/.shoal/sdk"  # shoal's package at SDK_MOUNT/shoal, read-only: first on sys.path
RUNTIME_MOUNT = "/.shoal/runtime"  # the runtime's packages for the image's Python, read-only: last on sys.path
# What the image's Python runs: shoal's runtime, with the image's own packages winning over the runtime's copies
# (they were installed for the user's code) and shoal's own package over anything of the image's name.
OCI_BOOT = (f"import sys; sys.path.insert(0, {SDK_MOUNT!r}); sys.path.append({RUNTIME_MOUNT!r}); import runpy; "
            "runpy.run_module('shoal.runtime', run_name='__main__', alter_sys=True)")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GPU_DRIVER_FILES = ("/usr/lib/x86_64-linux-gnu/libcuda.so*", "/usr/lib/x86_64-linux-gnu/libnvidia-*.so*",
                     "/usr/lib/aarch64-linux-gnu/libcuda.so*", "/usr/lib/aarch64-linux-gnu/libnvidia-*.so*",
                     "/usr/lib64/libcuda.so*", "/usr/lib64/libnvidia-*.so*", "/usr/bin/nvidia-smi")


def gpu_driver_files() -> list[str]:
    """The host's NVIDIA driver files a CUDA program needs besides the device nodes (user-space driver
    libraries, nvidia-smi): they must match the host's kernel module, so an image never ships them."""
    return sorted({p for pattern in _GPU_DRIVER_FILES for p in glob.glob(pattern)})


def _is_root(user: str | None) -> bool:
    return not user or user.partition(":")[0] in ("root", "0")


def image_root_view(spec: ContainerSpec, env: dict[str, str], shares: list[str],
                    exclude: list[str]) -> dict[str, Any]:
    """The sandbox config of a container on an OCI image (`spec.image.layers`): its root is the image (the
    layers with a private tmpfs upper: what it writes is gone with it), with shoal's package and the runtime's
    packages read-only under /.shoal, the app's source at /root/<entry>, the spec's binds, the installation's
    shares (the control plane's own directories `exclude` masked where a share holds them), the host's NVIDIA
    driver files for a GPU container; `env` (the image's config Env, ENV steps and the control plane's) is
    completed for it."""
    image = spec.image
    assert image is not None and image.layers is not None
    binds: list[list] = [[SHOAL_PACKAGE_DIR, f"{SDK_MOUNT}/shoal", False]]
    if image.runtime_dir:
        binds.append([image.runtime_dir, RUNTIME_MOUNT, False])
    binds += source_binds(spec.source_dir, set()) + [list(b) for b in spec.binds]
    env.setdefault("PATH", DEFAULT_PATH)
    if _is_root(image.user):
        env.setdefault("HOME", "/root")
        env["USER"] = env["LOGNAME"] = "root"
    env["PYTHONPATH"] = "/root" + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    mask = sorted({d for d in exclude if any(under(d, p) for p in shares)})  # the control plane's state: never
    # A USER other than root must import the app's source at /root/<entry>, and /root is root's alone in most
    # images: in this container's own upper, /root becomes readable and searchable by all (Python's importer lists
    # it); its files keep their modes.
    readable = ["/root"] if spec.source_dir and not _is_root(image.user) else []
    return {"rootfs": {"layers": list(image.layers), "upper": None, "work": None}, "binds": binds, "rw": shares,
            "mask": mask, "user": image.user or None, "driver_files": gpu_driver_files() if spec.gpus else [],
            "readable": readable}


def host_upper(rootfs_dir: str) -> dict[str, str]:
    """The `rootfs` keys of a container whose writable layer is the host directory `rootfs_dir`
    (ContainerSpec.rootfs_dir): its `upper` and `work` (made here, the host's root's, 0700 as a build step's) and
    the `record` of the mountpoints its setup made in the upper (shoal/oci/upper.py `skip`)."""
    root = Path(rootfs_dir)
    for d in ("upper", "work"):
        (root / d).mkdir(mode=0o700, parents=True, exist_ok=True)
    return {"upper": str(root / "upper"), "work": str(root / "work"), "record": str(root / "mountpoints")}


def source_binds(source_dir: str | None, taken: set[str]) -> list[list]:
    """The app's source, entry by entry, at /root/<entry> (read-only); /root itself stays writable."""
    if not source_dir:
        return []
    try:
        entries = sorted(os.listdir(source_dir))
    except OSError:
        return []
    out = []
    for e in entries:
        src = _entry(source_dir, e)
        if src is not None and f"/root/{e}" not in taken:
            out.append([src, f"/root/{e}", False])
    return out
