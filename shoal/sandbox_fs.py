"""`sb.filesystem` and `sb.open()`: files inside a sandbox, read and written by the control plane inside the
container (never through host paths, which would not confine absolute symlinks)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._client.aio import Plan, rpc
from .exception import (
    AlreadyExistsError,
    InvalidError,
    NotFoundError,
    PermissionDeniedError,
    SandboxFilesystemError,
    SandboxFilesystemNotFoundError,
    SandboxFilesystemPathAlreadyExistsError,
    SandboxFilesystemPermissionError,
)

__all__ = ["FileIO", "FileInfo", "SandboxFilesystem", "SandboxFilesystemError", "SandboxFilesystemNotFoundError",
           "SandboxFilesystemPathAlreadyExistsError", "SandboxFilesystemPermissionError"]


def check_remote_path(path: Any, method: str) -> str:
    if not isinstance(path, (str, os.PathLike)) or not str(path).startswith("/"):
        raise InvalidError(f"Sandbox.filesystem.{method}: the path must be an absolute path in the sandbox, "
                           f"got {path!r}")
    if "\x00" in str(path):
        raise InvalidError(f"Sandbox.filesystem.{method}: the path contains a NUL character")
    return str(path)


@dataclass(frozen=True)
class FileInfo:
    """`Sandbox.filesystem.stat()` / `list_files()`: a path's kind, size, mode and modification time."""

    path: str
    type: str  # "file" | "directory" | "symlink" | "other"
    size: int = 0
    mode: int = 0
    mtime: float = 0.0

    @property
    def is_dir(self) -> bool:
        return self.type == "directory"


def _file_info(wire: dict[str, Any], path: str = "") -> FileInfo:
    return FileInfo(path=wire.get("path") or wire.get("name") or path, type=wire.get("type", "file"),
                    size=int(wire.get("size") or 0), mode=int(wire.get("mode") or 0),
                    mtime=float(wire.get("mtime") or 0.0))


