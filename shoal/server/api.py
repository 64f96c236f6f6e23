"""The control plane's HTTP API (aiohttp). Bodies are msgpack; every error is a 4xx/5xx with a message.

Routes are thin: they validate, then call the dispatcher. Acknowledgements wait for the store's group commit.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import tarfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import web

from .dispatch import Dispatcher, new_id

MAX_WAIT_S = 50.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "InvalidError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def reply(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=msgpack.packb(payload, use_bin_type=True), status=status,
                        content_type="application/msgpack")


async def body_of(request: web.Request, *required: str) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = msgpack.unpackb(raw, raw=False) if raw else {}
    except Exception as exc:
        raise ApiError(400, f"request body is not valid msgpack: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a msgpack map")
    missing = [k for k in required if k not in body]
    if missing:
        raise ApiError(400, f"missing field(s): {', '.join(missing)}")
    return body


def query_float(request: web.Request, name: str, default: float) -> float:
    try:
        return float(request.query.get(name, default))
    except ValueError as exc:
        raise ApiError(400, f"query parameter {name!r} must be a number") from exc


def query_int(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError as exc:
        raise ApiError(400, f"query parameter {name!r} must be an integer") from exc


class Api:
    def __init__(self, dispatcher: Dispatcher, token: str, state_dir: Path, on_shutdown: Callable[[], None]):
        self.d = dispatcher
        self.token = token.encode()
        self.state_dir = state_dir
        self.blob_dir = state_dir / "blobs"
        self.source_dir = state_dir / "sources"
        self.on_shutdown = on_shutdown
        self.started_at = time.time()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.errors, self.auth], client_max_size=1 << 30)
        r = app.router
        r.add_get("/v1/health", self.health)
        r.add_post("/v1/shutdown", self.shutdown)
        r.add_route("HEAD", "/v1/blobs/{sha}", self.blob_exists)
        r.add_put("/v1/blobs/{sha}", self.put_blob)
        r.add_get("/v1/apps", self.list_apps)
        r.add_post("/v1/apps", self.create_app)
        r.add_post("/v1/apps/{app_id}/functions", self.register_functions)
        r.add_post("/v1/apps/{app_id}/stop", self.stop_app)
        r.add_get("/v1/apps/{app_id}/logs", self.app_logs)
        r.add_post("/v1/functions/{function_id}/calls", self.create_call)
        r.add_get("/v1/functions/{function_id}/stats", self.function_stats)
        r.add_post("/v1/calls/{call_id}/inputs", self.add_inputs)
        r.add_get("/v1/calls/{call_id}/outputs", self.get_outputs)
        r.add_get("/v1/calls/{call_id}/result", self.get_result)
        r.add_get("/v1/calls/{call_id}", self.get_call)
        r.add_post("/v1/calls/{call_id}/cancel", self.cancel_call)
        r.add_get("/v1/containers", self.list_containers)
        return app

    # -- middleware ------------------------------------------------------------------------------------------
    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return reply({"error": str(exc), "type": exc.kind}, status=exc.status)
        except web.HTTPException as exc:
            return reply({"error": exc.reason or str(exc), "type": "InvalidError"}, status=exc.status)

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/v1/health":
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
            if not hmac.compare_digest(given, self.token):
                raise ApiError(401, "missing or wrong token (see SHOAL_HOME/token)", "AuthError")
        return await handler(request)

    # -- server ----------------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return reply({"ok": True, "pid": os.getpid(), "uptime_s": time.time() - self.started_at})

    async def shutdown(self, request: web.Request) -> web.Response:
        self.on_shutdown()
        return reply({"ok": True})

    # -- source blobs ----------------------------------------------------------------------------------------
    def _blob_path(self, sha: str) -> Path:
        if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
            raise ApiError(400, "blob id must be a lowercase sha256 hex digest")
        return self.blob_dir / sha

    async def blob_exists(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._blob_path(request.match_info["sha"]).exists() else 404)

    async def put_blob(self, request: web.Request) -> web.Response:
        sha = request.match_info["sha"]
        path = self._blob_path(sha)
        data = await request.read()
        if hashlib.sha256(data).hexdigest() != sha:
            raise ApiError(400, "blob content does not match its sha256")
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(path)
        return reply({"ok": True})

    def _materialise(self, sha: str) -> str:
        """Unpack a source tarball once per machine; containers run with it as working directory."""
        target = self.source_dir / sha
        if not target.exists():
            blob = self._blob_path(sha)
            if not blob.exists():
                raise ApiError(400, f"source blob {sha} was not uploaded")
            tmp = self.source_dir / f".{sha}.{os.getpid()}.tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(blob.read_bytes())) as tar:
                tar.extractall(tmp, filter="data")
            try:
                tmp.rename(target)
            except OSError:
                pass  # another request got there first
        return str(target)

    # -- apps ------------------------------------------------------------------------------------------------
    async def list_apps(self, request: web.Request) -> web.Response:
        rows = await self.d.store.read(
            "SELECT app_id, name, mode, state, created_at, stopped_at FROM apps ORDER BY created_at DESC LIMIT 200"
        )
        apps = []
        for app_id, name, mode, state, created_at, stopped_at in rows:
            live = self.d.apps.get(app_id)
            apps.append({"app_id": app_id, "name": name, "mode": mode, "state": state, "created_at": created_at,
                         "stopped_at": stopped_at, "functions": dict(live.functions) if live else {},
                         "containers": sum(len(p.live()) for p in self.d.pools.values() if p.app_id == app_id)})
        return reply({"apps": apps})

    async def create_app(self, request: web.Request) -> web.Response:
        body = await body_of(request)
        mode = body.get("mode", "ephemeral")
        if mode not in ("ephemeral", "deployed"):
            raise ApiError(400, "mode must be 'ephemeral' or 'deployed'")
        app = await self.d.create_app(body.get("name"), mode, bool(body.get("detach")))
        return reply({"app_id": app.id})

    def _app(self, request: web.Request) -> Any:
        app = self.d.apps.get(request.match_info["app_id"])
        if app is None:
            raise ApiError(404, f"app {request.match_info['app_id']} not found or stopped", "NotFoundError")
        return app

    async def register_functions(self, request: web.Request) -> web.Response:
        app = self._app(request)
        body = await body_of(request, "functions")
        defs = body["functions"]
        if not isinstance(defs, list) or not all(isinstance(d, dict) and "tag" in d for d in defs):
            raise ApiError(400, "functions must be a list of maps with a 'tag'")
        for d in defs:
            if d.get("secret_names"):
                raise ApiError(404, f"secret {d['secret_names'][0]!r} not found: this control plane does not "
                                    "store named secrets yet (use Secret.from_dict / from_dotenv)", "NotFoundError")
            if d.get("source_id"):
                d["source_dir"] = self._materialise(d["source_id"])
            elif d.get("serialized_fn") is None:
                raise ApiError(400, f"function {d['tag']!r} has neither source_id nor serialized_fn")
        return reply({"functions": await self.d.register_functions(app, defs)})

    async def stop_app(self, request: web.Request) -> web.Response:
        await self.d.stop_app(request.match_info["app_id"])
        return reply({"ok": True})

    async def app_logs(self, request: web.Request) -> web.Response:
        """Long-poll for log entries. A poll with `session=1` also tells the app its client is alive."""
        app_id = request.match_info["app_id"]
        app = self.d.apps.get(app_id)
        after = query_int(request, "after", -1)
        if app is None:
            return reply({"entries": [], "last": after, "state": "stopped"})
        timeout = min(query_float(request, "timeout", 0), MAX_WAIT_S)
        session = request.query.get("session") == "1"
        if session:
            app.sessions += 1
            app.orphaned_at = None
        try:
            entries = await app.logs.wait(after, timeout)
        finally:
            if session:
                app.sessions -= 1
                if app.sessions == 0:
                    app.orphaned_at = time.monotonic()
        return reply({"entries": [e for e in entries if e["data"]], "last": app.logs.next_seq - 1,
                      "state": app.state})

    # -- calls -----------------------------------------------------------------------------------------------
    def _pool(self, request: web.Request) -> Any:
        pool = self.d.get_pool(request.match_info["function_id"])
        if pool is None:
            raise ApiError(404, f"function {request.match_info['function_id']} not found (is its app running?)",
                           "NotFoundError")
        return pool

    async def create_call(self, request: web.Request) -> web.Response:
        pool = self._pool(request)
        body = await body_of(request, "kind")
        kind = body["kind"]
        if kind not in ("remote", "spawn", "gen", "map"):
            raise ApiError(400, "kind must be one of remote, spawn, gen, map")
        if kind != "map" and not isinstance(body.get("args"), bytes):
            raise ApiError(400, "args (bytes) is required for this kind of call")
        call_id = body.get("call_id") or new_id("fc")
        if not isinstance(call_id, str) or not call_id.startswith("fc-"):
            raise ApiError(400, "call_id must be a string starting with 'fc-'")
        call, ticket = await self.d.create_call(pool, call_id, kind, body.get("args"))
        if kind != "remote":
            await self.d.store.flushed(ticket)
            return reply({"call_id": call.id})
        result = await self.d.wait_result(call, 0, min(float(body.get("wait", MAX_WAIT_S)), MAX_WAIT_S))
        if result is None:
            return reply({"call_id": call.id, "pending": True})
        return reply({"call_id": call.id, "status": result[0], "data": result[1]})

    def _call(self, request: web.Request) -> Any:
        return self.d.calls.get(request.match_info["call_id"])

    async def add_inputs(self, request: web.Request) -> web.Response:
        call = self._call(request)
        if call is None:
            raise ApiError(404, f"call {request.match_info['call_id']} not found", "NotFoundError")
        if call.kind != "map":
            raise ApiError(400, "inputs can only be added to map calls")
        body = await body_of(request, "items")
        items = body["items"]
        if not isinstance(items, list) or not all(
            isinstance(i, list) and len(i) == 2 and isinstance(i[0], int) and isinstance(i[1], bytes) for i in items
        ):
            raise ApiError(400, "items must be a list of [index, args] pairs")
        ticket = self.d.add_inputs(call, [(i, a) for i, a in items], bool(body.get("last")))
        await self.d.store.flushed(ticket)
        return reply({"ok": True})

    async def get_outputs(self, request: web.Request) -> web.Response:
        call = self._call(request)
        if call is None:
            raise ApiError(404, f"call {request.match_info['call_id']} not found", "NotFoundError")
        after = query_int(request, "after", -1)
        timeout = min(query_float(request, "timeout", 0), MAX_WAIT_S)
        limit = query_int(request, "limit", 1000)
        outputs = await self.d.wait_outputs(call, after, timeout, limit)
        done = call.drained and (not outputs or outputs[-1][0] == call.published)
        return reply({"outputs": [list(o) for o in outputs], "done": done})

    async def get_result(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        index = query_int(request, "index", 0)
        timeout = min(query_float(request, "timeout", 0), MAX_WAIT_S)
        call = self.d.calls.get(call_id)
        if call is not None:
            result = await self.d.wait_result(call, index, timeout)
            if result is None:
                return reply({"pending": True})
            return reply({"status": result[0], "data": result[1]})
        rows = await self.d.store.read(
            "SELECT o.status, o.data FROM outputs o WHERE o.call_id=? AND o.idx=? AND o.final=1", (call_id, index)
        )
        if rows:
            return reply({"status": rows[0][0], "data": rows[0][1]})
        state = await self.d.store.read("SELECT state FROM calls WHERE call_id=?", (call_id,))
        if not state:
            raise ApiError(404, f"function call {call_id} not found", "NotFoundError")
        if state[0][0] == "expired":
            raise ApiError(410, f"the result of {call_id} has expired (results are kept 7 days)",
                           "OutputExpiredError")
        return reply({"pending": True})

    async def get_call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        call = self.d.calls.get(call_id)
        if call is not None:
            return reply({"call_id": call_id, "kind": call.kind, "num_inputs": call.total, "state": call.state})
        rows = await self.d.store.read("SELECT kind, num_inputs, state FROM calls WHERE call_id=?", (call_id,))
        if not rows:
            raise ApiError(404, f"function call {call_id} not found", "NotFoundError")
        kind, num_inputs, state = rows[0]
        return reply({"call_id": call_id, "kind": kind, "num_inputs": num_inputs, "state": state})

    async def cancel_call(self, request: web.Request) -> web.Response:
        call = self._call(request)
        body = await body_of(request)
        if call is not None and call.state == "running":
            self.d.cancel_call(call, bool(body.get("terminate_containers")))
        return reply({"ok": True})

    async def function_stats(self, request: web.Request) -> web.Response:
        return reply(self.d.stats(self._pool(request)))

    async def list_containers(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        return reply({"containers": [
            {"container_id": c.id, "app_id": c.pool.app_id, "function": c.pool.tag, "state": c.state,
             "running_inputs": len(c.running), "age_s": now - c.created_at, "timings": c.timings}
            for c in self.d.containers.values()
        ]})
