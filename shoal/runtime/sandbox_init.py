"""Builds one container's sandbox and runs the container runtime inside it (Linux).

The local backend runs this file as a script, `python -I -S sandbox_init.py CONFIG_JSON`, with the environment
the runtime is to get. It imports only the standard library and never anything from a user's path, and it is
single-threaded, as `unshare`/`setns` of a user namespace require. Three processes make a container:

    supervisor (the backend's child, on the host side)
      └─ init (pid 1 of the container's pid namespace)
           └─ runtime (`python -m shoal.runtime`, the user's code)

The supervisor, still the host's root, unshares the mount, pid, ipc, uts and network namespaces, brings up the
loopback device, opens the listening sockets the backend forwards to the host (the control plane's HTTP URL),
and builds the container's root on a fresh tmpfs: the host's system directories read-only, the interpreter and
the image at their own paths read-only, the app's source under `/root`, private `/tmp`, `/root`, `/run`,
`/dev/shm`, a minimal `/dev`, the control plane's socket at `/run/shoal/control.sock`. Because every mount is
made by the host's root in a mount namespace the container's user namespace does not own, the container can
neither unmount nor remount any of them: read-only stays read-only.

The init joins the container's cgroups, mounts `/proc` and `/sys`, pivots into the new root, joins the
container's user namespace (root inside, an unprivileged uid range outside) and forks the runtime with the pid
number of the supervisor on the host, so `os.getpid()` in a container is still unique on the machine and names
a process the host can signal. It forwards termination signals, reaps orphans, and when the runtime exits,
reports its wait status to the supervisor, which exits the same way.

Rootless mode (the control plane is not root): the supervisor first enters a user namespace mapping its own uid
to root, builds the same root there, and the init locks the mounts by entering one more user and mount
namespace before running the runtime.

Setup failures print `shoal sandbox: …` to stderr and exit with status 121.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` would import enum (+5 ms)
import _socket as socket  # likewise
import ctypes
import errno
import fcntl
import marshal
import os
import struct
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_IDMAP = 0x1, 0x2, 0x4, 0x100000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SIG_PARENT_DIED = signal.SIGRTMIN + 2  # the supervisor's parent-death signal: caught, so it can clean up
SIOCSIFFLAGS, IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x8914, 0x1, 0x8, 0x40

# Syscalls glibc has no wrapper for; the new mount API has the same numbers on every architecture.
_ARCH = os.uname().machine
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}.get(_ARCH, -1)
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442

SETUP_FAILED = 121
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


_TRACE: list = []


def trace(label: str) -> None:
    """With `trace` in the config, step timings go to stderr (see docs/sandbox.md)."""
    if _TRACE:
        now = time.perf_counter()
        _TRACE.append((label, now))


def print_trace() -> None:
    if _TRACE:
        t0 = _TRACE[0][1]
        steps = " ".join(f"{label}={(t - t0) * 1000:.1f}" for label, t in _TRACE[1:])
        os.write(2, f"shoal sandbox trace (ms since start): {steps}\n".encode())


class SetupError(Exception):
    pass


def check_syscall(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} ({errno.errorcode.get(err, err)})")
    return ret


def _b(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    check_syscall(libc.mount(_b(src), _b(dst), _b(fstype), flags, _b(data)), f"mount {src or fstype} on {dst}")


def unshare(flags: int) -> None:
    check_syscall(libc.unshare(flags), "unshare")


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def set_mount_attrs(path: str, attrs: int, recursive: bool = True, fd: int | None = None,
                    userns_fd: int = 0) -> bool:
    """mount_setattr(2) on a path (or a detached tree's fd); False where the kernel lacks it."""
    attr = MountAttr(attrs, 0, 0, userns_fd)
    flags = AT_RECURSIVE if recursive else 0
    if fd is not None:
        ret = libc.syscall(SYS_MOUNT_SETATTR, fd, b"", flags | 0x1000, ctypes.byref(attr), ctypes.sizeof(attr))
    else:
        ret = libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, _b(path), flags, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            return False
        check_syscall(ret, f"mount_setattr {path}")
    return True


def bind(src: str, dst: str, writable: bool, idmap_fd: int | None = None) -> None:
    """Bind `src` (and what is mounted below it) at `dst`; read-only unless `writable`. With `idmap_fd`, the
    mount shows files owned by the host's ids as owned by the same ids inside the container (idmapped mount),
    so a writable share behaves as it does for the host's root."""
    if idmap_fd is not None and writable:
        tree = libc.syscall(SYS_OPEN_TREE, AT_FDCWD, _b(src), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
        if tree >= 0:
            try:
                if set_mount_attrs(src, MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID, fd=tree, userns_fd=idmap_fd):
                    check_syscall(libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, _b(dst), MOVE_MOUNT_F_EMPTY_PATH),
                           f"move_mount {src} to {dst}")
                    return
            except SetupError:
                pass  # this filesystem cannot be idmapped: a plain bind mount instead
            finally:
                os.close(tree)
    mount(src, dst, None, MS_BIND | MS_REC)
    attrs = MOUNT_ATTR_NOSUID | (0 if writable else MOUNT_ATTR_RDONLY)
    if not set_mount_attrs(dst, attrs):
        mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if writable else MS_RDONLY))


