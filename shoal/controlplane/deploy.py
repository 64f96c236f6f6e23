"""Deployed apps: persistent by name, versioned, updated in place (`shoal deploy`, `App.deploy()`).

A deploy finds the running deployed app of that name (or creates one) and registers the new definitions on it.
Every function keeps its id and pool across versions; the pool gets the new definition, whose `generation` is
the version that set it, so a restarted control plane knows it too. The containers a pool had when the version
changed are *superseded*:

- rolling (the default): they keep taking inputs until a container of the new version is ready; then idle ones
  stop and busy ones drain (no new inputs; they stop, running `@exit`, once their inputs are done). Each ready
  one gets a replacement at once, so a warm pool stays warm.
- recreate: they stop at once; the inputs they were running go back to the queue.

Functions a version no longer has stop (their calls are terminated); new ones get pools. Each version's
definitions are kept (`app_versions`) for `shoal app history` and `shoal app rollback`, which deploys an older
version's definitions again as a new version.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgpack
from aiohttp import web

from . import policy
from .api import ApiError, body_of, reply
from .model import Pool

if TYPE_CHECKING:
    from .api import Api
    from .dispatch import AppState, Dispatcher

STRATEGIES = ("rolling", "recreate")
ROLLOUT_RETRY_S = 0.5


# -- pools -------------------------------------------------------------------------------------------------------
def roll_pool(d: Dispatcher, pool: Pool, strategy: str, version: int) -> None:
    """The pool's definition just changed: supersede the containers it has (see the module docstring)."""
    reason = f"replaced by version {version} ({strategy})"
    pool.superseded &= set(pool.containers)  # forget those already gone
    for c in list(pool.containers.values()):
        if c.state in ("stopping", "dead"):
            continue
        pool.superseded.add(c.id)
        if strategy == "recreate":
            d.stop_container(c.id)  # busy ones are terminated; their inputs run again elsewhere
        elif c.state not in ("ready", "draining"):
            d._stop_container(c, reason)  # still starting (or pending) with the old definition
    # Ready ones keep serving until a container of the new version is ready (Dispatcher._retire_superseded).
    replace_superseded(d, pool)
    d._scale(pool)


def replace_superseded(d: Dispatcher, pool: Pool) -> bool:
    """Start a container of the current version for each superseded one still serving (as far as the machine
    has room now); False once none is left to replace."""
    serving = sum(1 for cid in pool.superseded if (c := pool.containers.get(cid)) is not None and c.state == "ready")
    if pool.stopped or not serving:
        return False
    cap = pool.options.get("max_containers")
    desired = min(serving, int(cap)) if cap else serving
    d._scale(pool, policy.Decision(desired=desired, current=len(pool.live()), reason="rolling update"))
    return True


def stop_pool(d: Dispatcher, pool: Pool, reason: str) -> None:
    """A function the new version no longer has: its calls end, its containers stop, it is forgotten."""
    d.pools.pop(pool.function_id, None)
    pool.stopped = True
    app = d.apps.get(pool.app_id)
    if app is not None:
        for key, fid in list(app.functions.items()):
            if fid == pool.function_id:
                del app.functions[key]
    for call in [c for c in d.calls.values() if c.pool is pool and c.state == "running"]:
        d._terminate_call(call, reason)
    for c in list(pool.containers.values()):
        d._stop_container(c, reason)
    d.store.write("DELETE FROM functions WHERE function_id=?", (pool.function_id,))
    if d.scheduler is not None and pool.definition.get("schedule"):
        d.scheduler.reset(pool.function_id)


