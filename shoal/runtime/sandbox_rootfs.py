"""A container's root filesystem made of OCI layers (docs/sandbox.md "Root filesystem from layers").

Part of the sandbox setup (sandbox_init.py, which imports this module only for containers and build steps on an
OCI image): the image's layers as an overlayfs with a writable upper, the container's own mounts on top, and the
image's USER. Like sandbox_init, standard library only.
"""

from __future__ import annotations

import ctypes
import os

from sandbox_init import (
    AT_FDCWD,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    MOVE_MOUNT_F_EMPTY_PATH,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    SYS_MOVE_MOUNT,
    SetupError,
    _b,
    bind,
    check_syscall,
    depth,
    libc,
    make_dev,
    mount,
    mount_volume,
    overlaid_ops,
    tmpfs,
    trace,
)

SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 430, 431, 432
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
OWNER = [0, 0]  # the container's root as the host sees it: the owner of what the setup makes in the image


OVERLAY_OPTIONS = (("redirect_dir", "off"), ("metacopy", "off"), ("index", "off"))


def _esc(p: str) -> str:
    return p.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def mount_overlay(target: str, lowers: list, upper: str, work: str, userxattr: bool) -> None:
    """overlayfs of `lowers` (top first) with `upper`/`work` at `target`. Redirects, metacopy and the index stay
    off: every change is a plain entry or a whiteout in `upper` (what shoal/oci/upper.py turns into a layer). The
    new mount API takes one layer at a time (`lowerdir+`, Linux 6.8), so no page-sized option string limits how
    many layers an image has; older kernels get that string."""
    fs = libc.syscall(SYS_FSOPEN, b"overlay", 1)
    if fs >= 0:
        try:
            def conf(cmd: int, key: bytes | None, value: bytes | None) -> int:
                return libc.syscall(SYS_FSCONFIG, fs, cmd, key, value, 0)

            if all(conf(FSCONFIG_SET_STRING, b"lowerdir+", _b(lower)) >= 0 for lower in lowers):
                for key, value in (("upperdir", upper), ("workdir", work), *OVERLAY_OPTIONS):
                    check_syscall(conf(FSCONFIG_SET_STRING, _b(key), _b(value)), f"overlay option {key}")
                if userxattr:
                    check_syscall(conf(FSCONFIG_SET_FLAG, b"userxattr", None), "overlay option userxattr")
                if conf(FSCONFIG_CMD_CREATE, None, None) < 0:
                    err = ctypes.get_errno()
                    try:
                        why = os.read(fs, 512).decode(errors="replace").strip()  # the kernel's own message
                    except OSError:
                        why = ""
                    raise SetupError(f"overlay of the image's layers: {os.strerror(err)}"
                                     + (f" ({why})" if why else ""))
                mnt = check_syscall(libc.syscall(SYS_FSMOUNT, fs, 1, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV), "fsmount")
                try:
                    check_syscall(libc.syscall(SYS_MOVE_MOUNT, mnt, b"", AT_FDCWD, _b(target), MOVE_MOUNT_F_EMPTY_PATH),
                                  f"move_mount overlay to {target}")
                finally:
                    os.close(mnt)
                return
        finally:
            os.close(fs)
    opts = [f"lowerdir={':'.join(_esc(x) for x in lowers)}", f"upperdir={_esc(upper)}", f"workdir={_esc(work)}"]
    opts += [f"{k}={v}" for k, v in OVERLAY_OPTIONS] + (["userxattr"] if userxattr else [])
    mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV, ",".join(opts))


