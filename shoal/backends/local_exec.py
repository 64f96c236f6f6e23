"""Running a command inside a local container (`shoal container exec`, `shoal shell`), on the control plane's
machine.

A sandboxed container is three processes (docs/sandbox.md): the supervisor (the handle's pid, on the host side),
the init (pid 1 of the container's pid namespace) and the runtime (the user's code). A command joins the
runtime's namespaces (user, mount, pid, network, ipc, uts) with util-linux `nsenter`, its root and working
directory (`/root`, or the image's workdir), and the environment the runtime started with
(`/proc/<pid>/environ`). It becomes the container's root: uid 0 inside, an unprivileged uid outside, seeing
only the container's files. Where the container has cgroups, the command joins them, so its limits hold; it has
`no_new_privs`, as the runtime has.

`nsenter --wd=DIR` is not used: nsenter opens DIR before it enters the namespaces, i.e. the host's DIR, which
would leave the command's working directory outside the container's root. `--wd` without a path takes the
runtime's own, opened through `/proc/<pid>/cwd`.

With a terminal (`pty`), the pseudo-terminal comes from the container's own devpts instance (opened from the
host through `/proc/<pid>/root/dev/pts/ptmx`, owned by the container's root), and the command runs as the
leader of a new session with it as controlling terminal (`setsid -c`): `tty` shows `/dev/pts/0` inside, job
control works.

Containers under `isolation=process` are plain processes: the command runs on the host, as a child with the
runtime's environment and working directory, and is not sandboxed.

This module uses only the standard library: the CLI imports it, never the control plane's own code.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import termios
import time
from dataclasses import dataclass, field

# Variables of the runtime's environment that mean nothing to another process: the runtime's inherited
# control-plane socket (a file descriptor number) and the sandbox's start mark.
_DROPPED_ENV = ("SHOAL_CONTROL", "SHOAL_T_EXEC")
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIOCGPTPEER = 0x5441  # Linux >= 4.13: the slave of a pty master, without a path lookup
TIOCSPTLCK = 0x40045431
PR_SET_NO_NEW_PRIVS = 38


class ExecError(Exception):
    """Why a command cannot be run in a container (shown to the user as is)."""


def machine_id() -> str:
    """Which machine, and which pid namespace on it, this process runs on: the control plane reports its own, and
    `exec` runs only where they are equal (the pids it reports mean something only there)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return f"host:{socket.gethostname()}"


@dataclass
class ExecTarget:
    """What a command needs to run inside one container."""

    container_id: str
    sandboxed: bool
    pid: int  # the runtime's host pid: its namespaces, root and working directory are the command's
    env: dict[str, str]
    cwd: str | None = None  # isolation=process: the runtime's working directory on the host
    cgroups: list[str] = field(default_factory=list)  # the container's cgroup directories (sandboxed only)
    root_ids: tuple[int, int] | None = None  # host uid and gid of the container's root (owns the pty)


# -- finding the processes ---------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    return os.path.isdir(f"/proc/{pid}")


def children(pid: int) -> list[int]:
    """Child pids of `pid` (from /proc/PID/task/*/children, else by scanning every process's parent)."""
    try:
        kids: list[int] = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
        return kids
    except FileNotFoundError:
        if not _alive(pid):
            return []
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(name))
    return kids


