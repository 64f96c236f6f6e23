"""Layers an OCI image build writes straight from files, without running anything: COPY/ADD of a build context,
`add_local_*(copy=True)`, the interpreter of `add_python`, and WORKDIR's directory.

A layer is an uncompressed tar made here (entries named by container path, owned by container ids), gzipped into
the layer store and unpacked by the store's own extractor, whose checks (no escape, no device, no link out) apply
to what we write as to any pulled layer. Paths are resolved against the image so far as overlayfs would show it
(`resolve`): a symlink in the image (Debian's `/bin -> usr/bin`) is followed inside the image, never on the host,
and directories a layer passes through keep the owner and mode they have below (an overlay's upper directory
decides them).
"""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import tarfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from ..oci.unpack import OPAQUE_XATTR

MAX_SYMLINKS = 40
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class FileStepError(Exception):
    """A file step that cannot be applied to the image; the message says why."""


# -- the image as overlayfs shows it -------------------------------------------------------------------------------
def _dir_layers(lowerdirs: list[Path], parts: list[str]) -> list[Path]:
    """The layers (top first) whose entries are visible inside the directory `parts`: down to an opaque one or
    to a layer where it is not a directory."""
    out = []
    for layer in lowerdirs:
        p = layer.joinpath(*parts)
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not stat.S_ISDIR(st.st_mode):
            break
        out.append(layer)
        try:
            if os.getxattr(p, OPAQUE_XATTR, follow_symlinks=False) == b"y":
                break
        except OSError:
            pass
    return out


def resolve(lowerdirs: list[Path], path: str, *, follow: bool = True) -> tuple[str, Path | None]:
    """(`path` with the image's symlinks resolved inside the image, the topmost entry's host path or None when
    the image has nothing there). `follow=False` leaves a symlink in the last component as it is."""
    todo = deque(PurePosixPath("/", path).parts[1:])
    cur: list[str] = []
    hops = 0
    found: Path | None = None
    while todo:
        part = todo.popleft()
        if part in (".", ""):
            continue
        if part == "..":
            cur = cur[:-1]
            continue
        found = None
        st = None
        for layer in _dir_layers(lowerdirs, cur):
            p = layer.joinpath(*cur, part)
            try:
                st = os.lstat(p)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                st = None  # a whiteout: deleted above
            else:
                found = p
            break
        if found is None or st is None:
            return "/" + "/".join([*cur, part, *todo]), None
        if stat.S_ISLNK(st.st_mode) and (todo or follow):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise FileStepError(f"too many levels of symbolic links in the image at {path}")
            target = os.readlink(found)
            if target.startswith("/"):
                cur = []
            todo.extendleft(reversed(PurePosixPath(target).parts[1 if target.startswith("/") else 0:]))
            continue
        cur.append(part)
        if todo and not stat.S_ISDIR(st.st_mode):
            raise FileStepError(f"/{'/'.join(cur)} is not a directory in the image, so {path} cannot be written")
    if not cur:
        return "/", lowerdirs[0] if lowerdirs else None
    return "/" + "/".join(cur), found


def is_dir(lowerdirs: list[Path], path: str) -> bool:
    _, host = resolve(lowerdirs, path)
    return host is not None and host.is_dir()


def find_program(lowerdirs: list[Path], path_var: str, names: Iterable[str]) -> str:
    """The first of `names` found on `path_var` (a PATH inside the image), as a path inside the image, or ''."""
    for name in names:
        for d in path_var.split(":"):
            if not d.startswith("/"):
                continue
            _, host = resolve(lowerdirs, f"{d}/{name}")
            if host is not None and host.is_file() and os.access(host, os.X_OK):
                return f"{d.rstrip('/')}/{name}"
    return ""


def lookup_ids(lowerdirs: list[Path], user: str, group: str) -> tuple[int, int]:
    """`--chown=user:group` as ids, names looked up in the image's /etc/passwd and /etc/group."""
    def table(name: str) -> dict[str, tuple[int, int]]:
        _, host = resolve(lowerdirs, f"/etc/{name}")
        rows: dict[str, tuple[int, int]] = {}
        if host is not None and host.is_file():
            for line in host.read_text(errors="replace").splitlines():
                f = line.split(":")
                if len(f) >= 4 and f[2].isdigit() and f[3].isdigit():
                    rows[f[0]] = (int(f[2]), int(f[3]))
                elif len(f) >= 3 and f[2].isdigit():
                    rows[f[0]] = (int(f[2]), int(f[2]))
        return rows

    passwd = table("passwd")
    if user.isdigit():
        uid, gid = int(user), int(user)
    elif user in passwd:
        uid, gid = passwd[user]
    else:
        raise FileStepError(f"--chown: no user {user!r} in the image's /etc/passwd")
    if group:
        groups = table("group")
        if group.isdigit():
            gid = int(group)
        elif group in groups:
            gid = groups[group][0]
        else:
            raise FileStepError(f"--chown: no group {group!r} in the image's /etc/group")
    return uid, gid


