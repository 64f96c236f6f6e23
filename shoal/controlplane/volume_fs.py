"""File-system work behind Volumes, as plain functions of directories (no event loop, no store).

A volume's committed versions are immutable directory trees. A new version starts as a hard-link copy of the
current one (`clone_tree`); changes then replace entries, never write into an existing inode, so every version
sharing an inode sees the same bytes forever. Two kinds of change exist:

- a container's writes: the upper directory of its overlay mount, merged by `scan_upper` + `apply_upper`;
- the Volume API (`batch_upload`, `remove_file`, `copy_files`): `put_file`, `remove`, `copy`.

User paths are resolved inside a version with `resolve`, lexically, following symbolic links only while they
stay inside the volume: nothing a container wrote can make the control plane read or write outside it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
MAX_SYMLINKS = 40


class VolumePathError(Exception):
    """A user path that does not fit the operation; `kind` names the error the client raises."""

    def __init__(self, message: str, kind: str = "InvalidError") -> None:
        super().__init__(message)
        self.kind = kind


# -- paths -------------------------------------------------------------------------------------------------------
def split(path: str) -> list[str]:
    """A user's path ("/a/b", "a/./b/", "/") as components below the volume's root; ".." stops at the root."""
    if not isinstance(path, str) or "\0" in path:
        raise VolumePathError(f"invalid path {path!r}")
    parts: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return parts


def resolve(root: str, path: str | list[str], follow_last: bool = True) -> str:
    """The host path of `path` in the tree at `root`. Symbolic links on the way are followed while they lead
    somewhere inside the tree (an absolute target counts from the tree's root, as inside a container that mounts
    it at /); the last component is followed only with `follow_last`. The result may not exist."""
    todo = list(reversed(split(path) if isinstance(path, str) else list(path)))
    done: list[str] = []
    hops = 0
    while todo:
        name = todo.pop()
        if name == "..":
            if done:
                done.pop()
            continue
        if name in ("", "."):
            continue
        here = os.path.join(root, *done, name)
        if (todo or follow_last) and os.path.islink(here):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise VolumePathError(f"too many levels of symbolic links in {path!r}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo.extend(reversed([p for p in target.split("/") if p]))
            continue
        done.append(name)
    return os.path.join(root, *done)


def rel_path(root: str, host_path: str) -> str:
    rel = os.path.relpath(host_path, root)
    return "" if rel == "." else rel


# -- whole trees -------------------------------------------------------------------------------------------------
def chown(path: str, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.chown(path, *owner, follow_symlinks=False)


def copy_meta(src_st: os.stat_result, dst: str, times: bool = True) -> None:
    """Owner, mode and times of `src_st` onto `dst` (a directory or file, not a symlink)."""
    try:
        os.chown(dst, src_st.st_uid, src_st.st_gid)
    except PermissionError:
        pass  # rootless: keep our own
    os.chmod(dst, stat.S_IMODE(src_st.st_mode))
    if times:
        os.utime(dst, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))


def clone_tree(src: str, dst: str) -> None:
    """`cp -al`: directories copied (owner, mode, times), everything else hard-linked."""
    os.mkdir(dst)
    dirs: list[tuple[os.stat_result, str]] = [(os.lstat(src), dst)]
    stack = [(src, dst)]
    while stack:
        s, d = stack.pop()
        with os.scandir(s) as it:
            for e in it:
                target = os.path.join(d, e.name)
                if e.is_dir(follow_symlinks=False):
                    os.mkdir(target)
                    dirs.append((e.stat(follow_symlinks=False), target))
                    stack.append((e.path, target))
                else:
                    os.link(e.path, target, follow_symlinks=False)
    for st, d in reversed(dirs):  # children first: creating entries changed the parents' times
        copy_meta(st, d)


def rmtree(path: str) -> None:
    """Remove a tree whatever its modes (overlayfs leaves a mode-000 `work` directory behind)."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
        return

    def fix(func: object, p: str, exc: object) -> None:
        parent = os.path.dirname(p)
        try:
            os.chmod(parent, 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p)
            else:
                os.unlink(p)
        except FileNotFoundError:
            pass

    shutil.rmtree(path, onerror=fix)  # (onexc from Python 3.12; onerror still works)


