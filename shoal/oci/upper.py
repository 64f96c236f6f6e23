"""A build step's changes as an OCI layer: the upper directory of the overlayfs it ran on, tarred.

The build sandbox (backends/build_sandbox.py `run_on_layers`) mounts the image's layers with a host directory as
the writable upper, with `redirect_dir=off,metacopy=off,index=off`: every change is then a plain file, directory
or symlink in the upper (a changed file is copied up whole), a deletion is a 0/0 character device (overlayfs's
whiteout) and a directory that replaced a lower one carries `trusted.overlay.opaque=y`. That maps one to one onto
an OCI layer tar: whiteout -> `.wh.NAME`, opaque -> `.wh..wh..opq` inside it. Other `trusted.*` xattrs are
overlayfs's own bookkeeping and are dropped; ids go back to the image's own (minus the store's id_shift). Nothing
is followed: a symlink is tarred as a symlink.

The runtime's mountpoints (`/proc`, `/dev`, `/run/shoal`, `/etc/resolv.conf`, binds, … where the image lacked
them) are no part of the step: `skip` names them, and a directory that is in the upper only because one was made
in it (copied up, nothing else changed below) goes too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from shoal.oci.layout import store_layer
from shoal.oci.store import LayerStore
from shoal.oci.unpack import OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX, LayerError

CONTAINER_IDS = 65536  # a container's uid/gid range (backends/sandbox.py ID_COUNT)
OVERFLOW_ID = 65534  # what an id outside it becomes (as the kernel shows unmapped ids)
_KEPT_XATTRS = ("security.capability", "user.")
_REFUSED_XATTRS = ("trusted.overlay.redirect", "trusted.overlay.metacopy")


def _inside_id(host_id: int, id_shift: int) -> int:
    inside = host_id - id_shift
    return inside if 0 <= inside < CONTAINER_IDS else OVERFLOW_ID


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 512  # directories nested deeper are refused (a path then exceeds PATH_MAX anyway)


class _Upper:
    """The upper directory read through directory descriptors, one component at a time, never following a link:
    a snapshot reads the upper of a sandbox that still runs, which may swap a directory for a symlink to a host
    path between the listing and the read (a path string would then lead out of the upper). Only the upper's own
    descriptor stays open; each use opens its path afresh and closes it (a hostile upper may hold any number of
    directories, nested any number of levels deep)."""

    def __init__(self, upper: Path) -> None:
        self.root = os.open(upper, _DIR_FLAGS)

    def close(self) -> None:
        os.close(self.root)

    @contextlib.contextmanager
    def dir(self, rel: str) -> Iterator[int]:
        """A descriptor of the directory `rel`, opened below the upper's without following a link."""
        fd = os.dup(self.root)
        try:
            for part in rel.split("/") if rel else ():
                below = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = below
            yield fd
        finally:
            os.close(fd)

    def scan(self) -> list[str]:
        """Every entry as a relative path, parents before children, in a fixed order (a reproducible tar)."""
        out: list[str] = []
        todo = [""]
        while todo:
            rel = todo.pop()
            if rel.count("/") >= MAX_DEPTH:
                raise LayerError(f"/{rel}: directories nested deeper than {MAX_DEPTH} levels")
            with self.dir(rel) as fd, os.scandir(fd) as it:
                entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
            for name, is_dir in entries:
                child = f"{rel}/{name}" if rel else name
                out.append(child)
                if is_dir:
                    todo.append(child)
        return out

    def opaque(self, rel: str) -> bool:
        try:
            with self.dir(rel) as fd:
                return os.getxattr(fd, OPAQUE_XATTR) == b"y"
        except OSError:
            return False


def _kept(entries: list[str], upper: _Upper, skip: Iterable[str]) -> list[str]:
    """`entries` without the skipped paths (and what is below them), nor the directories that hold nothing else
    and only came to be in the upper because a skipped path was made in them."""
    skipped = {s.strip("/") for s in skip if s.strip("/")}
    kept = [r for r in entries if not any(r == s or r.startswith(s + "/") for s in skipped)]
    holders = {s.rsplit("/", i)[0] for s in skipped for i in range(1, s.count("/") + 1)}
    if not holders:
        return kept
    remaining = set(kept)
    return [r for r in kept if not (r in holders and not upper.opaque(r)
                                    and not any(x.startswith(r + "/") for x in remaining))]