def tmpfs(dst: str, mode: str, owner: tuple[int, int] | None, flags: int = MS_NOSUID | MS_NODEV,
          size: str | None = None) -> None:
    opts = [f"mode={mode}"]
    if owner is not None:
        opts += [f"uid={owner[0]}", f"gid={owner[1]}"]
    if size:
        opts.append(f"size={size}")
    mount("tmpfs", dst, "tmpfs", flags, ",".join(opts))


def make_mountpoint(path: str, like: str | None) -> None:
    """An empty directory, or an empty file when `like` is not a directory."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if like is not None and not os.path.isdir(like):
        if not os.path.lexists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    else:
        os.makedirs(path, exist_ok=True)


def write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def loopback_up() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING, b""))
    finally:
        s.close()


# -- the container's network (shoal/backends/egress.py decides; docs/sandbox.md) -------------------------------
RTM_NEWRULE, NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL = 32, 1, 4, 0x400, 0x200
FRA_DST, FRA_PRIORITY, FRA_TABLE, FRA_IP_PROTO, FRA_DPORT_RANGE = 1, 6, 15, 22, 24
FR_ACT_TO_TBL, FR_ACT_PROHIBIT, RT_TABLE_MAIN, IPPROTO_UDP = 1, 8, 254, 17
FIRST_RULE_PRIORITY = 100  # after the local table's rule (0), before the main table's (32766)


def _rtattr(kind: int, data: bytes) -> bytes:
    return struct.pack("HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def add_rules(rules: list, priority: int | None = None) -> None:
    """Install the egress rules ((action, cidr, udp port)) as policy-routing rules in our network namespace,
    in order (or all at `priority`); a blocked destination then fails with EACCES before any packet reaches
    pasta."""
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    try:
        nl.bind((0, 0))
        for seq, (action, cidr, port) in enumerate(rules, start=1):
            addr, _, plen = cidr.partition("/")
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            raw = socket.inet_pton(family, addr)
            prefix = int(plen) if plen else len(raw) * 8
            act = FR_ACT_TO_TBL if action == "allow" else FR_ACT_PROHIBIT
            body = struct.pack("BBBBBBBBI", family, prefix, 0, 0, RT_TABLE_MAIN if act == FR_ACT_TO_TBL else 0,
                               0, 0, act, 0)
            body += _rtattr(FRA_PRIORITY, struct.pack("I", FIRST_RULE_PRIORITY + seq if priority is None else priority))
            if prefix:
                body += _rtattr(FRA_DST, raw)
            if act == FR_ACT_TO_TBL:
                body += _rtattr(FRA_TABLE, struct.pack("I", RT_TABLE_MAIN))
            if port:
                body += _rtattr(FRA_IP_PROTO, bytes([IPPROTO_UDP])) + _rtattr(FRA_DPORT_RANGE,
                                                                               struct.pack("HH", port, port))
            flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
            nl.send(struct.pack("IHHII", 16 + len(body), RTM_NEWRULE, flags, seq, 0) + body)
            reply = nl.recv(65536)
            (err,) = struct.unpack_from("i", reply, 16)
            if err and not (port or (family == socket.AF_INET6 and -err == errno.EAFNOSUPPORT)):
                # (a kernel without IPv6 needs no IPv6 rules; one without port-matching rules, before 4.17,
                # has no DNS through pasta, which fails safe)
                raise SetupError(f"network rule {action} {cidr}: {os.strerror(-err)}")
    finally:
        nl.close()


class Pasta:
    """pasta, the container's way out: forked before any namespace is made (it must live in the host's network
    namespace, and rootless in the host's user namespace), started once ours exists, and dying with us."""

    def __init__(self, argv: list) -> None:
        self.go_r, self.go_w = os.pipe()
        self.ready_r, ready_w = os.pipe()
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                os.close(self.go_w)
                os.close(self.ready_r)
                if os.getppid() != parent or os.read(self.go_r, 1) != b"G":
                    os._exit(SETUP_FAILED)
                fds = [os.open(f"/proc/{parent}/ns/net", os.O_RDONLY), ready_w]
                args = ["-P", f"/proc/self/fd/{ready_w}", "--netns", f"/proc/self/fd/{fds[0]}"]
                if os.geteuid() == 0:
                    args += ["--runas", "0"]  # else it drops to nobody, who may not enter the namespace
                else:  # rootless: enter the user namespace that owns ours (we own it)
                    fds.append(os.open(f"/proc/{parent}/ns/user", os.O_RDONLY))
                    args += ["--userns", f"/proc/self/fd/{fds[2]}"]
                for fd in fds:
                    os.set_inheritable(fd, True)
                null = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)  # pasta complains about syslog on stderr: not the container's output
                # Python ignores SIGPIPE, and that survives exec: pasta takes an ignored SIGPIPE for an error.
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                os.execve(argv[0], [*argv, *args], {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            except BaseException:  # noqa: BLE001
                pass
            os._exit(SETUP_FAILED)
        os.close(self.go_r)
        os.close(ready_w)

    def start(self) -> None:
        os.write(self.go_w, b"G")
        os.close(self.go_w)

    def wait_ready(self) -> None:
        """pasta writes its pid once the namespace's interface is up and configured."""
        out = b""
        while True:
            chunk = os.read(self.ready_r, 32)
            if not chunk:
                break
            out += chunk
            if out.endswith(b"\n"):
                break
        os.close(self.ready_r)
        if not out.strip().isdigit():
            raise SetupError("pasta could not set up the container's network")

    def stop(self) -> None:
        """Kill it without waiting: tearing pasta down takes ~40 ms, which the container's exit need not wait
        for (its cgroup's removal retries until pasta is gone)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


# -- the supervisor ----------------------------------------------------------------------------------------------
def make_userns(uid: int, gid: int, count: int) -> int:
    """A user namespace mapping container ids 0..count-1 to host ids uid.. (written by us, the host's root);
    returns an fd on it. A short-lived child creates it, since we must stay in the host's namespace."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            unshare(CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(go_r, 1)  # wait until the parent has written the maps and opened the namespace
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise SetupError("could not create a user namespace")
        write_file(f"/proc/{pid}/uid_map", f"0 {uid} {count}\n")
        write_file(f"/proc/{pid}/gid_map", f"0 {gid} {count}\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(go_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def map_self_as_root() -> None:
    """Rootless: enter a user namespace where our own uid and gid are root."""
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER)
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", f"0 {uid} 1\n")
    write_file("/proc/self/gid_map", f"0 {gid} 1\n")


def overlaid_ops(cfg: dict) -> list[tuple[str, int, tuple]]:
    """What either kind of root gets on top of its base, as (path inside, order at equal depth, op): host paths at
    their own path, binds, masks over the control plane's state, shoal Volumes (controlplane/volumes.py)."""
    return [*((p, 2, ("bind", p, False)) for p in cfg.get("ro", [])),
            *((p, 2, ("bind", p, True)) for p in cfg.get("rw", [])),
            *((dst, 3, ("bind", src, rw)) for src, dst, rw in cfg.get("binds", [])),
            *((p, 4, ("mask",)) for p in cfg.get("mask", [])),
            *((p, 5, ("volume", lower, up, wk)) for p, lower, up, wk in cfg.get("volumes", []))]


def build_root(cfg: dict, root: str, owner: tuple[int, int], idmap_fd: int | None) -> None:
    """Mount the container's filesystem under `root` (in our private mount namespace)."""
    if cfg.get("rootfs"):
        sys.modules["sandbox_rootfs"].build_rootfs(cfg, root, owner, idmap_fd)  # (sandbox_rootfs.py)
        return
    tmpfs(root, "0755", None, MS_NOSUID | MS_NODEV, size="1m")
    ops: list[tuple[str, int, tuple]] = []  # (path inside, order at equal depth, op)
    overlays = cfg.get("overlays", {})
    writable_system = {v[0] for v in cfg.get("volumes", []) if v[0] in [("/" + s) for s in SYSTEM_DIRS]}
    for name in SYSTEM_DIRS:
        host = "/" + name
        if host in writable_system:  # a build's: a writable overlay (below)
            continue
        if os.path.islink(host):
            ops.append((host, 0, ("symlink", os.readlink(host))))
        elif host in overlays:  # the image's files over the host's (read-only overlayfs)
            ops.append((host, 0, ("overlay", overlays[host])))
        elif os.path.isdir(host):
            ops.append((host, 0, ("bind", host, False)))
    ops.append(("/tmp", 0, ("tmpfs", "1777", None)))
    ops.append(("/root", 0, ("tmpfs", "0700", owner)))
    ops.append(("/run", 0, ("tmpfs", "0755", owner)))
    ops.append(("/var", 0, ("dir",)))
    ops.append(("/var/tmp", 0, ("symlink", "/tmp")))
    ops.append(("/dev", 0, ("dev",)))
    ops.append(("/dev/shm", 1, ("tmpfs", "1777", None)))
    for path in ("/proc", "/sys", "/home", "/mnt", "/opt"):
        ops.append((path, 0, ("dir",)))
    ops += overlaid_ops(cfg)
    ops.sort(key=lambda op: (depth(op[0]), op[1]))
    done: list[str] = []
    # Coverable by a bind: a build's /root, /opt are the image's files/root, files/opt.
    tmpfs_dirs = {path for path, _, op in ops if op[0] in ("tmpfs", "dir")}
    for path, _, op in ops:
        target = root + path
        kind = op[0]
        if path in done and kind != "mask" and not (kind == "bind" and path in tmpfs_dirs):
            continue  # already provided (an interpreter under a system dir, a duplicate); a bind covers a tmpfs
        if kind == "symlink":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.lexists(target):
                os.symlink(op[1], target)
        elif kind == "dir":
            os.makedirs(target, exist_ok=True)
        elif kind == "tmpfs":
            make_mountpoint(target, None)
            tmpfs(target, op[1], op[2])
        elif kind == "bind":
            src, writable = op[1], op[2]
            if not os.path.lexists(src):
                continue
            if _covered(path, done, root):
                continue
            make_mountpoint(target, src)
            bind(src, target, writable, idmap_fd)
        elif kind == "overlay":
            make_mountpoint(target, None)
            lower = ":".join(d.replace(":", "\\:") for d in op[1])
            try:
                mount("overlay", target, "overlay", MS_RDONLY | MS_NOSUID, f"lowerdir={lower}")
            except SetupError:
                bind(path, target, False)  # no overlayfs here: the host's directory without the image's files
        elif kind == "mask":
            if os.path.isdir(target):
                # An empty directory of the host's root: the container can pass through it to what is mounted
                # below (an image under the state dir) but cannot list or write it.
                tmpfs(target, "0711", None, MS_NOSUID | MS_NODEV, size="4k")
            elif os.path.exists(target):
                mount("/dev/null", target, None, MS_BIND)
        elif kind == "dev":
            make_dev(target, cfg.get("devices", []))
        elif kind == "volume":
            make_mountpoint(target, None)
            mount_volume(target, *op[1:], userxattr=cfg.get("mode") == "rootless")
        done.append(path)
    os.makedirs(root + "/run/shoal", exist_ok=True)
    if cfg.get("resolv"):
        resolv_conf(root, cfg["resolv"])


def resolv_conf(root: str, text: str) -> None:
    """The container's DNS: `text` (pasta's address) bound read-only over /etc/resolv.conf (or the file it links
    to, e.g. systemd-resolved's under /run); left as it is where there is no such file to cover."""
    target = root + "/etc/resolv.conf"
    if os.path.islink(target):
        target = root + os.path.normpath(os.path.join("/etc", os.readlink(target)))
        if not target.startswith(root + "/run/"):
            return
        make_mountpoint(target, "")
    if not os.path.isfile(target):
        return
    src = root + "/run/shoal/resolv.conf"
    fd = os.open(src, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    bind(src, target, False)


def mount_volume(target: str, lower: str, upper: str | None, work: str | None, userxattr: bool) -> None:
    """A volume's committed version (`lower`) with the container's own writes in `upper` (overlayfs), or the
    version alone, read-only. Redirects, metacopy and the index stay off: every change the container makes is
    a plain file, directory or whiteout in `upper`, which is what a commit merges."""
    if upper is None:
        bind(lower, target, False)
        return

    def esc(p: str | None) -> str:
        return str(p).replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")

    opts = f"lowerdir={esc(lower)},upperdir={esc(upper)},workdir={esc(work)},redirect_dir=off,metacopy=off,index=off"
    mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV, opts + (",userxattr" if userxattr else ""))


def _covered(path: str, done: list[str], root: str) -> bool:
    """True when `path` already shows through a read-only bind of a parent of it (e.g. a venv under /usr)."""
    for d in done:
        if path.startswith(d + "/") and d in [("/" + s) for s in SYSTEM_DIRS]:
            return True
    return False


def make_dev(target: str, extra: list[str]) -> None:
    make_mountpoint(target, None)
    tmpfs(target, "0755", None, MS_NOSUID)
    for name in DEVICES:
        host = f"/dev/{name}"
        if os.path.exists(host):
            make_mountpoint(f"{target}/{name}", host)
            mount(host, f"{target}/{name}", None, MS_BIND)
    for host in extra:  # GPUs
        if os.path.exists(host):
            make_mountpoint(target + host[4:], host)
            mount(host, target + host[4:], None, MS_BIND | (MS_REC if os.path.isdir(host) else 0))
    for name, dest in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                       ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore"), ("ptmx", "pts/ptmx")):
        os.symlink(dest, f"{target}/{name}")
    os.mkdir(f"{target}/pts")
    try:
        mount("devpts", f"{target}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    except SetupError:
        pass  # no pseudo-terminals in this container


def open_listeners(ports: list[int]) -> list:
    socks = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # every 127.x address (web URLs are 127.77.x.y); pasta's interface, if any, forwards nothing inbound
        s.bind(("0.0.0.0", port))
        s.listen(512)
        socks.append(s)
    return socks


def supervise(cfg: dict) -> None:
    # If the control plane dies (even by SIGKILL), end the container and remove its cgroups: nobody else will.
    orphan = {"child": 0, "orphaned": False}

    def on_parent_death(_signum: int, _frame: object) -> None:
        orphan["orphaned"] = True
        if not orphan["child"]:
            os._exit(SETUP_FAILED)  # no container yet (leftover cgroups are collected by the next control plane)
        try:
            os.kill(orphan["child"], signal.SIGKILL)
        except ProcessLookupError:
            pass

    signal.signal(SIG_PARENT_DIED, on_parent_death)
    libc.prctl(PR_SET_PDEATHSIG, SIG_PARENT_DIED)
    tcp = cfg.get("control_tcp")
    if tcp:
        # A control plane on another machine (the Ray backend): connected before the network namespace is
        # unshared, since the container's own namespace may not reach it (only `lo`, or egress that refuses private
        # ranges); inherited like the unix socket below.
        ctl = socket.socket(socket.AF_INET6 if ":" in tcp[0] else socket.AF_INET, socket.SOCK_STREAM)
        ctl.connect((tcp[0], int(tcp[1])))
        ctl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctl_fd = ctl.detach()
        os.set_inheritable(ctl_fd, True)
        os.environ["SHOAL_CONTROL"] = f"fd:{ctl_fd}"
        cfg["_control_fd"] = ctl_fd
    _oom_score_adj("-1000")  # in the container's cgroup too: its OOM kills should pick the container's own code
    net = cfg.get("net")  # outbound network: the egress rules, and pasta's argv or a namespace pasta serves
    pasta = Pasta(net["pasta"]) if net and net.get("netns_fd") is None else None
    rootless = cfg.get("mode") == "rootless"
    if rootless:
        map_self_as_root()
        owner = (0, 0)
        idmap_fd = None
    else:
        owner = (cfg["uid"], cfg["gid"])
        idmap_fd = make_userns(cfg["uid"], cfg["gid"], cfg["ids"])
    trace("userns")
    if net and net.get("netns_fd") is not None:  # made ahead, pasta already attached (backends/netpool.py)
        unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS)
        check_syscall(libc.setns(net["netns_fd"], CLONE_NEWNET), "joining the container's network namespace")
        os.close(net["netns_fd"])
    else:
        unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    trace("unshare")
    libc.sethostname(_b(cfg.get("hostname", "shoal")), len(cfg.get("hostname", "shoal")))
    loopback_up()
    write_file("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")  # this namespace only
    if pasta is not None:
        pasta.start()
    listeners = open_listeners(cfg.get("listen", []))
    control = cfg.get("control")
    if control:
        # Connected here, as the host's root, and inherited: the runtime needs no access to the socket's path.
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl.connect(control)
        ctl_fd = ctl.detach()
        os.set_inheritable(ctl_fd, True)
        os.environ["SHOAL_CONTROL"] = f"fd:{ctl_fd}"
        cfg["_control_fd"] = ctl_fd
    chan_fd = cfg.get("chan_fd")
    chan = None
    if chan_fd is not None:
        chan = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, chan_fd)
        if listeners:
            fds = struct.pack(f"{len(listeners)}i", *[s.fileno() for s in listeners])
            chan.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    for s in listeners:
        s.close()
    trace("net")
    root = cfg["newroot"]
    os.makedirs(root, exist_ok=True)
    build_root(cfg, root, owner, idmap_fd)
    trace("mounts")

    if chan is not None:
        if cfg.get("wait_go"):
            # The backend moves us into the container's cgroups meanwhile (a cgroup migration can take 10-20 ms:
            # done while this interpreter starts, not after); the init and the runtime are forked inside them.
            if chan.recv(1) != b"G":
                raise SetupError("the control plane could not place the container in its cgroup")
            trace("cgroup")
        chan.close()
    # The init's pivot_root changes this process's root too (one mount namespace): what the supervisor needs of
    # the host afterwards (removing the cgroups if the control plane dies) is opened now.
    cleanup = open_cgroup_cleanup(cfg)
    if net:
        if pasta is not None:
            pasta.wait_ready()  # (started meanwhile, with the mounts and the cgroup move)
        # Only now: pasta's default route is checked against the rules (its gateway may be in a blocked range).
        # Nothing of the container runs yet.
        add_rules(net["rules"])
        trace("pasta")
    status_r, status_w = os.pipe()
    trace("prefork")
    pid = os.fork()
    if pid == 0:
        try:
            trace("forked")
            for fd in cleanup["fds"]:
                os.close(fd)
            os.close(status_r)
            container_init(cfg, root, idmap_fd, status_w, rootless)
        except BaseException as exc:  # noqa: BLE001
            _fail(exc)
        os._exit(SETUP_FAILED)
    orphan["child"] = pid
    os.close(status_w)
    if idmap_fd is not None:
        os.close(idmap_fd)
    if cfg.get("_control_fd") is not None:
        os.close(cfg["_control_fd"])

    forward_signals(pid)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = SETUP_FAILED << 8
            break
        except InterruptedError:
            continue
    reported = b""
    try:
        reported = os.read(status_r, 8)
    except OSError:
        pass
    if len(reported) == 4:
        (status,) = struct.unpack("i", reported)  # the runtime's own wait status
    if pasta is not None:
        pasta.stop()
    if orphan["orphaned"]:
        remove_cgroups(cleanup)
    mirror(status)


def open_cgroup_cleanup(cfg: dict) -> dict:
    """Descriptors for leaving and removing the container's cgroups without looking up host paths later."""
    out: dict = {"fds": [], "homes": [], "dirs": []}
    try:
        for home in cfg.get("cgroup_homes", []):
            fd = os.open(os.path.join(home, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
            out["fds"].append(fd)
            out["homes"].append(fd)
        for d in cfg.get("cgroup_dirs", []):
            pfd = os.open(os.path.dirname(d), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            out["fds"].append(pfd)
            out["dirs"].append((pfd, os.path.basename(d)))
    except OSError:
        pass  # best effort: the next control plane collects what is left
    return out


def remove_cgroups(cleanup: dict) -> None:
    """Leave the container's cgroups (back to the control plane's own) and remove them (not their shared parent:
    other containers may be being created in it)."""
    for fd in cleanup["homes"]:
        try:
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            pass
    for pfd, name in cleanup["dirs"]:
        for _ in range(200):
            try:
                os.rmdir(name, dir_fd=pfd)
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:  # (ENOENT: gone already)
                    break
                time.sleep(0.01)


def forward_signals(pid: int) -> None:
    """Pass termination and user signals on to `pid` (the process this one stands in front of)."""
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)


def mirror(status: int) -> None:
    """Exit the way a process with wait status `status` did."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL, SIGSTOP: no handler to reset
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else SETUP_FAILED)


# -- the container's init ---------------------------------------------------------------------------------------
def _oom_score_adj(value: str) -> None:
    try:
        write_file("/proc/self/oom_score_adj", value)
    except OSError:
        pass


def container_init(cfg: dict, root: str, idmap_fd: int | None, status_w: int, rootless: bool) -> None:
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _oom_score_adj("0")  # the supervisor's -1000 is not for the container
    for path in cfg.get("cgroups", []):  # joined here when the backend did not move the supervisor itself
        try:
            write_file(os.path.join(path, "cgroup.procs"), "0")
        except OSError as exc:
            raise SetupError(f"joining cgroup {path}: {exc}") from exc
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    trace("procfs")
    try:
        mount("sysfs", root + "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    except SetupError:
        pass
    # The runtime gets the supervisor's host pid as its own: unique on the machine, and a pid the host can kill.
    want_pid = int(cfg.get("_supervisor_pid", 0))
    if want_pid > 2:
        try:
            write_file(root + "/proc/sys/kernel/ns_last_pid", str(want_pid - 1))
        except OSError:
            pass
    trace("proc")
    os.chdir(root)
    check_syscall(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    check_syscall(libc.umount2(b".", MNT_DETACH), "unmount the host's root")
    os.chdir("/")
    if not cfg.get("rootfs"):  # (an image's root stays writable: its writes go to the overlay's upper)
        mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    if rootless:
        # Lock every mount: a mount namespace owned by a less privileged user namespace cannot undo them.
        unshare(CLONE_NEWUSER | CLONE_NEWNS)
        write_file("/proc/self/setgroups", "deny")
        write_file("/proc/self/uid_map", "0 0 1\n")
        write_file("/proc/self/gid_map", "0 0 1\n")
    else:
        assert idmap_fd is not None
        check_syscall(libc.setns(idmap_fd, CLONE_NEWUSER), "joining the container's user namespace")
        os.close(idmap_fd)
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a uid change clears it
    trace("pivot+userns")
    print_trace()

    argv = cfg["argv"]
    cwd = cfg.get("cwd") or "/root"
    child = os.fork()
    if child == 0:
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                        signal.SIGUSR2, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            if cfg.get("user"):  # the image's USER (its ids inside the container's range)
                sys.modules["sandbox_rootfs"].switch_user(cfg["user"])
            for d in (cwd, "/root", "/"):
                try:
                    os.chdir(d)
                    break
                except OSError:
                    continue
            os.environ["SHOAL_T_EXEC"] = repr(time.time())  # the sandbox is built: the interpreter starts now
            os.execve(argv[0], argv, os.environ)
        except BaseException as exc:  # noqa: BLE001
            _fail(exc)
        os._exit(SETUP_FAILED)

    if cfg.get("_control_fd") is not None:
        os.close(cfg["_control_fd"])  # the runtime's alone: its exit must close the stream

    forward_signals(child)
    while True:  # reap every orphan; stop when the runtime exits (the kernel then ends the rest)
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(SETUP_FAILED)
        if pid == child:
            os.write(status_w, struct.pack("i", status))
            os._exit(0)


def _fail(exc: BaseException) -> None:
    msg = str(exc) if isinstance(exc, (SetupError, OSError)) else f"{type(exc).__name__}: {exc}"
    try:
        os.write(2, f"shoal sandbox: {msg}\n".encode())
    except OSError:
        pass


def main() -> None:
    try:
        cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
        if cfg.get("trace"):
            _TRACE.append(("start", float(cfg["trace"])))
            trace("imported")
        if "late_rules" in cfg:
            # The backend adds rules to a running container's namespace (host addresses that appeared since it
            # started), ahead of the rules it started with.
            fd = os.open(cfg["netns"], os.O_RDONLY | os.O_CLOEXEC)
            check_syscall(libc.setns(fd, CLONE_NEWNET), "joining the container's network namespace")
            add_rules(cfg["late_rules"], FIRST_RULE_PRIORITY)
            os._exit(0)
        cfg["_supervisor_pid"] = os.getpid()
        if cfg.get("rootfs") or cfg.get("user"):  # an OCI image's: imported before the pivot hides its file
            import sandbox_rootfs  # noqa: F401
        supervise(cfg)
    except BaseException as exc:  # noqa: BLE001
        _fail(exc)
    os._exit(SETUP_FAILED)


if __name__ == "__main__":
    main()
