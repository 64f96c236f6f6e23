"""The routes of `shoal.Sandbox` (docs/sandboxes.md): create, list, look up, wait, terminate, tags, output and
stdin by byte offset, exec, tunnels and filesystem operations. The work is core/sandboxes.py's; tunnels are
sandbox_tunnels.py's. Filesystem operations run inside the container (a small program of the interpreter the
container sees), never through host paths."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .._spec import requests as req
from .._spec.limits import DATA_BODY_MAX, MAX_WAIT_S
from ..backends import local_exec
from .core.sandbox_streams import read_file
from .core.sandboxes import Exec, Proc, Sandbox, row_info
from .rest import ApiError, body_of, query_of, reply
from .store import sandboxes as rows

if TYPE_CHECKING:
    from .core.registry import Registry
    from .core.sandboxes import Sandboxes
    from .sandbox_tunnels import Tunnels

__all__ = ["SandboxRoutes"]

FS_OPS = ("read", "write", "list", "mkdir", "remove", "stat")
FS_TIMEOUT_S = 60.0
# Runs inside the sandbox as `python -I -S -c FS_CODE op path flag` (data on stdin): answers one JSON object.
FS_CODE = r"""
import base64, json, os, shutil, stat, sys
op, path, flag = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def kind(m):
    return "directory" if stat.S_ISDIR(m) else "symlink" if stat.S_ISLNK(m) else "file"
try:
    if op == "read":
        with open(path, "rb") as f:
            r = {"data": base64.b64encode(f.read()).decode()}
    elif op == "write":
        data = sys.stdin.buffer.read()
        if flag:
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        r = {"size": len(data)}
    elif op == "list":
        r = {"entries": sorted(({"name": e.name, "type": kind(e.stat(follow_symlinks=False).st_mode),
                                 "size": e.stat(follow_symlinks=False).st_size} for e in os.scandir(path)),
                                key=lambda e: e["name"])}
    elif op == "mkdir":
        os.makedirs(path, exist_ok=True) if flag else os.mkdir(path)
        r = {}
    elif op == "remove":
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path) if flag else os.rmdir(path)
        else:
            os.unlink(path)
        r = {}
    else:
        st = os.lstat(path)
        r = {"size": st.st_size, "mode": st.st_mode, "mtime": st.st_mtime, "type": kind(st.st_mode)}
except OSError as e:
    r = {"error": f"{e.strerror or e}: {path}", "errno": e.errno or 0}
sys.stdout.write(json.dumps(r))
"""
_ERRNO_KIND = {2: (404, "NotFoundError"), 20: (400, "InvalidError"), 21: (400, "InvalidError"),
               13: (403, "PermissionDeniedError"), 1: (403, "PermissionDeniedError"), 39: (400, "InvalidError"),
               17: (409, "AlreadyExistsError"), 30: (403, "PermissionDeniedError")}



FS_OUTPUT_MAX = DATA_BODY_MAX * 4 // 3 + 65536  # the largest answer a read may give (base64 of DATA_BODY_MAX)


def _garbled(sb: Any) -> ApiError:
    return ApiError(502, f"the filesystem operation in sandbox {sb.id} answered something unreadable (its "
                         "interpreter may have been replaced)", "InternalFailure")


async def _bounded(proc: asyncio.subprocess.Process, data: bytes) -> tuple[bytes, bytes]:
    """What the program inside printed, read no further than FS_OUTPUT_MAX + 1 bytes (it runs on the sandbox's
    own interpreter, which may print without end), and the start of its errors."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
        proc.stdin.close()
    except ConnectionError:
        pass  # it ended without reading: its output says why
    out = bytearray()
    while len(out) <= FS_OUTPUT_MAX and (chunk := await proc.stdout.read(1 << 20)):
        out += chunk
    err = await proc.stderr.read(4096) if len(out) <= FS_OUTPUT_MAX else b""
    return bytes(out), err