# -- writing a layer -----------------------------------------------------------------------------------------------
class LayerTar:
    """An uncompressed layer tar being written: files at container paths, with the directories on the way."""

    def __init__(self, path: Path, lowerdirs: list[Path], id_shift: int) -> None:
        self.path = path
        self.lowerdirs = lowerdirs
        self.id_shift = id_shift
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (closed by close())
        self.dirs: set[str] = set()

    def close(self) -> None:
        self.tar.close()

    def _dir(self, path: str) -> None:
        """A directory entry for `path` and its parents, as the image has them (else root's 0755)."""
        if path in ("/", "") or path in self.dirs:
            return
        self._dir(str(PurePosixPath(path).parent))
        self.dirs.add(path)
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        _, host = resolve(self.lowerdirs, path)
        if host is not None:
            st = os.lstat(host)
            if stat.S_ISDIR(st.st_mode):
                info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
                info.uid, info.gid = max(st.st_uid - self.id_shift, 0), max(st.st_gid - self.id_shift, 0)
        self.tar.addfile(info)

    def mkdir(self, path: str, *, owner: tuple[int, int] | None = None, mode: int | None = None) -> None:
        self._dir(path)
        if owner is not None or mode is not None:  # re-state it with the owner asked for (the later entry wins)
            info = tarfile.TarInfo(path.lstrip("/"))
            info.type, info.mtime = tarfile.DIRTYPE, int(time.time())
            info.mode = mode if mode is not None else 0o755
            info.uid, info.gid = owner or (0, 0)
            self.tar.addfile(info)

    def file(self, path: str, data: io.BufferedIOBase | bytes, size: int, *, mode: int = 0o644,
             owner: tuple[int, int] = (0, 0), mtime: int | None = None) -> None:
        self._dir(str(PurePosixPath(path).parent))
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode, (info.uid, info.gid) = size, mode & 0o7777, owner
        info.mtime = int(time.time()) if mtime is None else mtime
        self.tar.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else data)

    def symlink(self, path: str, target: str, *, owner: tuple[int, int] = (0, 0)) -> None:
        self._dir(str(PurePosixPath(path).parent))
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.linkname, (info.uid, info.gid), info.mtime = tarfile.SYMTYPE, target, owner, int(time.time())
        self.tar.addfile(info)


def _members(tar: tarfile.TarFile) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """Regular files of a client's tarball with clean relative names (anything else is skipped)."""
    for m in tar:
        parts = [p for p in m.name.split("/") if p not in ("", ".")]
        if m.isreg() and parts and ".." not in parts and not m.name.startswith("/"):
            yield "/".join(parts), m


def add_tree(out: LayerTar, blob: Path, dest: str, *, owner: tuple[int, int] = (0, 0),
             mode: int | None = None) -> int:
    """A client's directory tarball (add_local_dir) under `dest`; returns the number of files."""
    base = resolve(out.lowerdirs, dest)[0]
    n = 0
    with tarfile.open(blob) as tar:
        for rel, m in _members(tar):
            src = tar.extractfile(m)
            assert src is not None
            out.file(f"{base.rstrip('/')}/{rel}", src, m.size, mode=m.mode if mode is None else mode, owner=owner)
            n += 1
    return n