class SandboxFilesystem:
    """`sb.filesystem`: files inside the sandbox (run there, never through host paths). Paths are absolute."""

    def __init__(self, sandbox: Any) -> None:
        self._sandbox = sandbox

    def _op(self, op: str, body: dict[str, Any]) -> Plan:
        try:
            return (yield ("POST", self._sandbox._path(f"/fs/{op}"), body))
        except NotFoundError as exc:
            raise SandboxFilesystemNotFoundError(str(exc)) from None
        except AlreadyExistsError as exc:
            raise SandboxFilesystemPathAlreadyExistsError(str(exc)) from None
        except PermissionDeniedError as exc:
            raise SandboxFilesystemPermissionError(str(exc)) from None
        except InvalidError as exc:  # not a directory, is a directory, not empty: the control plane says which
            raise SandboxFilesystemError(str(exc)) from None

    @rpc
    def read_bytes(self, remote_path: str) -> Plan:
        path = check_remote_path(remote_path, "read_bytes")
        resp = yield from self._op("read", {"path": path})
        return bytes(resp.get("data") or b"")

    @rpc
    def read_text(self, remote_path: str) -> Plan:
        path = check_remote_path(remote_path, "read_text")
        resp = yield from self._op("read", {"path": path})
        return bytes(resp.get("data") or b"").decode("utf-8")

    @rpc
    def write_bytes(self, data: bytes | bytearray | memoryview, remote_path: str) -> Plan:
        """Write (replace) a file; its parent directories are created."""
        path = check_remote_path(remote_path, "write_bytes")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("data must be bytes-like")
        yield from self._op("write", {"path": path, "data": bytes(data), "parents": True})

    @rpc
    def write_text(self, data: str, remote_path: str) -> Plan:
        path = check_remote_path(remote_path, "write_text")
        if not isinstance(data, str):
            raise TypeError("data must be str")
        yield from self._op("write", {"path": path, "data": data.encode("utf-8"), "parents": True})

    @rpc
    def copy_from_local(self, local_path: str | os.PathLike, remote_path: str) -> Plan:
        path = check_remote_path(remote_path, "copy_from_local")
        data = Path(local_path).read_bytes()
        yield from self._op("write", {"path": path, "data": data, "parents": True})

    @rpc
    def copy_to_local(self, remote_path: str, local_path: str | os.PathLike) -> Plan:
        path = check_remote_path(remote_path, "copy_to_local")
        resp = yield from self._op("read", {"path": path})
        target = Path(local_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.shoal-tmp")
        tmp.write_bytes(bytes(resp.get("data") or b""))
        tmp.replace(target)

    @rpc
    def list_files(self, remote_path: str) -> Plan:
        """The entries of a directory (FileInfo, `path` relative to it)."""
        path = check_remote_path(remote_path, "list_files")
        resp = yield from self._op("list", {"path": path})
        return [_file_info(e) for e in resp.get("entries", [])]

    @rpc
    def make_directory(self, remote_path: str, *, create_parents: bool = True) -> Plan:
        path = check_remote_path(remote_path, "make_directory")
        yield from self._op("mkdir", {"path": path, "parents": bool(create_parents)})

    @rpc
    def remove(self, remote_path: str, *, recursive: bool = False) -> Plan:
        path = check_remote_path(remote_path, "remove")
        yield from self._op("remove", {"path": path, "recursive": bool(recursive)})

    @rpc
    def stat(self, remote_path: str) -> Plan:
        path = check_remote_path(remote_path, "stat")
        resp = yield from self._op("stat", {"path": path})
        return _file_info(resp, path)


class FileIO:
    """`sb.open(path, mode)`: a file in the sandbox, read whole when opened and written back whole on `flush()` /
    `close()` (modes r, rb, w, wb, a, ab, r+, w+, a+ and their binary forms)."""

    def __init__(self, sandbox: Any, path: str, mode: str) -> None:
        if not mode or mode[0] not in "rwax" or any(c not in "rwaxb+" for c in mode):
            raise InvalidError(f"Sandbox.open: invalid mode {mode!r}")
        self._sandbox, self._path, self._mode = sandbox, path, mode
        self._binary = "b" in mode
        self._readable = mode[0] == "r" or "+" in mode
        self._writable = mode[0] != "r" or "+" in mode
        self._closed = False
        self._dirty = False
        fs = sandbox.filesystem
        if mode[0] in "ra":
            try:
                self._data = bytearray(fs.read_bytes(path))
            except SandboxFilesystemNotFoundError:
                if mode[0] == "r":
                    raise
                self._data = bytearray()
        else:
            self._data = bytearray()
            self._dirty = True
        self._pos = len(self._data) if mode[0] == "a" else 0

    def _check(self, reading: bool) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        if reading and not self._readable:
            raise ValueError("File not open for reading")
        if not reading and not self._writable:
            raise ValueError("File not open for writing")

    def _out(self, data: bytes) -> Any:
        return data if self._binary else data.decode("utf-8")

    def read(self, n: int | None = None) -> Any:
        self._check(True)
        end = len(self._data) if n is None or n < 0 else min(len(self._data), self._pos + n)
        data, self._pos = bytes(self._data[self._pos:end]), end
        return self._out(data)

    def readline(self) -> Any:
        self._check(True)
        nl = self._data.find(b"\n", self._pos)
        end = len(self._data) if nl < 0 else nl + 1
        data, self._pos = bytes(self._data[self._pos:end]), end
        return self._out(data)

    def readlines(self) -> list[Any]:
        lines = []
        while line := self.readline():
            lines.append(line)
        return lines

    def write(self, data: bytes | str) -> int:
        self._check(False)
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if self._mode[0] == "a":
            self._pos = len(self._data)
        self._data[self._pos:self._pos + len(raw)] = raw
        self._pos += len(raw)
        self._dirty = True
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        self._check(True) if self._readable else self._check(False)
        base = {0: 0, 1: self._pos, 2: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def flush(self) -> None:
        if self._dirty and not self._closed:
            self._sandbox.filesystem.write_bytes(bytes(self._data), self._path)
            self._dirty = False

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> FileIO:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