def remove_entry(path: str) -> None:
    """Remove whatever is at `path` (a directory with everything below it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        rmtree(path)
    else:
        os.unlink(path)


def ensure_dirs(root: str, parts: list[str], owner: tuple[int, int] | None, mode: int = 0o755) -> str:
    """Make the directories `parts` below `root` (replacing non-directories in the way); returns the last."""
    here = root
    for name in parts:
        here = os.path.join(here, name)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(here)
            st = None
        if st is None:
            os.mkdir(here, mode)
            chown(here, owner)
    return here


# -- a container's overlay upper directory -----------------------------------------------------------------------
def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) in (b"y", b"x"):
                return True
        except OSError:
            continue
    return False


@dataclass
class Change:
    op: str  # "delete" (whiteout), "replace" (opaque directory), "dir", "file" (anything not a directory)
    rel: str
    sig: list  # [kind, inode, ctime_ns] as seen in the upper directory when scanned


def scan_upper(upper: str, manifest: dict[str, list]) -> tuple[list[Change], list[str]]:
    """What changed in an overlay upper directory since the last commit (`manifest`: rel path -> [kind, inode,
    ctime_ns, inode in the version]). Returns the changes, parents before children, and the paths committed
    before that are gone from the upper directory now (the container removed what only it had written).

    Entries are compared by inode and ctime, which every write, chmod, rename or link of an entry changes, so
    a second commit applies only what changed since the first (and never re-applies an old copy of a file that
    another container has replaced since). An opaque directory (removed and made again in the container)
    replaces the version's directory once."""
    changes: list[Change] = []
    seen: set[str] = set()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(upper, rel_dir)), key=lambda e: e.name)
        except FileNotFoundError:
            continue  # removed while we looked: the next commit sees what is there then
        for e in entries:
            rel = os.path.join(rel_dir, e.name) if rel_dir else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            seen.add(rel)
            old = manifest.get(rel) or [None, None, None]
            if _is_whiteout(st):
                sig = ["w", st.st_ino, st.st_ctime_ns]
                if old[:3] != sig:
                    changes.append(Change("delete", rel, sig))
            elif stat.S_ISDIR(st.st_mode):
                if _is_opaque(e.path):
                    sig = ["o", st.st_ino, st.st_ctime_ns]
                    if old[:2] != sig[:2]:
                        changes.append(Change("replace", rel, sig))
                    elif old[2] != sig[2]:
                        changes.append(Change("dir", rel, sig))
                else:
                    sig = ["d", st.st_ino, st.st_ctime_ns]
                    if old[:3] != sig:
                        changes.append(Change("dir", rel, sig))
                stack.append(rel)
            else:
                sig = ["f", st.st_ino, st.st_ctime_ns]
                if old[:3] != sig:
                    changes.append(Change("file", rel, sig))
    # Scanned depth-first with a stack: a directory's change precedes its children's only within one branch;
    # sort by depth-first order of paths so parents always come first.
    changes.sort(key=lambda c: c.rel.split("/"))
    gone = sorted((rel for rel in manifest if rel not in seen), key=lambda r: r.count("/"), reverse=True)
    return changes, gone


def copy_entry(src: str, dst: str, st: os.stat_result) -> None:
    """A new inode at `dst` with the content and metadata of `src` (not a directory)."""
    if stat.S_ISREG(st.st_mode):
        shutil.copyfile(src, dst, follow_symlinks=False)
        copy_meta(st, dst)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        try:
            os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        except PermissionError:
            pass
    elif stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        try:
            os.mknod(dst, st.st_mode)
            copy_meta(st, dst)
        except OSError:
            pass
    # (device nodes are not committed: a container cannot make real ones, and volumes are mounted nodev)


