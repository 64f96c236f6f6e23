"""Unpacking one layer tar into a directory that overlayfs can use as a lowerdir.

A layer comes from anywhere (a registry, a user's Dockerfile), so its tar is hostile input. Unpacking never writes
outside the target directory: absolute names and `..` are refused, no path is created through a symlink the layer
made, hard links point inside the layer only, and device nodes are refused (an image has no business shipping a
`/dev/sda`; the runtime gives containers their `/dev`). Ownership and modes are kept as in the tar (the store runs
as root), so a layer's files belong to the image's users, not to whoever pulled it. With an `id_shift` every uid and
gid is moved up by it: the store of a control plane running as root unpacks at the sandbox's id base, so a layer's
root-owned files are owned by the container's root (host ids id_base..id_base+65535 are its 0..65535).

OCI whiteouts become overlayfs whiteouts while unpacking, so a stack of layer directories is mounted as is:
`.wh.NAME` -> a 0/0 character device NAME; `.wh..wh..opq` -> the `trusted.overlay.opaque=y` xattr on its
directory. A tar's own `trusted.*`/`security.selinux` xattrs are dropped: a layer must not be able to forge overlay
metadata (redirects, opaque marks) that the kernel would trust.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import BinaryIO

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
# xattrs a layer may carry: file capabilities (e.g. ping's cap_net_raw) and user namespace attributes
_KEPT_XATTR_PREFIXES = ("security.capability", "user.")


class LayerError(Exception):
    """A layer that cannot be unpacked safely or does not match its digest; the message names the entry."""


class _HashingReader(io.RawIOBase):
    """Passes reads through while hashing them: the diff id is the sha256 of the *uncompressed* tar."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        data = self._inner.read(len(buf))
        n = len(data)
        buf[:n] = data
        self.sha.update(data)
        return n

    def drain(self) -> None:
        """Hash what the tar reader left unread (end-of-archive padding) so the digest covers every byte."""
        while chunk := self._inner.read(1 << 20):
            self.sha.update(chunk)