class SandboxRoutes:
    def __init__(self, sandboxes: Sandboxes, registry: Registry, tunnels: Tunnels) -> None:
        self.sandboxes = sandboxes
        self.registry = registry
        self.tunnels = tunnels

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v1/sandboxes", self.create)
        r.add_get("/v1/sandboxes", self.list)
        r.add_get("/v1/sandboxes/by-name", self.by_name)
        r.add_get("/v1/sandboxes/{sandbox_id}", self.get)
        r.add_get("/v1/sandboxes/{sandbox_id}/wait", self.wait)
        r.add_post("/v1/sandboxes/{sandbox_id}/terminate", self.terminate)
        r.add_put("/v1/sandboxes/{sandbox_id}/tags", self.set_tags)
        r.add_get("/v1/sandboxes/{sandbox_id}/output", self.output)
        r.add_post("/v1/sandboxes/{sandbox_id}/stdin", self.stdin)
        r.add_post("/v1/sandboxes/{sandbox_id}/exec", self.exec)
        r.add_get("/v1/sandboxes/{sandbox_id}/tunnels", self.get_tunnels)
        r.add_post("/v1/sandboxes/{sandbox_id}/fs/{op}", self.fs)
        r.add_post("/v1/sandboxes/{sandbox_id}/snapshot", self.snapshot)
        r.add_post("/v1/sandboxes/{sandbox_id}/reload-volumes", self.reload_volumes)
        r.add_get("/v1/execs/{exec_id}/output", self.exec_output)
        r.add_post("/v1/execs/{exec_id}/stdin", self.exec_stdin)
        r.add_get("/v1/execs/{exec_id}/wait", self.exec_wait)

    async def app_of(self, request: web.Request, route: str) -> str | None:
        """The app a sandbox route acts on (the gate's fact for access.py)."""
        info = request.match_info
        if "sandbox_id" in info:
            return await self.sandboxes.app_of(info["sandbox_id"])
        if "exec_id" in info:
            return await self.sandboxes.app_of_exec(info["exec_id"])
        if route == "/v1/sandboxes/by-name":
            name = request.query.get("app_name")
            return next((a.id for a in self.registry.apps.values() if a.name == name), None)
        if request.method == "POST":
            return (await body_of(request, req.SandboxCreate)).app_id
        return request.query.get("app_id")

    # -- sandboxes -------------------------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        body = await body_of(request, req.SandboxCreate)
        # Shielded: a caller that goes away mid-start leaves a sandbox that ends by its timeout, never a
        # container half started.
        sb = await asyncio.shield(self.sandboxes.create(body))
        return reply({"sandbox_id": sb.id})

    async def list(self, request: web.Request) -> web.Response:
        app_id = request.query.get("app_id") or None
        wanted: dict[str, str] = {}
        for item in request.query.getall("tag", []):
            key, sep, value = item.partition("=")
            if not sep:
                raise ApiError(400, f"`tag`: {item!r} is not key=value")
            wanted[key] = value
        found = [row_info(r) for r in await rows.of_app(self.sandboxes.store, app_id)]
        live = self.sandboxes.live
        out = [live[i["sandbox_id"]].info() if i["sandbox_id"] in live else i for i in found]
        out = [i for i in out if all(i["tags"].get(k) == v for k, v in wanted.items())]
        return reply({"sandboxes": out})

    async def by_name(self, request: web.Request) -> web.Response:
        q = query_of(request, req.SandboxByName)
        for sb in self.sandboxes.live.values():
            app = self.registry.apps.get(sb.app_id)
            if sb.name == q.name and sb.state != "terminated" and app is not None and app.name == q.app_name:
                return reply(sb.info())
        raise ApiError(404, f"no running sandbox named {q.name!r} in app {q.app_name!r}", "NotFoundError")

    async def get(self, request: web.Request) -> web.Response:
        return reply(await self.sandboxes.info(request.match_info["sandbox_id"]))

    async def wait(self, request: web.Request) -> web.Response:
        sid = request.match_info["sandbox_id"]
        timeout = min(query_of(request, req.SandboxWait).timeout, MAX_WAIT_S)
        sb = self.sandboxes.live.get(sid)
        if sb is not None:
            await _wait(sb.proc, timeout)
            if not sb.proc.done.is_set():
                return reply({"returncode": None, "reason": None})
            return reply({"returncode": sb.proc.returncode, "reason": sb.proc.reason})
        info = await self.sandboxes.info(sid)
        return reply({"returncode": info["returncode"], "reason": info["reason"]})

    async def terminate(self, request: web.Request) -> web.Response:
        sb = self.sandboxes.live.get(request.match_info["sandbox_id"])
        if sb is None:
            await self.sandboxes.info(request.match_info["sandbox_id"])  # 404 when there is no such sandbox
        else:
            self.sandboxes.terminate(sb)
        return reply({})

    async def set_tags(self, request: web.Request) -> web.Response:
        sid = request.match_info["sandbox_id"]
        body = await body_of(request, req.SandboxTags)
        await self.sandboxes.info(sid)  # 404 first
        sb = self.sandboxes.live.get(sid)
        if sb is not None:
            sb.tags = dict(body.tags)
        await self.sandboxes.store.flushed(rows.set_tags(self.sandboxes.store, sid, dict(body.tags)))
        return reply({})

    async def output(self, request: web.Request) -> web.Response:
        sid = request.match_info["sandbox_id"]
        q = query_of(request, req.StreamRead)
        sb = self.sandboxes.live.get(sid)
        if sb is not None:
            return await _read(sb.proc, q)
        await self.sandboxes.info(sid)  # 404 when unknown
        return _stored(self.sandboxes.dir / sid / q.fd, q.offset)

    async def stdin(self, request: web.Request) -> web.Response:
        sb = self.sandboxes.live.get(request.match_info["sandbox_id"])
        body = await body_of(request, req.StreamWrite)
        if sb is None or sb.state == "terminated":
            raise ApiError(409, "the sandbox is not running", "SandboxTerminatedError")
        sb.last_active = _now()
        return await _write(sb.proc, body)

    async def exec(self, request: web.Request) -> web.Response:
        sb = await self.sandboxes.get_live(request.match_info["sandbox_id"])
        ex = await asyncio.shield(self.sandboxes.exec(sb, await body_of(request, req.ExecCreate)))
        return reply({"exec_id": ex.proc.id})

    async def get_tunnels(self, request: web.Request) -> web.Response:
        sb = await self.sandboxes.get_live(request.match_info["sandbox_id"])
        return reply({"tunnels": self.tunnels.describe(sb)})

    async def snapshot(self, request: web.Request) -> web.Response:
        """Its root filesystem as a new image: the OCI image it runs plus its writable layer as it is now."""
        sb = await self.sandboxes.get_live(request.match_info["sandbox_id"])
        image_id = await self.sandboxes.snapshot(sb)
        return reply({"image_id": image_id})

    async def reload_volumes(self, request: web.Request) -> web.Response:
        """Commit what the sandbox wrote to its Volumes, then show it their current versions."""
        sb = await self.sandboxes.get_live(request.match_info["sandbox_id"])
        await self.sandboxes.volumes.reload_all(_Mounted(sb.container_id, sb.handle))
        return reply({})

    # -- filesystem ------------------------------------------------------------------------------------------
    async def fs(self, request: web.Request) -> web.Response:
        op = request.match_info["op"]
        if op not in FS_OPS:
            raise ApiError(404, f"no filesystem operation {op!r} (one of {', '.join(FS_OPS)})", "NotFoundError")
        sb = await self.sandboxes.get_live(request.match_info["sandbox_id"])
        body = await body_of(request, req.FsOp, DATA_BODY_MAX)
        flag = body.parents if op in ("write", "mkdir") else body.recursive
        result = await self._inside(sb, [op, body.path, "1" if flag else "0"], body.data if op == "write" else b"")
        if "error" in result:
            errno_ = result.get("errno")
            status, kind = _ERRNO_KIND.get(errno_ if type(errno_) is int else 0, (400, "InvalidError"))
            raise ApiError(status, f"`path`: {str(result['error'])[:1000]}", kind)
        if "data" in result:
            try:
                return reply({"data": base64.b64decode(result["data"], validate=True)})
            except (TypeError, ValueError):
                raise _garbled(sb) from None
        return reply(result)

    async def _inside(self, sb: Sandbox, args: list[str], data: bytes) -> dict[str, Any]:
        if sb.state != "running" or sb.handle is None:
            raise ApiError(409, f"sandbox {sb.id} is not running", "SandboxTerminatedError")
        target = await self.sandboxes._target(sb)
        python = (sb.image.python if sb.image is not None else None) or \
            (getattr(self.sandboxes.backend, "python", "") if sb.image is None or sb.image.layers is None else "")
        if not python:
            raise ApiError(400, f"filesystem operations run a Python program inside the sandbox, and image "
                                f"{sb.image.image_id if sb.image else '?'} has no Python", "InvalidError")
        argv = local_exec.command_argv(target, [python, "-I", "-S", "-c", FS_CODE, *args], pty=False)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": target.env.get("PATH", local_exec._SYSTEM_PATH)}, cwd="/", start_new_session=True,
            preexec_fn=(lambda: local_exec.prepare_process(target)) if target.sandboxed else None)
        try:
            out, err = await asyncio.wait_for(_bounded(proc, data), FS_TIMEOUT_S)
        except asyncio.TimeoutError as exc:
            raise ApiError(504, "the filesystem operation took too long", "TimeoutError") from exc
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # (what it left running, or all of it: over time or size)
            except ProcessLookupError:
                pass
            await proc.wait()
        if len(out) > FS_OUTPUT_MAX:
            raise ApiError(413, f"`path`: more than {DATA_BODY_MAX} bytes to read at once", "InvalidError")
        try:
            result = json.loads(out)
        except ValueError:
            raise ApiError(502, f"the filesystem operation failed in sandbox {sb.id}: "
                                f"{err.decode(errors='replace').strip()[-500:]}", "InternalFailure") from None
        if not isinstance(result, dict):
            raise _garbled(sb)
        return result

    # -- execs -----------------------------------------------------------------------------------------------
    async def exec_output(self, request: web.Request) -> web.Response:
        eid = request.match_info["exec_id"]
        q = query_of(request, req.StreamRead)
        ex = self.sandboxes.execs.get(eid)
        if ex is not None:
            return await _read(ex.proc, q)
        files = self.sandboxes.exec_files(eid)
        if files is None:
            raise ApiError(404, f"exec {eid} not found", "NotFoundError")
        return _stored(files[q.fd], q.offset)

    async def exec_stdin(self, request: web.Request) -> web.Response:
        ex: Exec = self.sandboxes.get_exec(request.match_info["exec_id"])
        body = await body_of(request, req.StreamWrite)
        ex.sandbox.last_active = _now()
        return await _write(ex.proc, body)

    async def exec_wait(self, request: web.Request) -> web.Response:
        ex = self.sandboxes.execs.get(request.match_info["exec_id"])
        if ex is None:
            return reply(self.sandboxes.exec_exit(request.match_info["exec_id"]))
        await _wait(ex.proc, min(query_of(request, req.SandboxWait).timeout, MAX_WAIT_S))
        return reply({"returncode": ex.proc.returncode if ex.proc.done.is_set() else None,
                      "reason": ex.proc.reason if ex.proc.done.is_set() else None})


class _Mounted:
    """What `Volumes.reload_all` needs of a container: its id and its handle (the process to remount in)."""

    def __init__(self, container_id: str, handle: Any) -> None:
        self.id = container_id
        self.handle = handle


def _now() -> float:
    return time.monotonic()


async def _wait(proc: Proc, timeout: float) -> None:
    if not proc.done.is_set() and timeout > 0:
        try:
            await asyncio.wait_for(proc.done.wait(), timeout)
        except asyncio.TimeoutError:
            pass


async def _read(proc: Proc, q: req.StreamRead) -> web.Response:
    data, offset, eof = await proc.out[q.fd].read(q.offset, min(q.timeout, MAX_WAIT_S))
    return reply({"data": data, "offset": offset, "eof": eof})


def _stored(path: Any, offset: int) -> web.Response:
    data, nxt, eof = read_file(path, offset, True)
    return reply({"data": data, "offset": nxt, "eof": eof})


async def _write(proc: Proc, body: req.StreamWrite) -> web.Response:
    try:
        offset = await proc.stdin.write(body.offset, body.data, body.eof)
    except ValueError as exc:
        raise ApiError(400, f"`offset`: {exc}" if "offset" in str(exc) else str(exc)) from exc
    return reply({"offset": offset})