def apply_upper(upper: str, target: str, changes: list[Change], gone: list[str], manifest: dict[str, list],
                owner: tuple[int, int] | None) -> dict[str, list]:
    """Apply `scan_upper`'s result to `target` (a fresh clone of the current version); returns the manifest
    to pass to the next scan of the same upper directory."""
    new = {rel: sig for rel, sig in manifest.items() if rel not in gone}
    dir_times: list[tuple[os.stat_result, str]] = []
    for ch in changes:
        parts = ch.rel.split("/")
        parent = ensure_dirs(target, parts[:-1], owner)
        dst = os.path.join(parent, parts[-1])
        src = os.path.join(upper, ch.rel)
        if ch.op == "delete":
            remove_entry(dst)
            new[ch.rel] = [*ch.sig, None]
            continue
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            continue  # removed since the scan: the next commit sees it
        if ch.op == "replace":
            remove_entry(dst)
        if ch.op in ("replace", "dir"):
            if os.path.islink(dst) or (os.path.lexists(dst) and not os.path.isdir(dst)):
                os.unlink(dst)
            if not os.path.lexists(dst):
                os.mkdir(dst)
            copy_meta(st, dst, times=False)
            dir_times.append((st, dst))
            new[ch.rel] = [*ch.sig, None]
        else:
            remove_entry(dst)
            copy_entry(src, dst, st)
            try:
                new[ch.rel] = [*ch.sig, os.lstat(dst).st_ino]
            except FileNotFoundError:
                pass
    for rel in gone:
        kind, *_, version_ino = manifest[rel]
        dst = resolve(target, rel, follow_last=False)
        try:
            st = os.lstat(dst)
        except FileNotFoundError:
            continue
        if kind == "f" and not stat.S_ISDIR(st.st_mode) and st.st_ino == version_ino:
            os.unlink(dst)  # still the copy this container committed: its removal wins
        elif kind in ("d", "o") and stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(dst)  # only if nobody else put something there since
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
    for st, d in reversed(dir_times):
        try:
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
        except FileNotFoundError:
            pass
    return new


# -- the Volume API on a version ---------------------------------------------------------------------------------
FILE, DIRECTORY, SYMLINK, FIFO, SOCKET = 1, 2, 3, 4, 5


def entry_type(mode: int) -> int:
    if stat.S_ISDIR(mode):
        return DIRECTORY
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISSOCK(mode):
        return SOCKET
    return FILE


def _entry(root: str, host_path: str, st: os.stat_result) -> list:
    return [rel_path(root, host_path), entry_type(st.st_mode), int(st.st_mtime), st.st_size]


def listdir(root: str, path: str, recursive: bool) -> Iterator[list]:
    """[path, type, mtime, size] for the entries of the directory `path` (recursively: everything below it,
    not following links), or for `path` itself when it is not a directory."""
    host = resolve(root, path)
    try:
        st = os.lstat(host)
    except FileNotFoundError:
        raise VolumePathError(f"no such file or directory: {path!r}", "NotFoundError") from None
    if not stat.S_ISDIR(st.st_mode):
        yield _entry(root, host, st)
        return
    stack = [host]
    while stack:
        d = stack.pop()
        for e in sorted(os.scandir(d), key=lambda e: e.name):
            est = e.stat(follow_symlinks=False)
            yield _entry(root, e.path, est)
            if recursive and stat.S_ISDIR(est.st_mode):
                stack.append(e.path)


def open_file(root: str, path: str) -> tuple[str, int]:
    """The host path and size of the regular file `path`."""
    host = resolve(root, path)
    try:
        st = os.lstat(host)
    except FileNotFoundError:
        raise VolumePathError(f"no such file: {path!r}", "NotFoundError") from None
    if stat.S_ISDIR(st.st_mode):
        raise VolumePathError(f"{path!r} is a directory", "IsADirectoryError")
    if not stat.S_ISREG(st.st_mode):
        raise VolumePathError(f"{path!r} is not a regular file")
    return host, st.st_size


