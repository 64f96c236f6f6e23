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

import os
import shutil
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path

from shoal.oci.layout import LayoutWriter
from shoal.oci.store import Layer, LayerStore
from shoal.oci.unpack import OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX, LayerError

CONTAINER_IDS = 65536  # a container's uid/gid range (backends/sandbox.py ID_COUNT)
OVERFLOW_ID = 65534  # what an id outside it becomes (as the kernel shows unmapped ids)
_KEPT_XATTRS = ("security.capability", "user.")
_REFUSED_XATTRS = ("trusted.overlay.redirect", "trusted.overlay.metacopy")


def _inside_id(host_id: int, id_shift: int) -> int:
    inside = host_id - id_shift
    return inside if 0 <= inside < CONTAINER_IDS else OVERFLOW_ID


def _scan(upper: Path) -> list[str]:
    """Every entry of the upper as a relative path, parents before children, sorted (a reproducible tar)."""
    out: list[str] = []

    def walk(rel: str) -> None:
        with os.scandir(upper / rel if rel else upper) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            child = f"{rel}/{e.name}" if rel else e.name
            out.append(child)
            if e.is_dir(follow_symlinks=False):
                walk(child)

    walk("")
    return out


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _kept(entries: list[str], upper: Path, skip: Iterable[str]) -> list[str]:
    """`entries` without the skipped paths (and what is below them), nor the directories that hold nothing else
    and only came to be in the upper because a skipped path was made in them."""
    skipped = {s.strip("/") for s in skip if s.strip("/")}
    kept = [r for r in entries if not any(r == s or r.startswith(s + "/") for s in skipped)]
    holders = {s.rsplit("/", i)[0] for s in skipped for i in range(1, s.count("/") + 1)}
    if not holders:
        return kept
    remaining = set(kept)
    return [r for r in kept if not (r in holders and not _opaque(upper / r)
                                    and not any(x.startswith(r + "/") for x in remaining))]


def _tarinfo(tf: tarfile.TarFile, path: Path, rel: str, id_shift: int) -> list[tuple[tarfile.TarInfo, Path | None]]:
    st = os.lstat(path)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # overlayfs's whiteout
        parent, _, name = rel.rpartition("/")
        info = tarfile.TarInfo(f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else WHITEOUT_PREFIX + name)
        info.mtime, info.mode = int(st.st_mtime), 0o644
        return [(info, None)]
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        raise LayerError(f"/{rel}: a device node, which a layer cannot hold")
    if stat.S_ISSOCK(st.st_mode):
        return []  # a socket left behind by a process: not a file (as `docker commit` does)
    info = tf.gettarinfo(str(path), rel)
    info.uid, info.gid = _inside_id(st.st_uid, id_shift), _inside_id(st.st_gid, id_shift)
    info.uname = info.gname = ""
    pax: dict[str, str] = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if name.startswith(_REFUSED_XATTRS):
            raise LayerError(f"/{rel}: overlayfs metadata {name} (the upper was not mounted with "
                             "redirect_dir=off,metacopy=off)")
        if name.startswith(_KEPT_XATTRS) and not name.startswith("user.overlay."):
            raw = os.getxattr(path, name, follow_symlinks=False)
            pax["SCHILY.xattr." + name] = raw.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    out: list[tuple[tarfile.TarInfo, Path | None]] = [(info, path if info.isreg() else None)]
    if info.isdir() and _opaque(path):
        marker = tarfile.TarInfo(f"{rel}/{OPAQUE_MARKER}")
        marker.mtime, marker.mode = info.mtime, 0o644
        out.append((marker, None))
    return out


def tar_upper(upper_dir: Path | str, out: Path, *, skip: Iterable[str] = (), id_shift: int = 0) -> None:
    """Writes the upper directory's changes as an uncompressed OCI layer tar at `out`."""
    upper = Path(upper_dir)
    entries = _kept(_scan(upper), upper, skip)
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for rel in entries:
            for info, src in _tarinfo(tf, upper / rel, rel, id_shift):
                if src is not None:
                    # (non-blocking, checked: a running container may swap a FIFO in since the lstat)
                    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                    with os.fdopen(fd, "rb") as f:
                        if not stat.S_ISREG(os.fstat(fd).st_mode):
                            raise LayerError(f"/{rel} changed while it was being read")
                        tf.addfile(info, f)
                else:
                    tf.addfile(info)


def layer_from_upper(store: LayerStore, upper_dir: Path | str, *, skip: Iterable[str] = ()) -> dict:
    """The upper directory as a layer of the store: its blob written (gzip) and unpacked as any pulled layer
    is (the store's checks apply). Returns {"digest", "diff_id", "size", "media_type"}."""
    work = store.scratch_dir("upper-")
    try:
        tar = work / "layer.tar"
        tar_upper(upper_dir, tar, skip=skip, id_shift=store.id_shift)
        with store.lock():
            desc, diff_id = LayoutWriter(work, blobs_dir=store.blobs).add_layer(tar)
            layer = Layer(digest=desc["digest"], diff_id=diff_id, media_type=desc["mediaType"], size=desc["size"])
            final = store.layer_path(diff_id)
            if not final.is_dir():
                store._unpack(layer, final)
        return {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size, "media_type": layer.media_type}
    finally:
        shutil.rmtree(work, ignore_errors=True)