def _ns(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _inner_pid(pid: int) -> int | None:
    """The pid of `pid` in its own (innermost) pid namespace."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return None


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def sandbox_runtime(supervisor: int) -> int | None:
    """The host pid of a sandboxed container's runtime: the child of the init (the supervisor's child in another
    pid namespace) whose pid inside is the supervisor's host pid. None while the sandbox is still being set up,
    the runtime's own setup included: until it executes its command it is a copy of the init, with the init's
    working directory, environment and user (a command entering it then would get those)."""
    own = _ns(supervisor, "pid")
    inits = [p for p in children(supervisor) if _ns(p, "pid") not in (None, own)]
    for init in inits:
        kids = children(init)
        found = next((k for k in kids if _inner_pid(k) == supervisor), None)
        if found is None and len(kids) == 1:
            found = kids[0]  # the kernel could not give it the supervisor's pid number
        if found is not None:
            started = _cmdline(found)
            return found if started is not None and started != _cmdline(init) else None
    return None


def read_environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except PermissionError as exc:
        raise ExecError(f"cannot read the container's environment ({exc.strerror}): run as the control plane's "
                        "user or as root") from exc
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[os.fsdecode(k)] = os.fsdecode(v)
    return env


def _root_ids(pid: int) -> tuple[int, int] | None:
    ids = []
    for name in ("uid_map", "gid_map"):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                rows = [line.split() for line in f]
        except OSError:
            return None
        outside = [int(r[1]) for r in rows if len(r) == 3 and r[0] == "0"]
        if not outside:
            return None
        ids.append(outside[0])
    return ids[0], ids[1]


def find_target(info: dict, timeout: float = 10.0) -> ExecTarget:
    """The target of a command in the container `info` describes (`GET /v1/containers/{id}`), waiting up to
    `timeout` seconds for a sandbox still being set up."""
    cid = info.get("container_id", "?")
    pid = info.get("pid")
    if not pid:
        raise ExecError(f"container {cid} has no process yet (state: {info.get('state')}"
                        + (f", {info['pending_reason']}" if info.get("pending_reason") else "") + ")")
    sandboxed = bool(info.get("sandboxed"))
    deadline = time.monotonic() + timeout
    while True:
        if not _alive(pid):
            raise ExecError(f"container {cid} is not running (its process {pid} is gone)")
        runtime = sandbox_runtime(pid) if sandboxed else pid
        if runtime is not None:
            break
        if time.monotonic() > deadline:
            raise ExecError(f"container {cid}: its sandbox did not come up within {timeout:g}s")
        time.sleep(0.02)
    env = read_environ(runtime)
    for name in _DROPPED_ENV:
        env.pop(name, None)
    env.update(info.get("env") or {})  # what it was given after it started (a warm container's secrets)
    target = ExecTarget(cid, sandboxed, runtime, env)
    if sandboxed:
        target.cgroups = list(info.get("cgroups") or [])
        target.root_ids = _root_ids(runtime)
    else:
        try:
            target.cwd = os.readlink(f"/proc/{runtime}/cwd")
        except OSError:
            target.cwd = None
    return target


# -- running the command -----------------------------------------------------------------------------------------
def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=_SYSTEM_PATH)
    if path is None:
        raise ExecError(f"`{name}` (util-linux) is needed to enter a sandboxed container, and it is not on PATH")
    return path


def command_argv(target: ExecTarget, cmd: list[str], pty: bool) -> list[str]:
    """The argv that runs `cmd` in the container (for a sandbox: through nsenter; with `pty`, as the leader of a
    new session whose controlling terminal is its stdin)."""
    if not target.sandboxed:
        return list(cmd)
    argv = [_tool("nsenter"), f"--target={target.pid}", "--user", "--mount", "--pid", "--net", "--ipc", "--uts",
            "--root", "--wd", "--"]
    if pty:
        argv += [_tool("setsid"), "--wait", "--ctty"]  # the host's, at the same path inside (/usr is bound)
    return argv + list(cmd)


def prepare_process(target: ExecTarget) -> None:
    """In the process about to execute nsenter: join the container's cgroups (best effort), so what it runs counts
    against the container's limits, and set `no_new_privs`, as the runtime has it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    for d in target.cgroups:
        try:
            fd = os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        except OSError:
            pass


def open_pty(target: ExecTarget) -> tuple[int, int]:
    """A pseudo-terminal (master, slave) for a command in the container: from the container's own devpts, owned by
    its root, for a sandbox; an ordinary one of the host's otherwise."""
    if not target.sandboxed:
        return os.openpty()
    try:
        master = os.open(f"/proc/{target.pid}/root/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ExecError(f"container {target.container_id} has no pseudo-terminals ({exc.strerror})") from exc
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        if target.root_ids is not None:
            try:
                os.fchown(slave, *target.root_ids)
            except OSError:
                pass  # rootless: it is ours already
    except OSError as exc:
        os.close(master)
        raise ExecError(f"cannot open a pseudo-terminal in container {target.container_id}: {exc}") from exc
    return master, slave


def become_session_leader_of_stdin() -> None:
    """(isolation=process, with a pty) In the child: its stdin, the pty's slave, becomes its controlling terminal
    (it runs in a session of its own: `start_new_session=True`)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