def remove(root: str, path: str, recursive: bool) -> None:
    parts = split(path)
    if not parts:
        raise VolumePathError("cannot remove the root of a volume")
    host = resolve(root, parts, follow_last=False)
    try:
        st = os.lstat(host)
    except FileNotFoundError:
        raise VolumePathError(f"no such file or directory: {path!r}", "NotFoundError") from None
    if stat.S_ISDIR(st.st_mode):
        if not recursive and os.listdir(host):
            raise VolumePathError(f"{path!r} is a non-empty directory: pass recursive=True to remove it")
        rmtree(host)
    else:
        os.unlink(host)


def copy(root: str, src_paths: list[str], dst_path: str, recursive: bool, owner: tuple[int, int] | None) -> None:
    """`cp [-r] SRC... DST` inside the tree: into DST when it is a directory (or several sources are given),
    else to DST. Files are hard-linked (versions never change an inode's content), directories copied."""
    dst_parts = split(dst_path)
    dst_host = resolve(root, dst_parts)
    into = os.path.isdir(dst_host) or len(src_paths) > 1 or dst_path.endswith("/")
    if into and not os.path.isdir(dst_host):
        if os.path.lexists(dst_host):
            raise VolumePathError(f"copy destination {dst_path!r} is not a directory")
        ensure_dirs(root, split(rel_path(root, dst_host)), owner)  # several sources: a new directory for them
    for src in src_paths:
        src_parts = split(src)
        src_host = resolve(root, src_parts)
        try:
            st = os.lstat(src_host)
        except FileNotFoundError:
            raise VolumePathError(f"no such file or directory: {src!r}", "NotFoundError") from None
        target = os.path.join(dst_host, os.path.basename(src_host) or "root") if into else dst_host
        if not into:
            parent = os.path.dirname(target)
            if not os.path.isdir(parent):
                raise VolumePathError(f"no such directory: {os.path.dirname(dst_path)!r}", "NotFoundError")
        if os.path.realpath(target) == os.path.realpath(src_host):
            raise VolumePathError(f"{src!r} and {dst_path!r} are the same file")
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                raise VolumePathError(f"{src!r} is a directory: pass recursive=True to copy it")
            if (target + "/").startswith(src_host.rstrip("/") + "/"):
                raise VolumePathError(f"cannot copy {src!r} into itself")
            if os.path.lexists(target) and (os.path.islink(target) or not os.path.isdir(target)):
                os.unlink(target)
            if os.path.isdir(target):
                _merge_clone(src_host, target)
            else:
                clone_tree(src_host, target)
        else:
            remove_entry(target)
            os.link(src_host, target, follow_symlinks=False)


def _merge_clone(src: str, dst: str) -> None:
    """Hard-link copy of `src` into the existing directory `dst` (entries of the same name are replaced)."""
    for e in os.scandir(src):
        target = os.path.join(dst, e.name)
        if e.is_dir(follow_symlinks=False):
            if os.path.isdir(target) and not os.path.islink(target):
                _merge_clone(e.path, target)
            else:
                remove_entry(target)
                clone_tree(e.path, target)
        else:
            remove_entry(target)
            os.link(e.path, target, follow_symlinks=False)


def place_file(root: str, staged: str, path: str, mode: int, owner: tuple[int, int] | None, force: bool) -> None:
    """Move an uploaded file into the tree at `path` (parents made as needed)."""
    parts = split(path)
    if not parts:
        raise VolumePathError("a file cannot be put at the root of a volume")
    parent = resolve(root, parts[:-1])
    if not os.path.isdir(parent):
        ensure_dirs(root, split(rel_path(root, parent)), owner)
    target = os.path.join(parent, parts[-1])
    if os.path.lexists(target):
        if os.path.isdir(target) and not os.path.islink(target):
            raise VolumePathError(f"{path!r} is a directory", "IsADirectoryError")
        if not force:
            raise VolumePathError(f"{path!r} already exists (pass force=True to overwrite it)", "FileExistsError")
        os.unlink(target)
    os.chmod(staged, stat.S_IMODE(mode))
    chown(staged, owner)
    os.rename(staged, target)
