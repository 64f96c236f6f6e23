"""`Volume`: a file tree shared by functions, mounted into their containers (`volumes={"/data": vol}`).

As in Modal, a container sees the volume as it was committed when the container started, plus its own writes;
`vol.commit()` (inside the container) makes its writes visible to others, `vol.reload()` shows what others
committed since. A container's changes are also committed when it exits, whatever the reason. From anywhere,
`listdir`, `read_file`, `remove_file`, `copy_files` and `batch_upload` work on the committed state.
See shoal/controlplane/volumes.py for how it is stored and mounted.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

from ._client.aio import Emit, Plan, Request, in_thread, rpc, rpc_iter, run_plan
from ._client.transport import get_client, raise_error
from ._object import ObjectManager, StorageObject
from ._spec.definitions import VolumeMount
from .exception import AlreadyExistsError, InvalidError, NotFoundError
from .types import FileEntry, FileEntryType

CHUNK = 1 << 20

__all__ = ["FileEntry", "FileEntryType", "Volume"]


class _FileNotFoundError(NotFoundError, FileNotFoundError):
    """A path missing from a volume: catchable as `modal.exception.NotFoundError` or `FileNotFoundError`."""


class _FileExistsError(AlreadyExistsError, FileExistsError):
    """`batch_upload(force=False)` over an existing file."""


def _check_version(version: Any) -> None:
    if version not in (None, 1, 2):
        raise InvalidError(f"Volume version must be 1 or 2, got {version!r}")


def _in_container() -> tuple[str, str]:
    cid = os.environ.get("SHOAL_CONTAINER_ID")
    if not cid:
        raise InvalidError("Volume.commit() and Volume.reload() work only inside a container that mounts the "
                           "volume (a function with `volumes={path: volume}`)")
    return cid, os.environ.get("SHOAL_CONTAINER_TOKEN", "")


def _file_op(request: Request) -> Plan:
    """One request whose missing paths raise FileNotFoundError (as Modal's do) and existing ones
    FileExistsError; both are also shoal's NotFoundError / AlreadyExistsError."""
    try:
        return (yield request)
    except AlreadyExistsError as exc:
        raise _FileExistsError(str(exc)) from None
    except NotFoundError as exc:
        raise _FileNotFoundError(str(exc)) from None


def _connection() -> tuple[Any, dict[str, str]]:
    """A connection of its own for a streamed body (the shared keep-alive one stays free for other calls)."""
    import http.client

    client = get_client()
    parts = urlsplit(client.info.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=None, blocksize=CHUNK)
    return conn, {"Authorization": f"Bearer {client.info.token}"}


def _check_response(resp: Any) -> bytes:
    data = resp.read()
    if resp.status >= 400:
        try:
            raise_error(resp.status, data)
        except NotFoundError as exc:
            raise _FileNotFoundError(str(exc)) from None
    return data


class _VolumeManager(ObjectManager):
    @rpc
    def create(self, name: str, *, version: int | None = None, allow_existing: bool = False,
               environment_name: str | None = None, client: Any = None) -> Plan:
        _check_version(version)
        return (yield from self._create(name, allow_existing))


class _VolumeManagerDescriptor:
    def __get__(self, obj: Any, cls: type[Volume]) -> _VolumeManager:
        return _VolumeManager(cls)


class Volume(StorageObject):
    _kind = "volume"
    objects = _VolumeManagerDescriptor()

    def __init__(self, *, name: str | None = None, object_id: str | None = None, create_if_missing: bool = False,
                 read_only: bool = False) -> None:
        super().__init__(name=name, object_id=object_id, create_if_missing=create_if_missing)
        self._read_only = read_only

    def __repr__(self) -> str:
        return f"Volume({self._name or self._object_id!r}{', read_only=True' if self._read_only else ''})"

    def __reduce__(self) -> tuple:
        return (_rebuild, (self._name, self._object_id, self._create_if_missing, self._read_only))

    @classmethod
    def from_name(cls, name: str, *, environment_name: str | None = None, create_if_missing: bool = False,
                  version: int | None = None, create_options: dict | None = None, client: Any = None) -> Volume:
        """A reference resolved on first use (by the function using it, or at registration for mounts)."""
        _check_version(version)
        return super().from_name(name, environment_name=environment_name, create_if_missing=create_if_missing)

    @classmethod
    def ephemeral(cls, client: Any = None, environment_name: str | None = None, version: int | None = None,
                  **kwargs: Any) -> Any:
        """`with Volume.ephemeral() as vol:` an unnamed volume, deleted with its files on exit."""
        _check_version(version)
        return super().ephemeral(client, environment_name)

    def read_only(self) -> Volume:
        """The same volume, mounted read-only where a function lists it in `volumes=`."""
        return self.with_mount_options(read_only=True)

    def with_mount_options(self, *, read_only: bool | None = None, sub_path: str | None = None) -> Volume:
        if sub_path is not None:
            raise InvalidError("Volume.with_mount_options(sub_path=...) is not supported by shoal yet")
        return Volume(name=self._name, object_id=self._object_id, create_if_missing=self._create_if_missing,
                      read_only=self._read_only if read_only is None else bool(read_only))

    @staticmethod
    @rpc
    def rename(old_name: str, new_name: str, *, client: Any = None, environment_name: str | None = None) -> Plan:
        yield ("POST", "/v1/volumes/rename", {"old_name": old_name, "new_name": new_name})

    # -- inside a container ----------------------------------------------------------------------------------
    @rpc
    def commit(self) -> Plan:
        """Make this container's changes under the volume's mount path visible to others (a new version)."""
        cid, token = _in_container()
        object_id = yield from self._resolve()
        yield ("POST", f"/v1/volumes/{object_id}/commit", {"container_id": cid, "container_token": token})

    @rpc
    def reload(self) -> Plan:
        """Show the volume's latest committed state at its mount path. This container's own uncommitted changes
        are committed first (as Modal allows); fails ("volume busy") while files under the path are open."""
        cid, token = _in_container()
        object_id = yield from self._resolve()
        yield ("POST", f"/v1/volumes/{object_id}/reload", {"container_id": cid, "container_token": token})

    # -- the committed state, from anywhere ------------------------------------------------------------------
    @rpc
    def listdir(self, path: str, *, recursive: bool = False) -> Plan:
        """The entries of directory `path` (everything below it with `recursive`), paths relative to the
        volume's root."""
        return (yield from self._listdir(path, recursive))

    def _listdir(self, path: str, recursive: bool) -> Plan:
        object_id = yield from self._resolve()
        resp = yield from _file_op(
            ("GET", f"/v1/volumes/{object_id}/entries?path={quote(path)}&recursive={int(recursive)}", None))
        return [FileEntry(p, FileEntryType(t), mtime, size) for p, t, mtime, size in resp["entries"]]

    @rpc_iter
    def iterdir(self, path: str, *, recursive: bool = True) -> Plan:
        """The entries below `path` (everything below it by default), one at a time."""
        yield Emit((yield from self._listdir(path, recursive)))

    @in_thread
    def read_file(self, path: str) -> Iterator[bytes]:
        """The file's bytes, in chunks of up to 1 MiB, streamed over a connection of their own."""
        object_id = run_plan(self._resolve())
        conn, headers = _connection()
        try:
            conn.request("GET", f"/v1/volumes/{object_id}/file?path={quote(path)}", headers=headers)
            resp = conn.getresponse()
            if resp.status >= 400:
                _check_response(resp)
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    return
                yield chunk
        finally:
            conn.close()

    @in_thread
    def read_file_into_fileobj(self, path: str, fileobj: BinaryIO,
                               progress_cb: Callable[..., Any] | None = None) -> int:
        """Write the file into `fileobj`; returns the number of bytes written."""
        n = 0
        for chunk in self.read_file(path):
            fileobj.write(chunk)
            n += len(chunk)
            if progress_cb is not None:
                progress_cb(advance=len(chunk))
        return n

    @rpc
    def remove_file(self, path: str, recursive: bool = False) -> Plan:
        """Remove a file, or a directory (with everything in it: `recursive=True`)."""
        object_id = yield from self._resolve()
        yield from _file_op(("POST", f"/v1/volumes/{object_id}/remove", {"path": path, "recursive": recursive}))

    @rpc
    def copy_files(self, src_paths: list[str], dst_path: str, recursive: bool = False) -> Plan:
        """Copy files (directories with `recursive=True`) within the volume: into `dst_path` when it is a
        directory or several sources are given, else to `dst_path`."""
        if isinstance(src_paths, str):
            raise InvalidError("copy_files: src_paths must be a list of paths, not a string")
        object_id = yield from self._resolve()
        yield from _file_op(("POST", f"/v1/volumes/{object_id}/copy",
                             {"src_paths": [str(p) for p in src_paths], "dst_path": str(dst_path),
                              "recursive": recursive}))

    def batch_upload(self, force: bool = False) -> _BatchUpload:
        """`with vol.batch_upload() as batch: batch.put_file(...); batch.put_directory(...)`: the files are
        uploaded when the block ends and appear together (one new version); with `force=False` an existing
        file fails the batch with FileExistsError."""
        return _BatchUpload(self, force)


def _rebuild(name: str | None, object_id: str | None, create_if_missing: bool, read_only: bool) -> Volume:
    return Volume(name=name, object_id=object_id, create_if_missing=create_if_missing, read_only=read_only)


class _BatchUpload:
    """Collects files, then streams each to the control plane and commits them as one version."""

    def __init__(self, volume: Volume, force: bool) -> None:
        self._volume = volume
        self._force = force
        self._files: list[tuple[Any, str, int]] = []  # (local path or file object, remote path, mode)

    def put_file(self, local_file: str | os.PathLike | BinaryIO, remote_path: str | os.PathLike,
                 mode: int | None = None) -> None:
        """Upload a local file (or a binary file object, read when the batch ends) to `remote_path`; parent
        directories are made as needed. `mode` defaults to the local file's (0o644 for file objects)."""
        remote = str(remote_path)
        if isinstance(local_file, (str, os.PathLike)):
            local = os.fspath(local_file)
            st = os.stat(local)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(f"{local} is a directory: use put_directory()")
            if remote.endswith("/"):
                remote += os.path.basename(local)
            source: Any = local
            mode = stat.S_IMODE(st.st_mode) if mode is None else mode
        elif hasattr(local_file, "read"):
            source = local_file
            mode = 0o644 if mode is None else mode
        else:
            raise InvalidError(f"put_file takes a path or a binary file object, got {type(local_file).__name__}")
        parts = [p for p in PurePosixPath("/", remote).parts[1:] if p not in ("", ".")]
        if not parts or remote.endswith("/"):
            raise InvalidError(f"put_file: {remote_path!r} does not name a file")
        self._files.append((source, "/".join(parts), int(mode)))

    def put_directory(self, local_path: str | os.PathLike, remote_path: str | os.PathLike,
                      recursive: bool = True) -> None:
        """Upload the files of a local directory (and of its subdirectories: `recursive`) below `remote_path`."""
        local = Path(local_path)
        if not local.is_dir():
            raise NotADirectoryError(f"{local} is not a directory")
        remote = str(remote_path).rstrip("/")
        for p in sorted(local.rglob("*") if recursive else local.glob("*")):
            if p.is_file():
                self.put_file(p, f"{remote}/{p.relative_to(local).as_posix()}")

    def __enter__(self) -> _BatchUpload:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._upload()

    async def __aenter__(self) -> _BatchUpload:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            import asyncio  # here, not at import: containers import the SDK

            await asyncio.to_thread(self._upload)

    def _upload(self) -> None:
        if not self._files:
            return
        object_id = run_plan(self._volume._resolve())
        client = get_client()
        upload_id = client.call("POST", f"/v1/volumes/{object_id}/uploads", {})["upload_id"]
        conn, headers = _connection()
        try:
            for i, (source, _, _) in enumerate(self._files):
                url = f"/v1/volumes/{object_id}/uploads/{upload_id}/{i}"
                if isinstance(source, str):
                    with open(source, "rb") as f:
                        size = os.fstat(f.fileno()).st_size
                        conn.request("PUT", url, body=f, headers={**headers, "Content-Length": str(size)})
                        _check_response(conn.getresponse())
                else:  # a file object: chunked, whatever its size
                    conn.request("PUT", url, body=source, headers=headers)
                    _check_response(conn.getresponse())
        finally:
            conn.close()
        run_plan(_file_op(("POST", f"/v1/volumes/{object_id}/uploads/{upload_id}/commit",
                           {"files": [[i, remote, mode] for i, (_, remote, mode) in enumerate(self._files)],
                            "force": self._force})))


def check_mounts(volumes: Any) -> dict[str, Volume]:
    """`volumes=` of a function: {absolute container path: Volume}; returns it with normalised paths."""
    if not isinstance(volumes, dict):
        raise InvalidError(f"`volumes` must be a dict, got {type(volumes).__name__}")
    out: dict[str, Volume] = {}
    for path, vol in volumes.items():
        p = str(path)
        if not isinstance(path, (str, PurePosixPath)) or not p.startswith("/"):
            raise InvalidError(f"`volumes`: mount path {path!r} must be an absolute path")
        norm = "/" + "/".join(x for x in p.split("/") if x)
        if norm == "/":
            raise InvalidError("`volumes`: a volume cannot be mounted at '/'")
        if any(x in (".", "..") for x in p.split("/")):
            raise InvalidError(f"`volumes`: mount path {path!r} must not contain '.' or '..'")
        if not isinstance(vol, Volume):
            raise InvalidError(f"`volumes`: {path!r} must map to a modal.Volume, got {type(vol).__name__}")
        if norm in out:
            raise InvalidError(f"`volumes`: two volumes are mounted at {norm!r}")
        for other in out:
            if norm.startswith(other + "/") or other.startswith(norm + "/"):
                raise InvalidError(f"`volumes`: mount paths {other!r} and {norm!r} overlap")
        out[norm] = vol
    return out


def mount_refs(volumes: dict[str, Volume] | None) -> list[VolumeMount]:
    """The mounts as a function definition carries them, each volume resolved to its id (created now when it
    was looked up with `create_if_missing=True`)."""
    refs = []
    for path, vol in (volumes or {}).items():
        object_id = run_plan(vol._resolve())
        refs.append(VolumeMount(mount_path=path, volume_id=object_id, name=vol.name, read_only=vol._read_only))
    return refs
