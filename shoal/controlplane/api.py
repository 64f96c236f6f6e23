"""The control plane's HTTP API (aiohttp). Bodies are msgpack; every error is a 4xx/5xx with a message.

Routes are thin: they validate, then call the part of the core that does the work (controlplane/build.py).
Acknowledgements wait for the store's group commit.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from .._spec import requests as req
from .._spec.definitions import VariantOverrides
from .._spec.limits import BLOB_MAX, DATA_BODY_MAX, MAX_WAIT_S
from .core import call_graph
from .core.model import AppState, Call, Pool, new_id
from .dashboard import mount as mount_dashboard
from .definitions import check_client_fields
from .gate import Gate
from .idempotency import Recent, is_retry, request_key
from .rest import ApiError, Handler, body_of, check_length, invalid, query_of, reply, too_large
from .store import apps as app_rows
from .store import calls as call_rows
from .store import idempotency as keyed

if TYPE_CHECKING:
    from .build import Core
    from .definitions import Definitions
    from .deploy import Deployments
    from .proxy import Proxy

__all__ = ["Api"]


class Api:
    def __init__(self, core: Core, deployments: Deployments, definitions: Definitions, proxy: Proxy, token: str,
                 on_shutdown: Callable[[], None]) -> None:
        self.core = core
        self.registry = core.registry
        self.deployments = deployments
        self.definitions = definitions
        self.proxy = proxy
        self.gate = Gate(token, core.registry, definitions.images, replicated=core.replicas is not None)
        self.on_shutdown = on_shutdown
        self.started_at = time.time()
        self.recent = Recent()  # keyed sessions and shells: in memory, as they are
        # More rows for `GET /v1/containers`: the containers of running sandboxes (core/sandboxes.py).
        self.more_containers: Callable[[], list[dict[str, Any]]] = list
        self.more_container: Callable[[str], dict[str, Any] | None] = lambda _cid: None  # one of those, to exec

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.errors, self.auth], client_max_size=DATA_BODY_MAX)
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
        r.add_get("/v1/calls/{call_id}/graph", self.call_graph)
        r.add_post("/v1/functions/{function_id}/sessions", self.start_session)
        r.add_post("/v1/functions/{function_id}/sessions/terminate", self.terminate_session)
        r.add_post("/v1/calls/{call_id}/cancel", self.cancel_call)
        r.add_get("/v1/containers", self.list_containers)
        r.add_get("/v1/functions/{function_id}/autoscaler", self.get_autoscaler)
        r.add_post("/v1/functions/{function_id}/autoscaler", self.update_autoscaler)
        r.add_get("/v1/containers/{container_id}/logs", self.container_logs)
        r.add_post("/v1/containers/{container_id}/stop", self.stop_container)
        r.add_get("/v1/containers/{container_id}", self.get_container)
        r.add_post("/v1/functions/{function_id}/shell", self.start_shell)
        self.deployments.add_routes(r)
        mount_dashboard(app, self)  # /metrics and /dashboard/ (docs/observability.md)
        return app

    # -- middleware ------------------------------------------------------------------------------------------
    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if "\x00" in request.path:  # an id the store would look up: PostgreSQL's text cannot hold NUL
                raise ApiError(400, "the request path must not contain NUL characters")
            return await handler(request)
        except ApiError as exc:
            return reply({"error": str(exc), "type": exc.kind}, status=exc.status)
        except web.HTTPException as exc:
            return reply({"error": exc.reason or str(exc), "type": "InvalidError"}, status=exc.status)

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The admin token, or a container's own credential within what access.py allows it (gate.py)."""
        return await self.gate.admit(request, handler)

    # -- server ----------------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return reply({"ok": True, "pid": os.getpid(), "uptime_s": time.time() - self.started_at})

    async def shutdown(self, request: web.Request) -> web.Response:
        self.on_shutdown()
        return reply({"ok": True})

    # -- source blobs ----------------------------------------------------------------------------------------
    async def blob_exists(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.definitions.blob_path(request.match_info["sha"]).exists() else 404)

    async def put_blob(self, request: web.Request) -> web.Response:
        sha = request.match_info["sha"]
        path = self.definitions.blob_path(sha)
        check_length(request, BLOB_MAX)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.{new_id('up')}")  # concurrent uploads of one blob
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:  # streamed to disk, never whole in memory
                async for chunk in request.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > BLOB_MAX:
                        raise too_large(BLOB_MAX)
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != sha:
                raise ApiError(400, "blob content does not match its sha256")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return reply({"ok": True})

    # -- apps ------------------------------------------------------------------------------------------------
    async def list_apps(self, request: web.Request) -> web.Response:
        rows = await app_rows.recent(self.core.store)
        registry = self.registry
        apps = []
        others: dict[str, dict[str, str]] = {}  # functions of running apps another replica owns
        if self.core.ownership.shared and any(r[3] == "running" and r[0] not in registry.apps for r in rows):
            others = await app_rows.running_functions(self.core.store)
        scheduler = self.core.scheduler
        for app_id, name, mode, state, created_at, stopped_at, version in rows:
            live = registry.apps.get(app_id)
            pools = [p for p in registry.pools.values() if p.app_id == app_id]
            apps.append({"app_id": app_id, "name": name, "mode": mode, "version": version, "state": state,
                         "created_at": created_at,
                         "stopped_at": stopped_at,
                         "functions": dict(live.functions) if live else others.get(app_id, {}),
                         "containers": sum(len(p.live()) for p in pools),
                         "next_runs": {p.tag: scheduler.upcoming(p) for p in pools if p.definition.schedule}})
        return reply({"apps": apps})

    async def create_app(self, request: web.Request) -> web.Response:
        body = await body_of(request, req.CreateApp)
        key = request_key(request)
        done = await keyed.replayed(self.core.store, key)  # a resend: the app its first send created
        if done is not None:
            return reply(done.result)
        app = await self.core.apps.create_app(body.name, body.mode, body.detach, key)
        return reply({"app_id": app.id})

    def _app(self, request: web.Request) -> AppState:
        app = self.registry.apps.get(request.match_info["app_id"])
        if app is None:
            raise ApiError(404, f"app {request.match_info['app_id']} not found or stopped", "NotFoundError")
        return app

    async def register_functions(self, request: web.Request) -> web.Response:
        """Add (or update) an app's functions. With `strategy` ("rolling" or "recreate"; `shoal serve` sends
        recreate on each reload) the definitions become the app's next version, exactly as a redeploy: pools
        keep their ids and get the new definitions, their containers are superseded that way, and functions
        left out stop."""
        app = self._app(request)
        body = await body_of(request, req.RegisterFunctions, DATA_BODY_MAX, "function definition")
        defs, strategy = check_client_fields(body.functions), body.strategy
        await self.definitions.prepare(app, defs)
        if strategy is None:
            return reply({"functions": await self.core.apps.register_functions(app, defs)})
        return reply(await self.deployments.next_version(app, defs, strategy, request_key(request)))

    async def stop_app(self, request: web.Request) -> web.Response:
        await self.core.apps.stop_app(request.match_info["app_id"])
        return reply({"ok": True})

    async def app_logs(self, request: web.Request) -> web.Response:
        """Long-poll for log entries. A poll with `session=1` also tells the app its client is alive."""
        app_id = request.match_info["app_id"]
        app = self.registry.apps.get(app_id)
        query = query_of(request, req.LogsQuery)
        after = query.after
        if app is None:
            logs = self.registry.stopped_logs.get(app_id)
            entries = logs.since(after) if logs is not None else []
            return reply({"entries": [e for e in entries if e["data"]],
                          "last": entries[-1]["seq"] if entries else after, "state": "stopped"})
        timeout = min(query.timeout, MAX_WAIT_S)
        if after >= app.logs.next_seq:
            after = -1  # a cursor into the log another control plane kept (before a restart or a takeover)
        session = query.session == "1"
        if session:
            app.session_started()
        try:
            entries = await app.logs.wait(after, timeout)
        finally:
            if session:
                app.session_ended()
        return reply({"entries": [e for e in entries if e["data"]], "last": app.logs.next_seq - 1,
                      "state": app.state})

    # -- calls -----------------------------------------------------------------------------------------------
    def _pool(self, request: web.Request) -> Pool:
        pool = self.registry.pools.get(request.match_info["function_id"])
        if pool is None:
            raise ApiError(404, f"function {request.match_info['function_id']} not found (is its app running?)",
                           "NotFoundError")
        return pool

    async def create_call(self, request: web.Request) -> web.Response:
        pool = self._pool(request)
        body = await body_of(request, req.CreateCall, DATA_BODY_MAX)
        kind = body.kind
        if kind != "map" and body.args is None:
            raise ApiError(400, "args (bytes) is required for this kind of call")
        call_id = body.call_id or new_id("fc")
        method = self._check_method(pool, body.method)
        if is_retry(request) and call_id not in self.registry.calls:
            done = await self._finished_call(call_id)
            if done is not None:
                return reply(done)
        call, ticket = await self.core.calls.create_call(pool, call_id, kind, body.args, method,
                                                         parent_input=body.parent_input_id)
        if kind != "remote":
            await self.core.store.flushed(ticket)
            return reply({"call_id": call.id})
        result = await self.core.outputs.wait_result(call, 0, min(body.wait, MAX_WAIT_S))
        if result is None:
            return reply({"call_id": call.id, "pending": True})
        return reply({"call_id": call.id, "status": result[0], "data": result[1]})

    async def _finished_call(self, call_id: str) -> dict[str, Any] | None:
        """A resent call this control plane finished and let go of (before a restart, say): its reply, so the
        call does not run twice; None for a call it never had."""
        if await call_rows.summary(self.core.store, call_id) is None:
            return None
        final = await call_rows.final_output(self.core.store, call_id, 0)
        return {"call_id": call_id, **({"status": final[0], "data": final[1]} if final else {"pending": True})}

    @staticmethod
    def _check_method(pool: Pool, method: str | None) -> str | None:
        """Calls of a class name one of its methods; calls of a function name none."""
        cls = pool.definition.cls
        if cls is None:
            if method is not None:
                raise ApiError(400, f"{pool.tag!r} is a function, not a class: calls cannot name a method")
            return None
        if method is None:
            raise ApiError(400, f"{pool.tag!r} is a class: a call must name one of its methods "
                                f"({', '.join(cls.methods) or 'it has none'})")
        if method not in cls.methods:
            raise ApiError(404, f"class {cls.name} has no method {method!r}", "NotFoundError")
        return method

    async def create_variant(self, request: web.Request) -> web.Response:
        """The pool of a class parameter set and/or `with_options` overrides (made on first use)."""
        from .._spec.options import OVERRIDABLE_EXTRA, OVERRIDABLE_OPTIONS

        pool = self._pool(request)
        body = await body_of(request, req.CreateVariant)
        params, overrides = body.params, body.options or {}
        if params is not None and pool.definition.cls is None:
            raise ApiError(400, f"{pool.tag!r} is a function, not a class: it takes no parameters")
        if not isinstance(overrides, dict) or not isinstance(overrides.get("options", {}), dict) or \
                not isinstance(overrides.get("extra", {}), dict):
            raise ApiError(400, "options must be a map of overrides")
        unknown = [k for k in overrides.get("options", {}) if k not in OVERRIDABLE_OPTIONS] + \
            [k for k in overrides.get("extra", {}) if k not in OVERRIDABLE_EXTRA] + \
            [k for k in overrides if k not in ("options", "extra", "secrets", "volumes")]
        if unknown:
            raise ApiError(400, f"these options cannot be overridden: {', '.join(map(str, unknown))}")
        try:
            typed = msgspec.convert(overrides, VariantOverrides)
            await self.core.secrets.check(typed.secrets or [])
            if typed.volumes is not None:  # paths normalised, volumes exist, this control plane can mount them
                await self.definitions.volumes.check(msgspec.structs.replace(pool.definition, volumes=typed.volumes))
            function_id = await self.core.variants.create_variant(pool, params, typed)
        except msgspec.ValidationError as exc:
            raise invalid(exc, "option override") from exc
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0]), "NotFoundError") from exc
        return reply({"function_id": function_id})

    async def lookup_function(self, request: web.Request) -> web.Response:
        """A function or class of a running app, by app name and tag (`Cls.from_name`): a deployed app first,
        else the most recently started ephemeral one."""
        query = query_of(request, req.FunctionLookupQuery)
        app_name, tag = query.app_name, query.tag
        running = [a for a in self.registry.apps.values() if a.name == app_name and a.state == "running"]
        running.sort(key=lambda a: a.mode != "deployed")  # stable: among ephemeral apps, the newest last
        candidates = [a for a in running if a.mode == "deployed"] or running[-1:]
        for app in candidates:
            function_id = app.functions.get(tag)
            pool = self.registry.pools.get(function_id) if function_id else None
            if pool is not None:
                return reply({"function_id": function_id, "app_id": app.id, "tag": pool.tag,
                              "is_generator": pool.definition.is_generator,
                              "cls": pool.definition.cls, "server": pool.definition.server,
                              "webhook": pool.definition.webhook,
                              "version": self.deployments.version_of(app.id)})
        if not running:
            raise ApiError(404, f"no deployed or running app named {app_name!r} (deploy it with `shoal deploy`, "
                                "or run it with `app.run()`/`shoal run`)", "NotFoundError")
        raise ApiError(404, f"app {app_name!r} has no object {tag!r}", "NotFoundError")

    def _call(self, request: web.Request) -> Call | None:
        return self.registry.calls.get(request.match_info["call_id"])

    async def add_inputs(self, request: web.Request) -> web.Response:
        call = self._call(request)
        if call is None:
            call_id = request.match_info["call_id"]
            stored = await call_rows.summary(self.core.store, call_id) if is_retry(request) else None
            if stored is not None and stored[0] == "map" and stored[1] is not None:
                # A resent batch of a map this control plane let go of (finished before a restart, the reply to
                # its last batch lost): it had every input.
                return reply({"ok": True})
            raise ApiError(404, f"call {call_id} not found", "NotFoundError")
        if call.kind != "map":
            raise ApiError(400, "inputs can only be added to map calls")
        body = await body_of(request, req.AddInputs, DATA_BODY_MAX)
        if call.received is None:  # every input is in: a resent last batch
            return reply({"ok": True})
        ticket = self.core.calls.add_inputs(call, body.items, body.last)
        await self.core.store.flushed(ticket)
        return reply({"ok": True})

    async def get_outputs(self, request: web.Request) -> web.Response:
        call = self._call(request)
        query = query_of(request, req.OutputsQuery)
        after, timeout, limit = query.after, min(query.timeout, MAX_WAIT_S), query.limit
        if call is None:  # finished before a restart while its reader was behind: what it has not read yet
            return reply(await self._stored_outputs(request.match_info["call_id"], after, limit))
        if after < call.recovered_seq:
            # Outputs committed before a restart or a takeover, which this reader has not seen yet.
            outputs = await call_rows.outputs_between(self.core.store, call.id, after, call.recovered_seq, limit)
            if len(outputs) < limit:
                outputs += call.outputs_after(call.recovered_seq, limit - len(outputs))
            return reply({"outputs": [list(o) for o in outputs], "done": False})
        outputs = await self.core.outputs.wait_outputs(call, after, timeout, limit)
        done = call.drained and (not outputs or outputs[-1][0] == call.published)
        return reply({"outputs": [list(o) for o in outputs], "done": done})

    async def _stored_outputs(self, call_id: str, after: int, limit: int) -> dict[str, Any]:
        summary = await call_rows.summary(self.core.store, call_id)
        if summary is None:
            raise ApiError(404, f"call {call_id} not found", "NotFoundError")
        if summary[2] == "expired":
            raise ApiError(410, f"the outputs of {call_id} have expired", "OutputExpiredError")
        outputs = await call_rows.outputs_between(self.core.store, call_id, after, 2**62, limit)
        return {"outputs": [list(o) for o in outputs], "done": summary[2] != "running" and len(outputs) < limit}

    async def get_result(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        query = query_of(request, req.ResultQuery)
        index, timeout = query.index, min(query.timeout, MAX_WAIT_S)
        call = self.registry.calls.get(call_id)
        if call is not None and call.keeps_results:
            result = await self.core.outputs.wait_result(call, index, timeout)
            if result is None:
                return reply({"pending": True})
            return reply({"status": result[0], "data": result[1]})
        stored = await call_rows.final_output(self.core.store, call_id, index)
        if call is not None and stored is None and timeout > 0 and not call.finished:
            # An input of a spawned map (`experimental_spawn_map`): map calls keep no results in memory; wait
            # for the call's next output, then look in the store again.
            await self.core.outputs.wait_outputs(call, call.published, timeout, 1)
            stored = await call_rows.final_output(self.core.store, call_id, index)
        if stored is not None:
            return reply({"status": stored[0], "data": stored[1]})
        summary = await call_rows.summary(self.core.store, call_id)
        if summary is None:
            raise ApiError(404, f"function call {call_id} not found", "NotFoundError")
        if summary[2] == "expired":
            raise ApiError(410, f"the result of {call_id} has expired (results are kept 7 days)",
                           "OutputExpiredError")
        return reply({"pending": True})

    async def get_call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        call = self.registry.calls.get(call_id)
        if call is not None:
            return reply({"call_id": call_id, "kind": call.kind, "num_inputs": call.total, "state": call.state})
        summary = await call_rows.summary(self.core.store, call_id)
        if summary is None:
            raise ApiError(404, f"function call {call_id} not found", "NotFoundError")
        kind, num_inputs, state = summary
        return reply({"call_id": call_id, "kind": kind, "num_inputs": num_inputs, "state": state})

    async def call_graph(self, request: web.Request) -> web.Response:
        """`FunctionCall.get_call_graph()`: the call's inputs with the calls made from them (call_graph.py)."""
        call_id = request.match_info["call_id"]
        call = self.registry.calls.get(call_id)
        if call is not None:
            call.last_active = time.monotonic()
            return reply({"inputs": call_graph.graph(call)})
        summary = await call_rows.summary(self.core.store, call_id)
        if summary is None:
            raise ApiError(404, f"function call {call_id} not found", "NotFoundError")
        inputs = []  # no longer in memory: its inputs' final statuses from the store, without children
        for idx in range(min(summary[1] or 0, call_graph.STORED_INPUTS)):
            final = await call_rows.final_output(self.core.store, call_id, idx)
            inputs.append(call_graph.stored_node(call_id, idx, final[0] if final else "pending"))
        return reply({"inputs": inputs})

    def _sessioned(self, request: web.Request) -> Pool:
        pool = self._pool(request)
        if pool.server is None or not pool.server.sessioned:
            raise ApiError(400, f"{pool.tag!r} is not a `@modal.sessioned()` Server", "InvalidError")
        return pool

    async def start_session(self, request: web.Request) -> web.Response:
        """`Server.sessions.start()`: a session pinned to one container (core/server_sessions.py), waiting up to
        `wait` seconds for a ready one (then `pending`: the client asks again)."""
        pool = self._sessioned(request)
        body = await body_of(request, req.StartSession)
        key = request_key(request)
        done = self.recent.get(key)  # a resend: the session its first send started
        if done is not None:
            return reply(done)
        got = await self.core.web.start_session(pool, body.idle_timeout, min(body.wait, MAX_WAIT_S))
        if got is None:
            return reply({"pending": True})
        return reply(self.recent.put(key, {"session_id": got[0], "token": got[1]}))

    async def terminate_session(self, request: web.Request) -> web.Response:
        """`Server.sessions.terminate(token)`: 404 when this Server has no such live session."""
        pool = self._sessioned(request)
        body = await body_of(request, req.TerminateSession)
        if not self.core.web.sessions.terminate(pool.function_id, body.token) and not is_retry(request):
            raise ApiError(404, "no such session of this Server", "NotFoundError")
        return reply({"ok": True})

    async def cancel_call(self, request: web.Request) -> web.Response:
        call = self._call(request)
        body = await body_of(request, req.CancelCall)
        if call is not None and call.state == "running":
            self.core.calls.cancel_call(call, body.terminate_containers)
        return reply({"ok": True})

    async def web_url(self, request: web.Request) -> web.Response:
        """The URL of a web function (or of a class's web method, `?method=`); null for other functions."""
        pool = self._pool(request)
        return reply({"url": self.core.router.url_for(pool.function_id, query_of(request, req.WebUrlQuery).method)})

    async def web_requests(self, request: web.Request) -> web.Response:
        """The latest requests the ingress proxy handled for a web function or Server, newest last."""
        pool = self._pool(request)
        limit = query_of(request, req.RequestsQuery).limit
        return reply({"requests": self.proxy.requests_of(pool.function_id, limit)})

    async def function_stats(self, request: web.Request) -> web.Response:
        return reply(self.core.queues.stats(self._pool(request)))

    async def list_containers(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        return reply({"containers": [
            {"container_id": c.id, "app_id": c.pool.app_id, "function": c.pool.tag,
             "function_id": c.pool.function_id, "state": "pending" if c.pending_reason else c.state,
             "pending_reason": c.pending_reason,
             "running_inputs": len(c.running), "age_s": now - c.created_at, "timings": c.timings,
             "node": c.handle.node_id if c.handle is not None else None}
            for c in self.registry.containers.values()
        ] + self.more_containers()})

    # -- autoscaler and containers (operator actions) ---------------------------------------------------------
    async def get_autoscaler(self, request: web.Request) -> web.Response:
        """The pool's effective settings, runtime overrides and last decision (with its inputs)."""
        pool = self._pool(request)
        return reply(pool.autoscaler.describe(pool, time.monotonic()))

    async def update_autoscaler(self, request: web.Request) -> web.Response:
        """Runtime overrides of min/max/buffer containers and scaledown_window, until the app is redeployed."""
        pool = self._pool(request)
        body = await body_of(request, req.AutoscalerUpdate)
        given = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not msgspec.UNSET}
        try:
            self.core.operations.update_autoscaler(pool, given)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        return reply(pool.autoscaler.describe(pool, time.monotonic()))

    async def container_logs(self, request: web.Request) -> web.Response:
        """Log entries of one container (its app's log, filtered), long-polled like the app's log."""
        cid = request.match_info["container_id"]
        query = query_of(request, req.ContainerLogsQuery)
        after, timeout = query.after, min(query.timeout, MAX_WAIT_S)
        registry = self.registry
        c = registry.containers.get(cid)
        app = registry.apps.get(c.pool.app_id) if c is not None else next(
            (a for a in registry.apps.values() if any(e["container_id"] == cid for e in a.logs.entries)), None)
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
            alive = cid in registry.containers and app.state == "running"
            if mine or not alive or time.monotonic() >= deadline:
                break
        return reply({"entries": mine, "last": after, "state": "running" if alive else "stopped"})

    async def stop_container(self, request: web.Request) -> web.Response:
        """End a container; its inputs go back to the queue (`graceful`: it finishes them first)."""
        body = await body_of(request, req.StopContainer)
        c = self.core.operations.stop_container(request.match_info["container_id"], body.graceful)
        if c is None and is_retry(request):  # a resend: its first send stopped it, and it is gone
            return reply({"ok": True, "container_id": request.match_info["container_id"], "state": "dead"})
        if c is None:
            raise ApiError(404, f"container {request.match_info['container_id']} not found", "NotFoundError")
        return reply({"ok": True, "container_id": c.id, "state": c.state})

    # -- exec and shell (shoal/cli/exec_cmds.py) -------------------------------------------------------------
    async def get_container(self, request: web.Request) -> web.Response:
        """One container, with what `shoal container exec` needs to enter it on this machine: its process (the
        backend handle's pid: a sandbox's supervisor), whether it is sandboxed, its cgroups, and the machine."""
        from ..backends.local_exec import machine_id

        cid = request.match_info["container_id"]
        c = self.registry.containers.get(cid)
        if c is None and (other := self.more_container(cid)) is not None:
            return reply({**other, "machine": machine_id()})
        if c is None:
            raise ApiError(404, f"container {cid} not found (it is not running)", "NotFoundError")
        handle, backend = c.handle, self.core.backend
        info = {
            "container_id": c.id, "app_id": c.pool.app_id, "function": c.pool.tag, "function_id": c.pool.function_id,
            "state": "pending" if c.pending_reason else c.state, "pending_reason": c.pending_reason,
            "running_inputs": len(c.running), "age_s": time.monotonic() - c.created_at, "timings": c.timings,
            "pid": handle.pid if handle is not None else None,
            "sandboxed": bool(handle.sandboxed) if handle is not None else False,
            "isolation": (handle.isolation if handle is not None else None) or backend.isolation,
            "backend": backend.name,
            "cgroups": list(handle.cgroup.dirs) if handle is not None and handle.cgroup is not None else [],
            "machine": machine_id(),
            "node": handle.node_id if handle is not None else None,
        }
        if c.warm and not c.pool.function_id.startswith("warm:"):
            # A warm container got its function's secrets after it started: its process environment lacks them.
            info["env"] = await self.core.secrets.resolve(c.pool.definition.secrets)
        return reply(info)

    async def start_shell(self, request: web.Request) -> web.Response:
        """`shoal shell`: start a container of this function that runs nothing (its image, sandbox, secrets and
        source), for the CLI to exec a shell into. It ends when stopped or when its app stops."""
        pool = self._pool(request)
        key = request_key(request)
        done = self.recent.get(key)  # a resend: the shell its first send started
        if done is not None:
            return reply(done)
        c = self.core.operations.start_shell(pool)
        return reply(self.recent.put(key, {"container_id": c.id}))