def rootfs_path(root: str, path: str, is_dir: bool, created: list) -> str:
    """`root` + `path` as a mountpoint in the image's root: made where missing (the paths made are appended to
    `created`), never through a symlink of the image (it would lead to the host's files: nothing is pivoted yet)."""
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/") or any(p in (".", "..") for p in parts):
        raise SetupError(f"{path!r}: a mountpoint must be an absolute path without '.' or '..'")
    cur = root
    for i, part in enumerate(parts):
        cur = f"{cur}/{part}"
        inside = "/" + "/".join(parts[:i + 1])
        last = i == len(parts) - 1
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if last and not is_dir:
                os.close(os.open(cur, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
            else:
                os.mkdir(cur, 0o755)
            os.chown(cur, *OWNER, follow_symlinks=False)  # the container's root's (else unwritable inside)
            created.append(inside)
            continue
        if (st.st_mode & 0o170000) == 0o120000:
            raise SetupError(f"the image's {inside} is a symlink: {path} cannot be mounted there")
        if (not last or is_dir) and (st.st_mode & 0o170000) != 0o040000:
            raise SetupError(f"the image's {inside} is not a directory: {path} cannot be mounted there")
        if last and not is_dir and (st.st_mode & 0o170000) == 0o040000:
            raise SetupError(f"the image's {inside} is a directory: the file {path} cannot be mounted there")
    return cur


def build_rootfs(cfg: dict, root: str, owner: tuple[int, int], idmap_fd: int | None) -> None:
    """The root is the image: overlayfs of its layers with a writable upper (a build step's or a sandbox's
    directory on the host, or a private tmpfs gone with the container), then the container's own /proc, /sys,
    /dev, /dev/shm, /run/shoal, DNS file, binds and volumes on top. Nothing of the host's system directories."""
    rf = cfg["rootfs"]
    OWNER[:] = owner
    layers = [str(x) for x in rf["layers"]]
    upper, work = rf.get("upper"), rf.get("work")
    if not upper:
        tmpfs(root, "0755", None, MS_NOSUID | MS_NODEV)  # covered by the overlay below, reachable through it only
        upper, work = root + "/upper", root + "/work"
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)
    if not os.listdir(upper):  # the root directory is the upper's: the image's root's mode, the container root's
        os.chmod(upper, os.stat(layers[0]).st_mode & 0o7777)
        os.chown(upper, *owner)
    mount_overlay(root, layers, upper, work, userxattr=cfg.get("mode") == "rootless")
    trace("overlay")
    created: list = []
    ops: list[tuple[str, int, tuple]] = [
        ("/proc", 0, ("dir",)), ("/sys", 0, ("dir",)), ("/dev", 0, ("dev",)), ("/dev/shm", 1, ("tmpfs", "1777", None)),
        ("/run/shoal", 1, ("tmpfs", "0755", None))]
    ops += overlaid_ops(cfg)
    for path in cfg.get("driver_files", []):  # the host's GPU driver files, at their paths where the image allows
        ops.append((path, 3, ("bind", path, False, "optional")))
    ops.sort(key=lambda op: (depth(op[0]), op[1]))
    done: set = set()
    for path, _, op in ops:
        kind = op[0]
        if kind == "mask":
            if os.path.lexists(root + path):
                target = rootfs_path(root, path, os.path.isdir(root + path), created)
                if os.path.isdir(target):
                    tmpfs(target, "0711", None, MS_NOSUID | MS_NODEV, size="4k")
                else:
                    mount("/dev/null", target, None, MS_BIND)
            continue
        if path in done or (kind == "bind" and not os.path.lexists(op[1])):
            continue
        done.add(path)
        if kind == "dev":  # our own tmpfs: what is made in it is no part of the image
            make_dev(rootfs_path(root, path, True, created), cfg.get("devices", []))
        elif kind == "dir":
            rootfs_path(root, path, True, created)
        elif kind == "tmpfs":
            tmpfs(rootfs_path(root, path, True, created), op[1], op[2], size="1m" if path == "/run/shoal" else None)
        elif kind == "bind" and len(op) > 3:
            try:
                bind(op[1], rootfs_path(root, path, os.path.isdir(op[1]), created), False)
            except SetupError:
                pass  # the image has a symlink or a directory there: without that file (CUDA then says what it lacks)
        elif kind == "bind":
            bind(op[1], rootfs_path(root, path, os.path.isdir(op[1]), created), op[2], idmap_fd)
        elif kind == "volume":
            mount_volume(rootfs_path(root, path, True, created), *op[1:], userxattr=cfg.get("mode") == "rootless")
    hostname = cfg.get("hostname", "shoal")
    files = {"hosts": f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
             "hostname": hostname + "\n"}
    if cfg.get("resolv"):
        files["resolv.conf"] = cfg["resolv"]
    for name, text in files.items():  # the container's own, read-only, over the image's (as Docker does)
        target = f"{root}/etc/{name}"
        if os.path.islink(target) or os.path.lexists(target) and not os.path.isfile(target):
            continue  # (a symlink, e.g. into /run: left as the image has it)
        target = rootfs_path(root, f"/etc/{name}", False, created)
        src = f"{root}/run/shoal/{name}"
        fd = os.open(src, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        bind(src, target, False)
    for path in cfg.get("readable", []):  # (a container's own upper only: copied up there)
        target = rootfs_path(root, path, True, created)
        os.chmod(target, os.stat(target).st_mode & 0o7777 | 0o555)
    if cfg.get("cwd"):  # the working directory, made where the image lacks it (as Docker does)
        rootfs_path(root, cfg["cwd"], True, created)
    record = rf.get("record")
    if record:  # what the build's layer must leave out (shoal/oci/upper.py `skip`)
        fd = os.open(record, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, "".join(p + "\n" for p in created).encode())
        finally:
            os.close(fd)


def resolve_user(spec: str) -> tuple[int, int, list, str]:
    """USER of an image (`name`, `uid`, `name:group`, `uid:gid`) -> (uid, gid, groups, home), from the image's
    own /etc/passwd and /etc/group (read as files: no NSS module of the image is loaded)."""
    def table(path: str) -> list:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return [line.rstrip("\n").split(":") for line in f if line.count(":") >= 3]
        except OSError:
            return []

    user, _, group = spec.partition(":")
    passwd, groups = table("/etc/passwd"), table("/etc/group")
    entry = next((e for e in passwd if len(e) >= 6 and (e[0] == user or (user.isdigit() and e[2] == user))), None)
    if entry is not None:
        uid, gid, home, name = int(entry[2]), int(entry[3]), entry[5] or "/", entry[0]
    elif user.isdigit():
        uid, gid, home, name = int(user), 0, "/", ""
    else:
        raise SetupError(f"USER {spec!r}: no user {user!r} in the image's /etc/passwd")
    if group:
        g = next((e for e in groups if e[0] == group or (group.isdigit() and e[2] == group)), None)
        if g is None and not group.isdigit():
            raise SetupError(f"USER {spec!r}: no group {group!r} in the image's /etc/group")
        gid = int(g[2]) if g is not None else int(group)
    extra = sorted({int(e[2]) for e in groups if name and len(e) >= 4 and name in e[3].split(",")
                    and e[2].isdigit()} | {gid})
    return uid, gid, extra, home


def switch_user(spec: str) -> None:
    """Become the image's USER (in the runtime's process, after the pivot, before exec)."""
    uid, gid, groups, home = resolve_user(spec)
    if groups != [0] or uid or gid:
        try:
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        except OSError as exc:
            raise SetupError(f"USER {spec!r}: cannot switch to uid {uid} gid {gid} here ({exc.strerror})") from None
    os.environ.setdefault("HOME", home)