def _open_decompressed(blob: Path, media_type: str) -> tuple[BinaryIO, subprocess.Popen | None]:
    """The layer's tar stream. gzip in-process (zlib); zstd through the `zstd` program (no Python binding here)."""
    if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        if shutil.which("zstd") is None:
            raise LayerError(f"layer {blob.name} is zstd-compressed and the `zstd` program is not installed")
        proc = subprocess.Popen(["zstd", "-dc", "--", str(blob)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        return proc.stdout, proc
    raw = open(blob, "rb")  # noqa: SIM115 (closed by the caller)
    head = raw.read(2)
    raw.seek(0)
    if head == b"\x1f\x8b":  # gzip, whatever the media type claims (Docker's are always gzip)
        return gzip.GzipFile(fileobj=raw, mode="rb"), None  # type: ignore[return-value]
    return raw, None  # an uncompressed tar (application/vnd.oci.image.layer.v1.tar)


def _clean_name(name: str, what: str) -> str:
    """A member name as a relative path inside the layer; '' is the layer root. Refuses escapes."""
    if name.startswith("/"):
        raise LayerError(f"{what} {name!r}: absolute path in a layer")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise LayerError(f"{what} {name!r}: '..' in a layer path")
    return "/".join(parts)


class _Unpacker:
    def __init__(self, root: Path, id_shift: int = 0) -> None:
        self.root = root
        self.id_shift = id_shift
        self.real_dirs: set[str] = {""}  # relative dirs known to be real directories (not symlinks)
        self.dir_meta: list[tuple[str, tarfile.TarInfo]] = []

    def _ensure_parent(self, rel: str) -> str:
        """Makes the parent of `rel` as real directories, refusing to go through a symlink; returns the parent."""
        parent = rel.rpartition("/")[0]
        if parent in self.real_dirs:
            return parent
        walked = ""
        for part in parent.split("/"):
            walked = f"{walked}/{part}" if walked else part
            if walked in self.real_dirs:
                continue
            path = self.root / walked
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                if self.id_shift:  # a parent the tar does not list: the container's root's, as its own entries
                    os.chown(path, self.id_shift, self.id_shift)
            else:
                if not stat.S_ISDIR(st.st_mode):
                    raise LayerError(f"entry {rel!r}: its parent {walked!r} is not a directory in this layer")
            self.real_dirs.add(walked)
        return parent

    def _remove_existing(self, path: Path, rel: str) -> None:
        """A later entry for the same path replaces the earlier one (tar semantics), never through a link."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
            self.real_dirs = {d for d in self.real_dirs if d != rel and not d.startswith(rel + "/")}
        else:
            os.unlink(path)

    def _apply_meta(self, path: Path, m: tarfile.TarInfo, *, symlink: bool = False) -> None:
        os.chown(path, m.uid + self.id_shift, m.gid + self.id_shift, follow_symlinks=False)
        if symlink:
            return
        os.chmod(path, stat.S_IMODE(m.mode))  # after chown, which clears setuid/setgid
        for key, value in (m.pax_headers or {}).items():
            if key.startswith("SCHILY.xattr."):
                name = key[len("SCHILY.xattr."):]
                if name.startswith(_KEPT_XATTR_PREFIXES):
                    raw = value.encode("utf-8", "surrogateescape")
                    try:
                        os.setxattr(path, name, raw, follow_symlinks=False)
                    except OSError:
                        pass  # a filesystem without that namespace: the file is still right, only the attribute is lost
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def add(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = _clean_name(m.name, "entry")
        base = rel.rpartition("/")[2]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(rel, base)
            return
        if rel == "":
            if m.isdir():
                self.dir_meta.append(("", m))
                return
            raise LayerError(f"entry {m.name!r}: the layer root must be a directory")
        self._ensure_parent(rel)
        path = self.root / rel
        if m.isdir():
            try:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(path)
                    os.mkdir(path, 0o755)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
            self.real_dirs.add(rel)
            self.dir_meta.append((rel, m))  # modes and times last: files are still to be written inside
            return
        self._remove_existing(path, rel)
        if m.isreg():
            src = tf.extractfile(m)
            assert src is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            self._apply_meta(path, m)
        elif m.issym():
            os.symlink(m.linkname, path)  # any target: it resolves inside the container's root, never here
            self._apply_meta(path, m, symlink=True)
        elif m.islnk():
            target_rel = _clean_name(m.linkname, f"hard link {m.name!r} ->")
            target = self.root / target_rel
            self._ensure_parent(target_rel)  # refuses a target reached through a symlink
            if target_rel in self.real_dirs or not os.path.lexists(target):
                raise LayerError(f"hard link {m.name!r} -> {m.linkname!r}: target is not a file of this layer")
            os.link(target, path, follow_symlinks=False)
        elif m.isfifo():
            os.mkfifo(path, stat.S_IMODE(m.mode))
            self._apply_meta(path, m)
        elif m.ischr() or m.isblk():
            raise LayerError(f"entry {m.name!r}: device nodes are not allowed in a layer")
        else:
            raise LayerError(f"entry {m.name!r}: unsupported tar entry type {m.type!r}")

    def _whiteout(self, rel: str, base: str) -> None:
        parent = self._ensure_parent(rel) if "/" in rel else ""
        parent_path = self.root / parent if parent else self.root
        if base == OPAQUE_MARKER:
            os.setxattr(parent_path, OPAQUE_XATTR, b"y")
            return
        name = base[len(WHITEOUT_PREFIX):]
        if not name or name in (".", ".."):
            raise LayerError(f"entry {rel!r}: malformed whiteout")
        path = parent_path / name
        self._remove_existing(path, f"{parent}/{name}" if parent else name)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def finish(self) -> None:
        for rel, m in reversed(self.dir_meta):  # deepest first, so a parent's mtime is set after its children
            self._apply_meta(self.root / rel if rel else self.root, m)


def unpack_layer(blob: Path, media_type: str, dest: Path, id_shift: int = 0) -> str:
    """Unpacks the layer blob into `dest` (an empty directory) and returns its diff id (`sha256:` + hex)."""
    stream, proc = _open_decompressed(blob, media_type)
    try:
        return unpack_tar_stream(stream, blob.name, dest, id_shift)
    finally:
        stream.close()
        if proc is not None and proc.wait() != 0:
            raise LayerError(f"layer {blob.name}: zstd failed (exit status {proc.returncode})")


def unpack_tar_stream(stream: BinaryIO, name: str, dest: Path, id_shift: int = 0) -> str:
    """Unpacks an uncompressed layer tar read from `stream` into `dest` (an empty directory) and returns its diff
    id. `name` names the layer in errors. A stream lets a pull unpack a blob while it is still being written."""
    reader = _HashingReader(stream)
    unpacker = _Unpacker(dest, id_shift)
    buffered = io.BufferedReader(reader, 1 << 20)
    try:
        with tarfile.open(fileobj=buffered, mode="r|") as tf:
            for member in tf:
                unpacker.add(tf, member)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as exc:
        raise LayerError(f"layer {name}: not a valid tar stream ({exc})") from exc
    # what BufferedReader read ahead was hashed already; hash the rest the tar reader did not need
    reader.drain()
    unpacker.finish()
    return "sha256:" + reader.sha.hexdigest()
