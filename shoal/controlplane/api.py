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

from .._spec.limits import MAX_WAIT_S
from .dispatch import Dispatcher, new_id
from .images import ImageBuilder

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
    nul = [k for k, v in body.items() if isinstance(v, str) and "\x00" in v]
    if nul:  # names, tags, partition keys: the store's text columns cannot hold NUL in PostgreSQL
        raise ApiError(400, f"field(s) {', '.join(map(str, nul))} must not contain NUL characters")
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
    def __init__(self, dispatcher: Dispatcher, token: str, state_dir: Path, on_shutdown: Callable[[], None],
                 images: ImageBuilder | None = None):
        self.d = dispatcher
        self.images = images or ImageBuilder(state_dir)
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
        r.add_post("/v1/functions/{function_id}/variants", self.create_variant)
        r.add_get("/v1/functions/lookup", self.lookup_function)
        r.add_get("/v1/functions/{function_id}/stats", self.function_stats)
        r.add_get("/v1/functions/{function_id}/web_url", self.web_url)
        r.add_get("/v1/functions/{function_id}/requests", self.web_requests)
        r.add_post("/v1/calls/{call_id}/inputs", self.add_inputs)
        r.add_get("/v1/calls/{call_id}/outputs", self.get_outputs)
        r.add_get("/v1/calls/{call_id}/result", self.get_result)
        r.add_get("/v1/calls/{call_id}", self.get_call)
        r.add_post("/v1/calls/{call_id}/cancel", self.cancel_call)
        r.add_get("/v1/containers", self.list_containers)
        r.add_get("/v1/functions/{function_id}/autoscaler", self.get_autoscaler)
        r.add_post("/v1/functions/{function_id}/autoscaler", self.update_autoscaler)
        r.add_get("/v1/containers/{container_id}/logs", self.container_logs)
        r.add_post("/v1/containers/{container_id}/stop", self.stop_container)
        r.add_get("/v1/containers/{container_id}", self.get_container)
        r.add_post("/v1/functions/{function_id}/shell", self.start_shell)
        from .deploy import Deployments

        self.deployments = Deployments(self)
        self.deployments.add_routes(r)
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
            "SELECT app_id, name, mode, state, created_at, stopped_at, "
            "(SELECT MAX(version) FROM app_versions v WHERE v.app_id = apps.app_id) "
            "FROM apps ORDER BY created_at DESC LIMIT 200"
        )
        apps = []
        others: dict[str, dict[str, str]] = {}  # functions of running apps another replica owns
        if self.d.replicas is not None and any(r[3] == "running" and r[0] not in self.d.apps for r in rows):
            for app_id, tag, function_id in await self.d.store.read(
                    "SELECT f.app_id, f.tag, f.function_id FROM functions f JOIN apps a ON a.app_id = f.app_id "
                    "WHERE a.state='running'"):
                others.setdefault(app_id, {})[tag] = function_id
        for app_id, name, mode, state, created_at, stopped_at, version in rows:
            live = self.d.apps.get(app_id)
            pools = [p for p in self.d.pools.values() if p.app_id == app_id]
            apps.append({"app_id": app_id, "name": name, "mode": mode, "version": version, "state": state,
                         "created_at": created_at,
                         "stopped_at": stopped_at,
                         "functions": dict(live.functions) if live else others.get(app_id, {}),
                         "containers": sum(len(p.live()) for p in pools),
                         "next_runs": {p.tag: self.d.scheduler.upcoming(p) for p in pools
                                       if p.definition.get("schedule") and self.d.scheduler}})
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
        """Add (or update) an app's functions. With `strategy` ("rolling" or "recreate"; `shoal serve` sends
        recreate on each reload) the definitions become the app's next version, exactly as a redeploy: pools
        keep their ids and get the new definitions, their containers are superseded that way, and functions
        left out stop."""
        from .deploy import STRATEGIES

        app = self._app(request)
        body = await body_of(request, "functions")
        defs, strategy = body["functions"], body.get("strategy")
        if not isinstance(defs, list) or not all(isinstance(d, dict) and "tag" in d for d in defs):
            raise ApiError(400, "functions must be a list of maps with a 'tag'")
        if strategy is not None and strategy not in STRATEGIES:
            raise ApiError(400, f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        await self.prepare_definitions(app, defs)
        if strategy is None:
            return reply({"functions": await self.d.register_functions(app, defs)})
        async with self.deployments._lock(app.id):
            if app.state != "running":  # stopped while its images were building
                raise ApiError(409, f"app {app.id} was stopped while its functions were being updated",
                               "InvalidError")
            version, functions = await self.deployments._apply(app, defs, strategy, "", None)
        return reply({"functions": functions, "version": version})

    async def prepare_definitions(self, app: Any, defs: list[dict[str, Any]]) -> None:
        """Check named secrets, unpack sources, build images: what a definition needs before it runs."""
        for d in defs:
            await self.d.secrets.check(d.get("secrets") or [])
            if self.d.volumes is not None:
                await self.d.volumes.check(d)
            if d.get("source_id"):
                d["source_dir"] = self._materialise(d["source_id"])
            elif d.get("serialized_fn") is None:
                raise ApiError(400, f"function {d['tag']!r} has neither source_id nor serialized_fn")
        await self._build_images(app, defs)

    async def _build_images(self, app: Any, defs: list[dict[str, Any]]) -> None:
        """Build (or find in the cache) each distinct image of these functions, at once; the output streams to
        the app's log, marked with the image id. The open request keeps the app alive while it builds."""
        import asyncio
        import dataclasses

        from ..exception import ImageBuildError, InvalidError

        specs = {d["image"].get("image_id"): d["image"] for d in defs if isinstance(d.get("image"), dict)}
        if any(d.get("image") is not None and not isinstance(d["image"], dict) for d in defs):
            raise ApiError(400, "image must be a map (shoal.Image.to_wire())")
        app.sessions += 1
        app.orphaned_at = None
        try:
            results = await asyncio.gather(*(
                self.images.ensure(spec, log=lambda text, iid=str(iid): app.logs.append(iid, "stderr", text))
                for iid, spec in specs.items()), return_exceptions=True)
        finally:
            app.sessions -= 1
            if app.sessions == 0:
                app.orphaned_at = time.monotonic()
        for result in results:
            if isinstance(result, ImageBuildError):
                raise ApiError(400, str(result), "ImageBuildError")
            if isinstance(result, InvalidError):
                raise ApiError(400, str(result))
            if isinstance(result, BaseException):
                raise result
        built = dict(zip(specs, results, strict=True))
        for d in defs:
            if isinstance(d.get("image"), dict):
                d["image_built"] = dataclasses.asdict(built[d["image"].get("image_id")])
                d["image"] = {"image_id": d["image"]["image_id"]}  # build inputs (and secrets) stay out of containers

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
        if after >= app.logs.next_seq:
            after = -1  # a cursor into the log another control plane kept (before a restart or a takeover)
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
        method = self._check_method(pool, body.get("method"))
        call, ticket = await self.d.create_call(pool, call_id, kind, body.get("args"), method)
        if kind != "remote":
            await self.d.store.flushed(ticket)
            return reply({"call_id": call.id})
        result = await self.d.wait_result(call, 0, min(float(body.get("wait", MAX_WAIT_S)), MAX_WAIT_S))
        if result is None:
            return reply({"call_id": call.id, "pending": True})
        return reply({"call_id": call.id, "status": result[0], "data": result[1]})

    @staticmethod
    def _check_method(pool: Any, method: Any) -> str | None:
        """Calls of a class name one of its methods; calls of a function name none."""
        cls = pool.definition.get("cls")
        if cls is None:
            if method is not None:
                raise ApiError(400, f"{pool.tag!r} is a function, not a class: calls cannot name a method")
            return None
        if not isinstance(method, str):
            raise ApiError(400, f"{pool.tag!r} is a class: a call must name one of its methods "
                                f"({', '.join(cls['methods']) or 'it has none'})")
        if method not in cls["methods"]:
            raise ApiError(404, f"class {cls['name']} has no method {method!r}", "NotFoundError")
        return method

    async def create_variant(self, request: web.Request) -> web.Response:
        """The pool of a class parameter set and/or `with_options` overrides (made on first use)."""
        from .._spec.options import OVERRIDABLE_EXTRA, OVERRIDABLE_OPTIONS

        pool = self._pool(request)
        body = await body_of(request)
        params, overrides = body.get("params"), body.get("options") or {}
        if params is not None and not isinstance(params, bytes):
            raise ApiError(400, "params must be bytes (msgpack of the parameter values) or null")
        if params is not None and not pool.definition.get("cls"):
            raise ApiError(400, f"{pool.tag!r} is a function, not a class: it takes no parameters")
        if not isinstance(overrides, dict) or not isinstance(overrides.get("options", {}), dict) or \
                not isinstance(overrides.get("extra", {}), dict):
            raise ApiError(400, "options must be a map of overrides")
        unknown = [k for k in overrides.get("options", {}) if k not in OVERRIDABLE_OPTIONS] + \
            [k for k in overrides.get("extra", {}) if k not in OVERRIDABLE_EXTRA] + \
            [k for k in overrides if k not in ("options", "extra", "secrets")]
        if unknown:
            raise ApiError(400, f"these options cannot be overridden: {', '.join(map(str, unknown))}")
        await self.d.secrets.check(overrides.get("secrets") or [])
        try:
            function_id = await self.d.create_variant(pool, params, overrides)
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0]), "NotFoundError") from exc
        return reply({"function_id": function_id})

    async def lookup_function(self, request: web.Request) -> web.Response:
        """A function or class of a running app, by app name and tag (`Cls.from_name`): a deployed app first,
        else the most recently started ephemeral one."""
        app_name, tag = request.query.get("app_name", ""), request.query.get("tag", "")
        running = [a for a in self.d.apps.values() if a.name == app_name and a.state == "running"]
        running.sort(key=lambda a: a.mode != "deployed")  # stable: among ephemeral apps, the newest last
        candidates = [a for a in running if a.mode == "deployed"] or running[-1:]
        for app in candidates:
            function_id = app.functions.get(tag)
            pool = self.d.get_pool(function_id) if function_id else None
            if pool is not None:
                return reply({"function_id": function_id, "app_id": app.id, "tag": pool.tag,
                              "is_generator": bool(pool.definition.get("is_generator")),
                              "cls": pool.definition.get("cls"), "server": pool.definition.get("server"),
                              "webhook": pool.definition.get("webhook"),
                              "version": self.deployments.version_of(app.id)})
        if not running:
            raise ApiError(404, f"no deployed or running app named {app_name!r} (deploy it with `shoal deploy`, "
                                "or run it with `app.run()`/`shoal run`)", "NotFoundError")
        raise ApiError(404, f"app {app_name!r} has no object {tag!r}", "NotFoundError")

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
        if after < call.recovered_seq:
            # Outputs committed before a restart or a takeover, which this reader has not seen yet.
            rows = await self.d.store.read(
                "SELECT seq, idx, status, data, final FROM outputs WHERE call_id=? AND seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?", (call.id, after, call.recovered_seq, limit))
            outputs = [(seq, idx, status, data, bool(final)) for seq, idx, status, data, final in rows]
            if len(outputs) < limit:
                outputs += call.outputs_after(call.recovered_seq, limit - len(outputs))
            return reply({"outputs": [list(o) for o in outputs], "done": False})
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

    async def web_url(self, request: web.Request) -> web.Response:
        """The URL of a web function (or of a class's web method, `?method=`); null for other functions."""
        pool = self._pool(request)
        router = self.d.router
        url = router.url_for(pool.function_id, request.query.get("method")) if router is not None else None
        return reply({"url": url})

    async def web_requests(self, request: web.Request) -> web.Response:
        """The latest requests the ingress proxy handled for a web function or Server, newest last."""
        pool = self._pool(request)
        proxy = self.d.proxy
        limit = query_int(request, "limit", 100)
        return reply({"requests": proxy.requests_of(pool.function_id, limit) if proxy is not None else []})

    async def function_stats(self, request: web.Request) -> web.Response:
        return reply(self.d.stats(self._pool(request)))

    async def list_containers(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        return reply({"containers": [
            {"container_id": c.id, "app_id": c.pool.app_id, "function": c.pool.tag,
             "function_id": c.pool.function_id, "state": "pending" if c.pending_reason else c.state,
             "pending_reason": c.pending_reason,
             "running_inputs": len(c.running), "age_s": now - c.created_at, "timings": c.timings,
             "node": getattr(c.handle, "node_id", None)}
            for c in self.d.containers.values()
        ]})

    # -- autoscaler and containers (operator actions) ---------------------------------------------------------
    async def get_autoscaler(self, request: web.Request) -> web.Response:
        """The pool's effective settings, runtime overrides and last decision (with its inputs)."""
        pool = self._pool(request)
        return reply(pool.autoscaler.describe(pool, time.monotonic()))

    async def update_autoscaler(self, request: web.Request) -> web.Response:
        """Runtime overrides of min/max/buffer containers and scaledown_window, until the app is redeployed."""
        pool = self._pool(request)
        body = await body_of(request)
        try:
            self.d.update_autoscaler(pool, body)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        return reply(pool.autoscaler.describe(pool, time.monotonic()))

    async def container_logs(self, request: web.Request) -> web.Response:
        """Log entries of one container (its app's log, filtered), long-polled like the app's log."""
        cid = request.match_info["container_id"]
        after = query_int(request, "after", -1)
        timeout = min(query_float(request, "timeout", 0), MAX_WAIT_S)
        c = self.d.containers.get(cid)
        app = self.d.apps.get(c.pool.app_id) if c is not None else next(
            (a for a in self.d.apps.values() if any(e["container_id"] == cid for e in a.logs.entries)), None)
        if app is None:
            if c is not None:
                return reply({"entries": [], "last": after, "state": "stopped"})
            raise ApiError(404, f"container {cid} not found (its app stopped, or its logs were dropped)",
                           "NotFoundError")
        deadline = time.monotonic() + timeout
        while True:
            entries = await app.logs.wait(after, max(0.0, deadline - time.monotonic()))
            if entries:
                after = entries[-1]["seq"]
            mine = [e for e in entries if e["container_id"] == cid and e["data"]]
            alive = cid in self.d.containers and app.state == "running"
            if mine or not alive or time.monotonic() >= deadline:
                break
        return reply({"entries": mine, "last": after, "state": "running" if alive else "stopped"})

    async def stop_container(self, request: web.Request) -> web.Response:
        """End a container; its inputs go back to the queue (`graceful`: it finishes them first)."""
        body = await body_of(request)
        c = self.d.stop_container(request.match_info["container_id"], bool(body.get("graceful")))
        if c is None:
            raise ApiError(404, f"container {request.match_info['container_id']} not found", "NotFoundError")
        return reply({"ok": True, "container_id": c.id, "state": c.state})

    # -- exec and shell (shoal/cli/exec_cmds.py) -------------------------------------------------------------
    async def get_container(self, request: web.Request) -> web.Response:
        """One container, with what `shoal container exec` needs to enter it on this machine: its process (the
        backend handle's pid: a sandbox's supervisor), whether it is sandboxed, its cgroups, and the machine."""
        from ..backends.local_exec import machine_id

        cid = request.match_info["container_id"]
        c = self.d.containers.get(cid)
        if c is None:
            raise ApiError(404, f"container {cid} not found (it is not running)", "NotFoundError")
        handle = c.handle
        cgroup = getattr(handle, "cgroup", None)
        info = {
            "container_id": c.id, "app_id": c.pool.app_id, "function": c.pool.tag, "function_id": c.pool.function_id,
            "state": "pending" if c.pending_reason else c.state, "pending_reason": c.pending_reason,
            "running_inputs": len(c.running), "age_s": time.monotonic() - c.created_at, "timings": c.timings,
            "pid": getattr(handle, "pid", None), "sandboxed": bool(getattr(handle, "sandboxed", False)),
            "isolation": getattr(handle, "isolation", None) or getattr(self.d.backend, "isolation", None),
            "backend": getattr(self.d.backend, "name", None),
            "cgroups": list(cgroup.dirs) if cgroup is not None else [], "machine": machine_id(),
            "node": getattr(handle, "node_id", None),
        }
        if getattr(c, "warm", False) and not c.pool.function_id.startswith("warm:"):
            # A warm container got its function's secrets after it started: its process environment lacks them.
            info["env"] = await self.d.secrets.resolve(c.pool.definition.get("secrets") or [])
        return reply(info)

    async def start_shell(self, request: web.Request) -> web.Response:
        """`shoal shell`: start a container of this function that runs nothing (its image, sandbox, secrets and
        source), for the CLI to exec a shell into. It ends when stopped or when its app stops."""
        pool = self._pool(request)
        c = self.d.start_shell(pool)
        return reply({"container_id": c.id})