# -- the API -----------------------------------------------------------------------------------------------------
class Deployments:
    """Routes and state of deployed apps; `versions` holds each deployed app's current version."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.d: Dispatcher = api.d
        self.versions: dict[str, int] = {
            app_id: int(v) for app_id, v in self.d.store.read_now(
                "SELECT app_id, MAX(version) FROM app_versions GROUP BY app_id")}
        self._locks: dict[str, asyncio.Lock] = {}
        self._rolling: set[Pool] = set()  # pools whose superseded containers still wait for replacements
        self._rollout_task: asyncio.Task | None = None

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v1/apps/deploy", self.deploy)
        r.add_post("/v1/apps/lookup", self.lookup)
        r.add_get("/v1/apps/{app_ref}/info", self.info)
        r.add_get("/v1/apps/{app_ref}/history", self.history)
        r.add_post("/v1/apps/{app_ref}/rollback", self.rollback)

    def version_of(self, app_id: str) -> int | None:
        return self.versions.get(app_id)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _deployed(self, name: str) -> AppState | None:
        """The running deployed app of this name (there is at most one)."""
        found = [a for a in self.d.apps.values() if a.name == name and a.mode == "deployed" and a.state == "running"]
        return found[-1] if found else None

    async def _resolve(self, ref: str) -> dict[str, Any]:
        """An app by id (any state), else by name: the running deployed app, else the newest running app, else
        the newest deployed one, else the newest."""
        cols = "app_id, name, mode, state, created_at, stopped_at"
        if ref.startswith("ap-"):
            rows = await self.d.store.read(f"SELECT {cols} FROM apps WHERE app_id=?", (ref,))
        else:
            rows = await self.d.store.read(f"SELECT {cols} FROM apps WHERE name=? ORDER BY created_at DESC", (ref,))
        apps = [dict(zip(("app_id", "name", "mode", "state", "created_at", "stopped_at"), r, strict=True))
                for r in rows]
        for keep in (lambda a: a["state"] == "running" and a["mode"] == "deployed",
                     lambda a: a["state"] == "running", lambda a: a["mode"] == "deployed", lambda a: True):
            chosen = [a for a in apps if keep(a)]
            if chosen:
                app = chosen[0]
                live = self.d.apps.get(app["app_id"])
                if live is not None:
                    app["state"] = live.state
                elif app["state"] == "running":
                    app["state"] = "stopped"  # stopped in memory, the row not yet written
                return app
        raise ApiError(404, f"no app with id or name {ref!r}", "NotFoundError")

    # -- deploy --------------------------------------------------------------------------------------------------
    async def deploy(self, request: web.Request) -> web.Response:
        body = await body_of(request, "name", "functions")
        name, defs = body["name"], body["functions"]
        strategy = body.get("strategy") or "rolling"
        if not isinstance(name, str) or not name:
            raise ApiError(400, "a deployed app needs a name")
        if strategy not in STRATEGIES:
            raise ApiError(400, f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        if not isinstance(defs, list) or not all(isinstance(d, dict) and "tag" in d for d in defs):
            raise ApiError(400, "functions must be a list of maps with a 'tag'")
        tag = body.get("tag") or ""
        async with self._lock(name):
            app = self._deployed(name)
            created = app is None
            if app is None:
                app = await self.d.create_app(name, "deployed", True)
            try:
                await self.api.prepare_definitions(app, defs)
            except BaseException:
                if created:  # nothing was deployed: leave no empty app behind
                    await self.d.stop_app(app.id)
                    self.d.store.write("DELETE FROM apps WHERE app_id=?", (app.id,))
                raise
            if app.state != "running":  # stopped while its images were building
                raise ApiError(409, f"app {name!r} was stopped while it was being deployed", "InvalidError")
            version, functions = await self._apply(app, defs, strategy, str(tag), None)
        return reply({"app_id": app.id, "name": name, "version": version, "functions": functions,
                      "created": created})

    async def _apply(self, app: AppState, defs: list[dict[str, Any]], strategy: str, tag: str,
                     rollback_of: int | None) -> tuple[int, dict[str, str]]:
        """Make `defs` the app's next version."""
        version = self.versions.get(app.id, 0) + 1
        for d in defs:
            d["generation"] = version
        tags = {d["tag"] for d in defs}
        for fid in list(app.functions.values()):
            pool = self.d.pools.get(fid)
            if pool is not None and pool.tag not in tags:
                stop_pool(self.d, pool, f"function {pool.tag!r} is not in version {version} of the app")
        existing = {d["tag"]: app.functions.get(d["tag"]) for d in defs}
        functions = await self.d.register_functions(app, defs)
        ticket = 0
        for d in defs:
            fid = functions[d["tag"]]
            pool = self.d.pools[fid]
            if existing[d["tag"]] is None:
                continue  # a new function: its pool starts empty
            rolled = [pool]
            for variant in [p for p in self.d.pools.values() if p.definition.get("variant_of") == fid]:
                ticket = self._redefine_variant(variant, pool)
                rolled.append(variant)
            for p in rolled:
                roll_pool(self.d, p, strategy, version)
                if p.superseded:
                    self._rolling.add(p)
        ticket = self.d.store.write(
            "INSERT INTO app_versions (app_id, version, created_at, definitions, strategy, tag, rollback_of) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT (app_id, version) DO UPDATE SET created_at=excluded.created_at, "
            "definitions=excluded.definitions, strategy=excluded.strategy, tag=excluded.tag, "
            "rollback_of=excluded.rollback_of",
            (app.id, version, time.time(), msgpack.packb(defs, use_bin_type=True), strategy, tag, rollback_of))
        self.versions[app.id] = version
        if self._rolling and self._rollout_task is None:
            self._rollout_task = asyncio.create_task(self._replace_until_done())
        await self.d.store.flushed(ticket)
        what = f"rollback to version {rollback_of}" if rollback_of else "deploy"
        app.logs.append("", "system", f"version {version} deployed ({what}, {strategy})\n")
        return version, {d["tag"]: functions[d["tag"]] for d in defs}

    async def _replace_until_done(self) -> None:
        """Replacements the machine had no room for when the version changed are started as room appears."""
        try:
            while self._rolling:
                await asyncio.sleep(ROLLOUT_RETRY_S)
                for pool in list(self._rolling):
                    if not replace_superseded(self.d, pool):
                        self._rolling.discard(pool)
        finally:
            self._rollout_task = None

    def _redefine_variant(self, variant: Pool, base: Pool) -> int:
        """A class parameter set or `with_options` variant follows its base function to the new version."""
        from .dispatch import _needs_params, variant_definition

        old = variant.definition
        d = variant_definition(base.definition, old.get("params"), old.get("variant_overrides") or {},
                               base.function_id, old["variant_key"])
        variant.definition = d
        variant.options = d.get("options", {})
        if _needs_params(d):
            variant.options = {**variant.options, "min_containers": None, "buffer_containers": None}
        variant.start_failures = 0
        variant.autoscaler.reset()
        return self.d.store.put_function(variant.function_id, variant.app_id, old["variant_key"],
                                         msgpack.packb(d))

    # -- rollback ------------------------------------------------------------------------------------------------
    async def rollback(self, request: web.Request) -> web.Response:
        ref = request.match_info["app_ref"]
        body = await body_of(request)
        strategy = body.get("strategy") or "rolling"
        if strategy not in STRATEGIES:
            raise ApiError(400, f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        row = await self._resolve(ref)
        app = self.d.apps.get(row["app_id"])
        if app is None or app.mode != "deployed" or app.state != "running":
            raise ApiError(400, f"app {ref!r} is not a running deployed app", "InvalidError")
        async with self._lock(app.name or app.id):
            current = self.versions.get(app.id, 0)
            target = body.get("version")
            target = current - 1 if target is None else target
            if current < 2:
                raise ApiError(400, f"app {app.name!r} has no earlier version to roll back to")
            if not isinstance(target, int) or not 1 <= target < current:
                raise ApiError(400, f"cannot roll back app {app.name!r} (at version {current}) to version "
                                    f"{target}: choose a version from 1 to {current - 1}")
            rows = await self.d.store.read(
                "SELECT definitions FROM app_versions WHERE app_id=? AND version=?", (app.id, target))
            if not rows:
                raise ApiError(404, f"version {target} of app {app.name!r} is not recorded", "NotFoundError")
            defs = msgpack.unpackb(rows[0][0], raw=False)
            for d in defs:
                await self.d.secrets.check(d.get("secrets") or [])
                if d.get("source_id"):
                    d["source_dir"] = self.api._materialise(d["source_id"])
                image_id = (d.get("image") or {}).get("image_id")
                if d.get("image_built") and image_id and self.api.images.cached(image_id) is None:
                    raise ApiError(409, f"the image of {d['tag']!r} in version {target} is no longer built here; "
                                        "deploy that version from its source instead", "InvalidError")
            version, functions = await self._apply(app, defs, strategy, f"rollback to v{target}", target)
        return reply({"app_id": app.id, "name": app.name, "version": version, "rolled_back_to": target,
                      "functions": functions})

    # -- reads -----------------------------------------------------------------------------------------------
    async def lookup(self, request: web.Request) -> web.Response:
        """`App.lookup(name)`: the deployed app of that name (or any app by id); `create_if_missing` creates an
        empty deployed app."""
        body = await body_of(request, "name")
        name = body["name"]
        if not isinstance(name, str) or not name:
            raise ApiError(400, "name must be a non-empty string")
        if name.startswith("ap-"):
            row = await self._resolve(name)
            return reply({**row, "version": self.versions.get(row["app_id"]),
                          "functions": dict(self.d.apps[row["app_id"]].functions) if row["app_id"] in self.d.apps
                          else {}})
        async with self._lock(name):
            app = self._deployed(name)
            created = False
            if app is None:
                if not body.get("create_if_missing"):
                    raise ApiError(404, f"no deployed app named {name!r}", "NotFoundError")
                app = await self.d.create_app(name, "deployed", True)
                created = True
        return reply({"app_id": app.id, "name": app.name, "mode": app.mode, "state": app.state,
                      "version": self.versions.get(app.id), "functions": dict(app.functions), "created": created})

    async def info(self, request: web.Request) -> web.Response:
        """What `shoal app info` shows: the app, its version, functions (with their containers and next
        scheduled run) and containers."""
        row = await self._resolve(request.match_info["app_ref"])
        app_id = row["app_id"]
        live = self.d.apps.get(app_id)
        now = time.monotonic()
        functions, containers = [], []
        for key, fid in (dict(live.functions) if live else {}).items():
            pool = self.d.pools.get(fid)
            if pool is None:
                continue
            scheduled = bool(pool.definition.get("schedule")) and self.d.scheduler is not None
            functions.append({"tag": key, "function_id": fid, "version": pool.generation or None,
                              "containers": len(pool.live()), "queued": len(pool.queue),
                              "schedule": pool.definition.get("schedule"),
                              "next_run": self.d.scheduler.upcoming(pool) if scheduled else None})
            for c in pool.containers.values():
                containers.append({"container_id": c.id, "function": key, "function_id": fid, "state": c.state,
                                   "superseded": c.id in pool.superseded, "running_inputs": len(c.running),
                                   "age_s": now - c.created_at})
        deployed_at = await self.d.store.read(
            "SELECT created_at, strategy FROM app_versions WHERE app_id=? ORDER BY version DESC LIMIT 1", (app_id,))
        return reply({**row, "version": self.versions.get(app_id),
                      "deployed_at": deployed_at[0][0] if deployed_at else None,
                      "strategy": deployed_at[0][1] if deployed_at else None,
                      "functions": functions, "containers": containers})

    async def history(self, request: web.Request) -> web.Response:
        row = await self._resolve(request.match_info["app_ref"])
        rows = await self.d.store.read(
            "SELECT version, created_at, strategy, tag, rollback_of, definitions FROM app_versions WHERE app_id=? "
            "ORDER BY version", (row["app_id"],))
        versions = []
        for version, created_at, strategy, tag, rollback_of, blob in rows:
            defs = msgpack.unpackb(blob, raw=False)
            versions.append({"version": version, "created_at": created_at, "strategy": strategy, "tag": tag or "",
                             "rollback_of": rollback_of, "functions": [d["tag"] for d in defs]})
        return reply({**row, "version": self.versions.get(row["app_id"]), "versions": versions})