def _xattrs(fd: int, rel: str) -> dict[str, str]:
    pax: dict[str, str] = {}
    for name in os.listxattr(fd):
        if name.startswith(_REFUSED_XATTRS):
            raise LayerError(f"/{rel}: overlayfs metadata {name} (the upper was not mounted with "
                             "redirect_dir=off,metacopy=off)")
        if name.startswith(_KEPT_XATTRS) and not name.startswith("user.overlay."):
            pax["SCHILY.xattr." + name] = os.getxattr(fd, name).decode("utf-8", "surrogateescape")
    return pax


def _add(tf: tarfile.TarFile, upper: _Upper, rel: str, id_shift: int, links: dict[tuple[int, int], str]) -> None:
    """One entry of the upper into the tar: whiteouts and opaque directories in OCI form, regular files read
    through a descriptor that is checked to be the regular file the listing saw."""
    parent, _, name = rel.rpartition("/")
    with upper.dir(parent) as parent_fd:
        _add_entry(tf, upper, rel, parent_fd, name, id_shift, links)


def _add_entry(tf: tarfile.TarFile, upper: _Upper, rel: str, parent_fd: int, name: str, id_shift: int,
               links: dict[tuple[int, int], str]) -> None:
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    mode = st.st_mode
    if stat.S_ISCHR(mode) and st.st_rdev == 0:  # overlayfs's whiteout
        parent, _, base = rel.rpartition("/")
        info = tarfile.TarInfo(f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base)
        info.mtime, info.mode = int(st.st_mtime), 0o644
        tf.addfile(info)
        return
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise LayerError(f"/{rel}: a device node, which a layer cannot hold")
    if stat.S_ISSOCK(mode):
        return  # a socket left behind by a process: not a file (as `docker commit` does)
    info = tarfile.TarInfo(rel)
    info.mode, info.mtime = stat.S_IMODE(mode), int(st.st_mtime)
    info.uid, info.gid = _inside_id(st.st_uid, id_shift), _inside_id(st.st_gid, id_shift)
    if stat.S_ISLNK(mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=parent_fd)
        tf.addfile(info)
        return
    if stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
        tf.addfile(info)
        return
    if stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
        with upper.dir(rel) as fd:
            info.pax_headers = _xattrs(fd, rel)
        tf.addfile(info)
        if upper.opaque(rel):
            marker = tarfile.TarInfo(f"{rel}/{OPAQUE_MARKER}")
            marker.mtime, marker.mode = info.mtime, 0o644
            tf.addfile(marker)
        return
    # A regular file (non-blocking and checked: a running container may swap a FIFO or another file in since the
    # listing).
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent_fd)
    with os.fdopen(fd, "rb") as f:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise LayerError(f"/{rel} changed while it was being read")
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:  # a hard link to a file already in the tar
            info.type, info.linkname = tarfile.LNKTYPE, links[key]
            tf.addfile(info)
            return
        links[key] = rel
        info.size = now.st_size
        info.pax_headers = _xattrs(fd, rel)
        tf.addfile(info, f)


def tar_upper(upper_dir: Path | str, out: Path, *, skip: Iterable[str] = (), id_shift: int = 0) -> None:
    """Writes the upper directory's changes as an uncompressed OCI layer tar at `out`."""
    upper = _Upper(Path(upper_dir))
    try:
        entries = _kept(upper.scan(), upper, skip)
        links: dict[tuple[int, int], str] = {}
        with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for rel in entries:
                try:
                    _add(tf, upper, rel, id_shift, links)
                except OSError as exc:  # gone, or a directory swapped for a link (ELOOP, ENOTDIR) meanwhile
                    raise LayerError(f"/{rel} changed while it was being read ({exc.strerror})") from None
    finally:
        upper.close()


def layer_from_upper(store: LayerStore, upper_dir: Path | str, *, skip: Iterable[str] = ()) -> dict:
    """The upper directory as a layer of the store: its blob written (gzip) and unpacked as any pulled layer
    is (the store's checks apply). Returns {"digest", "diff_id", "size", "media_type"}."""
    work = store.scratch_dir("upper-")
    try:
        tar = work / "layer.tar"
        tar_upper(upper_dir, tar, skip=skip, id_shift=store.id_shift)
        return store_layer(store, tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