def add_file(out: LayerTar, blob: Path, dest: str, *, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
    """One file at `dest` (into it, if the image has a directory there)."""
    parent, name = str(PurePosixPath(dest).parent), PurePosixPath(dest).name
    base = resolve(out.lowerdirs, parent)[0]
    target = f"{base.rstrip('/')}/{name}"
    if is_dir(out.lowerdirs, target):
        raise FileStepError(f"{dest} is a directory in the image")
    with open(blob, "rb") as f:
        out.file(target, f, os.fstat(f.fileno()).st_size, mode=mode, owner=owner)  # type: ignore[arg-type]


def copy_from_context(out: LayerTar, context: Path | None, sources: tuple[str, ...], dest: str, *, add: bool,
                      owner: tuple[int, int], mode: int | None) -> int:
    """Docker's COPY/ADD of build-context files: a directory's contents go into `dest`; a file goes to `dest`,
    or into it when `dest` ends with '/', is a directory of the image, or several files are copied; ADD of a
    tar archive unpacks it into `dest`. Returns the number of files written."""
    if context is None:
        raise FileStepError("COPY/ADD needs a build context, and none was uploaded")
    with tarfile.open(context) as tar:
        members = dict(_members(tar))
        matched: list[tuple[str, str]] = []  # (context file, its path relative to what the source named)
        single_file = len(sources) == 1
        for src in sources:
            pattern = "/".join(p for p in src.split("/") if p not in ("", "."))
            if ".." in pattern.split("/"):
                raise FileStepError(f"{src}: outside the build context")
            hits = _match(members, pattern)
            if not hits:
                raise FileStepError(f"{src}: no such file or directory in the build context")
            single_file = single_file and len(hits) == 1 and hits[0][1] == PurePosixPath(hits[0][0]).name \
                and not any(rel.startswith(pattern + "/") for rel in members)
            matched += hits
        into_dir = dest.endswith("/") or not single_file or is_dir(out.lowerdirs, dest)
        n = 0
        for rel, under in matched:
            m = members[rel]
            src = tar.extractfile(m)
            assert src is not None
            if add and rel.endswith(_TAR_SUFFIXES):
                n += _add_archive(out, src, dest, owner)
                continue
            target = f"{dest.rstrip('/')}/{under}" if into_dir else dest
            parent, name = str(PurePosixPath(target).parent), PurePosixPath(target).name
            resolved = f"{resolve(out.lowerdirs, parent)[0].rstrip('/')}/{name}"
            out.file(resolved, src, m.size, mode=m.mode if mode is None else mode, owner=owner)
            n += 1
    return n


def _match(members: dict[str, tarfile.TarInfo], pattern: str) -> list[tuple[str, str]]:
    """Context files a COPY source names: the whole context ('' or '.'), a file, a directory (its contents,
    relative to it), or a glob (each match by its name)."""
    if pattern == "":
        return [(rel, rel) for rel in sorted(members)]
    if pattern in members:
        return [(pattern, PurePosixPath(pattern).name)]
    inside = [(rel, rel[len(pattern) + 1:]) for rel in sorted(members) if rel.startswith(pattern + "/")]
    if inside:
        return inside
    if any(c in pattern for c in "*?["):
        rx = re.compile(_glob_regex(pattern))
        out: list[tuple[str, str]] = []
        for rel in sorted(members):
            parts = rel.split("/")
            for i in range(1, len(parts) + 1):  # a match may be a file or a directory of the context
                head = "/".join(parts[:i])
                if rx.fullmatch(head):
                    out.append((rel, "/".join([parts[i - 1], *parts[i:]]) if i < len(parts) else parts[-1]))
                    break
        return out
    return []


def _glob_regex(pattern: str) -> str:
    """Go's filepath.Match, which Docker uses: `*` and `?` do not cross '/'."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                out.append("[" + ("^" + body[1:] if body.startswith("^") else body) + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _add_archive(out: LayerTar, src: io.BufferedIOBase, dest: str, owner: tuple[int, int]) -> int:
    """ADD of a local tar archive: its entries unpacked into `dest` (files, directories and symlinks)."""
    base = resolve(out.lowerdirs, dest)[0].rstrip("/")
    n = 0
    with tarfile.open(fileobj=src, mode="r:*") as tar:
        for m in tar:
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if not parts or ".." in parts:
                continue
            path = f"{base}/{'/'.join(parts)}"
            if m.isdir():
                out.mkdir(path, owner=owner, mode=stat.S_IMODE(m.mode))
            elif m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                out.file(path, f, m.size, mode=m.mode, owner=owner, mtime=int(m.mtime))
                n += 1
            elif m.issym():
                out.symlink(path, m.linkname, owner=owner)
    return n


def _relocate_runpath(elf: bytes, old: str, new_path: str = "$ORIGIN/../lib") -> bytes:
    """pyenv links its interpreter and extension modules with RUNPATH=<prefix>/lib, a host path: point it at
    `new_path` (for the interpreter `$ORIGIN/../lib`, the copy's own lib; shorter, so the string table entry is
    rewritten in place, padded with NULs), so libpython is found without an ldconfig cache (an image may have no
    ldconfig)."""
    new = new_path.encode()
    needle = b"\0" + old.encode() + b"\0"
    if len(new) > len(old) or elf.count(needle) != 1:
        return elf
    return elf.replace(needle, b"\0" + new + b"\0" * (len(old) - len(new)) + b"\0")


# glibc's own libraries: every image add_python accepts has them (it checks for glibc's loader)
_GLIBC_LIBS = re.compile(r"^(ld-linux[\w.-]*|libc|libm|libmvec|libpthread|libdl|librt|libutil|libresolv|libanl|"
                         r"libnss_\w+|libBrokenLocale|libthread_db)\.so(\.[\d.]+)?$")
BUNDLED_LIBS = ".libs"  # lib-dynload/.libs: what its extension modules link to besides glibc


def _extension_libraries(modules: list[str]) -> dict[str, str]:
    """{soname: host path} of the shared libraries other than glibc's that these extension modules (of the
    machine's own pyenv interpreter: no user code) load, as the host's loader resolves them (`ldd`)."""
    found: dict[str, str] = {}
    for chunk in range(0, len(modules), 50):
        out = subprocess.run(["ldd", *modules[chunk:chunk + 50]], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.match(r"\s*(\S+)\s+=>\s+(/\S+)\s+\(0x", line)
            if m and not _GLIBC_LIBS.match(m.group(1)) and not m.group(1).startswith("libpython"):
                found[m.group(1)] = m.group(2)
    return found


def python_tree(out: LayerTar, prefix: Path) -> None:
    """A pyenv-installed CPython at /usr/local, as shoal.oci.base copies it into its base images: no test suite,
    tkinter/idle or static libpython, site-packages with pip only, console scripts pointing at /usr/local/bin,
    and `python`/`python3` links. Self-contained as far as glibc: the libraries its extension modules link to
    (libffi, libssl, zlib, ... of this machine) are copied to lib-dynload/.libs, which their RUNPATH names, so
    `ctypes`, `ssl` & co. import on an image that lacks them or has other versions."""
    minor = ".".join(prefix.name.split(".")[:2])
    lib = f"lib/python{minor}"
    modules: list[str] = []
    skip_dirs = {f"{lib}/test", f"{lib}/idlelib", f"{lib}/tkinter", f"{lib}/turtledemo", "lib/pkgconfig"}
    for dirpath, dirnames, filenames in os.walk(prefix):
        rel_dir = os.path.relpath(dirpath, prefix)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}".lstrip("/")
            if rel in skip_dirs or "__pycache__" == d:
                continue
            if rel_dir == f"{lib}/site-packages" and not (d == "pip" or d.startswith("pip-")):
                continue
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                out.symlink(f"/usr/local/{rel}", os.readlink(full))
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}".lstrip("/")
            full = os.path.join(dirpath, name)
            if (rel_dir == f"{lib}/site-packages" and name != "README.txt") or name.startswith("idle") and \
                    rel_dir == "bin" or re.match(r"libpython.*\.a$", name) or "/lib-dynload/_tkinter" in f"/{rel}":
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out.symlink(f"/usr/local/{rel}", os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                data = Path(full).read_bytes()
                if rel_dir == "bin" and data.startswith(f"#!{prefix}/bin/".encode()):
                    data = b"#!/usr/local/bin/" + data[len(f"#!{prefix}/bin/"):]
                elif rel_dir == "bin" and data.startswith(b"\x7fELF"):
                    data = _relocate_runpath(data, f"{prefix}/lib")
                elif rel_dir == f"{lib}/lib-dynload" and data.startswith(b"\x7fELF"):
                    data = _relocate_runpath(data, f"{prefix}/lib", f"$ORIGIN/{BUNDLED_LIBS}")
                    modules.append(full)
                out.file(f"/usr/local/{rel}", data, len(data), mode=stat.S_IMODE(st.st_mode), mtime=int(st.st_mtime))
    for soname, host_path in sorted(_extension_libraries(modules).items()):
        data = Path(host_path).read_bytes()
        out.file(f"/usr/local/{lib}/lib-dynload/{BUNDLED_LIBS}/{soname}", data, len(data), mode=0o644,
                 mtime=int(os.stat(host_path).st_mtime))
    out.symlink("/usr/local/bin/python3", f"python{minor}")
    out.symlink("/usr/local/bin/python", f"python{minor}")
