"""Swaps a Volume's mount inside a running sandbox, for `Volume.reload()` (Linux, control plane as root).

Run by the control plane as `python -I -S -c BOOT <hex marshalled config>`, single-threaded (entering a mount
namespace requires it). The mount at the container's path was made by the host's root in a mount namespace the
container cannot change (docs/sandbox.md), so the host makes the new one:

1. the new overlay (the current version below, a fresh upper directory above) or, for a read-only mount, a
   read-only bind of the version, is built as a detached mount with the new mount API, here in the host's
   mount namespace, where its layers' paths resolve (the container cannot see them);
2. the helper enters the container's mount namespace (`/proc/<supervisor pid>/ns/mnt`);
3. it unmounts the old mount, without MNT_DETACH: while a file or a working directory is open under it this
   fails with EBUSY, the helper exits with status 2 and nothing has changed ("volume busy");
4. it attaches the new mount at the same path (`move_mount`). Between 3 and 4 the path is an empty directory.

Exit status 0 on success, 2 when busy, 1 on any other failure (the reason on stderr).
"""

from __future__ import annotations

import ctypes
import errno
import marshal
import os
import sys

import sandbox_init as sb

SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 430, 431, 432
FSOPEN_CLOEXEC, FSMOUNT_CLOEXEC = 1, 1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
BUSY = 2

libc = sb.libc


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def overlay_options(lower: str, upper: str, work: str, userxattr: bool) -> list[tuple[str, str | None]]:
    """The overlay options every volume mount uses: features that would store part of a change elsewhere than
    in the upper directory's plain files and whiteouts (redirects, metacopy, the index) stay off."""
    opts: list[tuple[str, str | None]] = [("lowerdir", _escape(lower)), ("upperdir", _escape(upper)),
                                          ("workdir", _escape(work)),
                                          ("redirect_dir", "off"), ("metacopy", "off"), ("index", "off")]
    if userxattr:
        opts.append(("userxattr", None))
    return opts


def detached_overlay(lower: str, upper: str, work: str, userxattr: bool) -> int:
    fs = sb.check_syscall(libc.syscall(SYS_FSOPEN, b"overlay", FSOPEN_CLOEXEC), "fsopen(overlay)")
    try:
        for key, value in overlay_options(lower, upper, work, userxattr):
            if value is None:
                ret = libc.syscall(SYS_FSCONFIG, fs, FSCONFIG_SET_FLAG, key.encode(), None, 0)
            else:
                ret = libc.syscall(SYS_FSCONFIG, fs, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
            sb.check_syscall(ret, f"overlay option {key}")
        sb.check_syscall(libc.syscall(SYS_FSCONFIG, fs, FSCONFIG_CMD_CREATE, None, None, 0), "creating the overlay")
        return sb.check_syscall(libc.syscall(SYS_FSMOUNT, fs, FSMOUNT_CLOEXEC,
                                      sb.MOUNT_ATTR_NOSUID | sb.MOUNT_ATTR_NODEV), "fsmount")
    finally:
        os.close(fs)


def detached_read_only(lower: str) -> int:
    tree = sb.check_syscall(libc.syscall(sb.SYS_OPEN_TREE, sb.AT_FDCWD, lower.encode(),
                                  sb.OPEN_TREE_CLONE | sb.OPEN_TREE_CLOEXEC | sb.AT_RECURSIVE), f"open_tree {lower}")
    sb.set_mount_attrs(lower, sb.MOUNT_ATTR_RDONLY | sb.MOUNT_ATTR_NOSUID | sb.MOUNT_ATTR_NODEV, fd=tree)
    return tree


def swap(cfg: dict) -> int:
    path = cfg["path"]
    if cfg.get("upper"):
        new = detached_overlay(cfg["lower"], cfg["upper"], cfg["work"], bool(cfg.get("userxattr")))
    else:
        new = detached_read_only(cfg["lower"])
    ns = os.open(f"/proc/{int(cfg['pid'])}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    sb.check_syscall(libc.setns(ns, sb.CLONE_NEWNS), "entering the container's mount namespace")
    os.close(ns)
    if libc.umount2(path.encode(), 0) < 0:
        err = ctypes.get_errno()
        if err == errno.EBUSY:
            os.write(2, f"{path}: volume busy\n".encode())
            return BUSY
        raise sb.SetupError(f"unmounting {path}: {os.strerror(err)}")
    sb.check_syscall(libc.syscall(sb.SYS_MOVE_MOUNT, new, b"", sb.AT_FDCWD, path.encode(), sb.MOVE_MOUNT_F_EMPTY_PATH),
              f"attaching the new mount at {path}")
    return 0


def main() -> None:
    try:
        code = swap(marshal.loads(bytes.fromhex(sys.argv[1])))
    except BaseException as exc:  # noqa: BLE001 - reported to the control plane on stderr
        os.write(2, f"{exc}\n".encode())
        code = 1
    os._exit(code)
