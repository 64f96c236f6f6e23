"""Deployed apps: persistent by name, versioned, updated in place (`shoal deploy`, `App.deploy()`).

A deploy finds the running deployed app of that name (or creates one) and registers the new definitions on it.
Every function keeps its id and pool across versions; the pool gets the new definition, whose `generation` is
the version that set it, so a restarted control plane knows it too. The containers a pool had when the version
changed are *superseded* (controlplane/core/rollout.py: rolling or recreate).

Functions a version no longer has stop (their calls are terminated); new ones get pools. Each version's
definitions are kept (`app_versions`) for `shoal app history` and `shoal app rollback`, which deploys an older
version's definitions again as a new version.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .._spec.definitions import FunctionDefinition
from .core.model import AppState, Pool
from .definitions import from_request
from .rest import ApiError, body_of, reply
from .store import apps as app_rows

if TYPE_CHECKING:
    from .build import Core
    from .definitions import Definitions

STRATEGIES = ("rolling", "recreate")
ROLLOUT_RETRY_S = 0.5


class Deployments:
    """Routes and state of deployed apps; `versions` holds each deployed app's current version."""

    def __init__(self, core: Core, definitions: Definitions) -> None:
        self.core = core
        self.registry = core.registry
        self.store = core.store
        self.definitions = definitions
        self.versions: dict[str, int] = app_rows.latest_versions_now(self.store)
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

    def reload_version(self, app_id: str) -> None:
        """Another control plane deployed the app until now (a takeover): its current version, from the store."""
        version = app_rows.latest_version_now(self.store, app_id)
        if version is not None:
            self.versions[app_id] = version

    @staticmethod
    def check_strategy(strategy: Any) -> None:
        if strategy not in STRATEGIES:
            raise ApiError(400, f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")

    async def next_version(self, app: AppState, defs: list[FunctionDefinition], strategy: str) -> tuple[int, dict]:
        """Prepared definitions become the app's next version (an app registering its functions again with a
        strategy: `shoal serve`'s reloads)."""
        async with self._lock(app.id):
            if app.state != "running":  # stopped while its images were building
                raise ApiError(409, f"app {app.id} was stopped while its functions were being updated",
                               "InvalidError")
            return await self._apply(app, defs, strategy, "", None)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _deployed(self, name: str) -> AppState | None:
        """The running deployed app of this name (there is at most one)."""
        found = [a for a in self.registry.apps.values()
                 if a.name == name and a.mode == "deployed" and a.state == "running"]
        return found[-1] if found else None

    async def _resolve(self, ref: str) -> dict[str, Any]:
        """An app by id (any state), else by name: the running deployed app, else the newest running app, else
        the newest deployed one, else the newest."""
        apps = await (app_rows.by_id if ref.startswith("ap-") else app_rows.by_name)(self.store, ref)
        for keep in (lambda a: a["state"] == "running" and a["mode"] == "deployed",
                     lambda a: a["state"] == "running", lambda a: a["mode"] == "deployed", lambda a: True):
            chosen = [a for a in apps if keep(a)]
            if chosen:
                app = chosen[0]
                live = self.registry.apps.get(app["app_id"])
                if live is not None:
                    app["state"] = live.state
                elif app["state"] == "running":
                    app["state"] = "stopped"  # stopped in memory, the row not yet written
                return app
        raise ApiError(404, f"no app with id or name {ref!r}", "NotFoundError")

    # -- deploy --------------------------------------------------------------------------------------------------
    async def deploy(self, request: web.Request) -> web.Response:
        body = await body_of(request, "name", "functions")
        name = body["name"]
        strategy = body.get("strategy") or "rolling"
        if not isinstance(name, str) or not name:
            raise ApiError(400, "a deployed app needs a name")
        self.check_strategy(strategy)
        defs = from_request(body["functions"])
        tag = body.get("tag") or ""
        self.core.router.check_claims(None, name, "deployed", defs)  # before an app is made or images built
        async with self._lock(name):
            app = self._deployed(name)
            created = app is None
            if app is None:
                app = await self.core.apps.create_app(name, "deployed", True)
            try:
                await self.definitions.prepare(app, defs)
            except BaseException:
                if created:  # nothing was deployed: leave no empty app behind
                    await self.core.apps.forget_unborn(app.id)
                raise
            if app.state != "running":  # stopped while its images were building
                raise ApiError(409, f"app {name!r} was stopped while it was being deployed", "InvalidError")
            version, functions = await self._apply(app, defs, strategy, str(tag), None)
        return reply({"app_id": app.id, "name": name, "version": version, "functions": functions,
                      "created": created})

    async def _apply(self, app: AppState, defs: list[FunctionDefinition], strategy: str, tag: str,
                     rollback_of: int | None) -> tuple[int, dict[str, str]]:
        """Make `defs` the app's next version."""
        self.core.router.check_claims(app.id, app.name, app.mode, defs)  # before any function of it stops
        version = self.versions.get(app.id, 0) + 1
        for d in defs:
            d.generation = version
        tags = {d.tag for d in defs}
        core = self.core
        for fid in list(app.functions.values()):
            pool = self.registry.pools.get(fid)
            if pool is not None and pool.tag not in tags:
                core.apps.stop_pool(pool, f"function {pool.tag!r} is not in version {version} of the app")
        existing = {d.tag: app.functions.get(d.tag) for d in defs}
        functions = await core.apps.register_functions(app, defs)
        for d in defs:
            fid = functions[d.tag]
            pool = self.registry.pools[fid]
            if existing[d.tag] is None:
                continue  # a new function: its pool starts empty
            rolled = [pool]
            for variant in core.variants.variants_of(fid):
                core.variants.redefine(variant, pool)
                rolled.append(variant)
            for p in rolled:
                core.rollout.roll(p, strategy, version)
                if p.superseded:
                    self._rolling.add(p)
        ticket = app_rows.put_version(self.store, app.id, version, defs, strategy, tag, rollback_of)
        self.versions[app.id] = version
        if self._rolling and self._rollout_task is None:
            self._rollout_task = asyncio.create_task(self._replace_until_done())
        await self.store.flushed(ticket)
        what = f"rollback to version {rollback_of}" if rollback_of else "deploy"
        app.logs.append("", "system", f"version {version} deployed ({what}, {strategy})\n")
        return version, {d.tag: functions[d.tag] for d in defs}

    async def _replace_until_done(self) -> None:
        """Replacements the machine had no room for when the version changed are started as room appears."""
        try:
            while self._rolling:
                await asyncio.sleep(ROLLOUT_RETRY_S)
                for pool in list(self._rolling):
                    if not self.core.rollout.replace_superseded(pool):
                        self._rolling.discard(pool)
        finally:
            self._rollout_task = None

    # -- rollback ------------------------------------------------------------------------------------------------
    async def rollback(self, request: web.Request) -> web.Response:
        ref = request.match_info["app_ref"]
        body = await body_of(request)
        strategy = body.get("strategy") or "rolling"
        self.check_strategy(strategy)
        row = await self._resolve(ref)
        app = self.registry.apps.get(row["app_id"])
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
            defs = await app_rows.version_definitions(self.store, app.id, target)
            if defs is None:
                raise ApiError(404, f"version {target} of app {app.name!r} is not recorded", "NotFoundError")
            await self.definitions.prepare_again(defs, target)
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
                          "functions": dict(self.registry.apps[row["app_id"]].functions)
                          if row["app_id"] in self.registry.apps else {}})
        async with self._lock(name):
            app = self._deployed(name)
            created = False
            if app is None:
                if not body.get("create_if_missing"):
                    raise ApiError(404, f"no deployed app named {name!r}", "NotFoundError")
                app = await self.core.apps.create_app(name, "deployed", True)
                created = True
        return reply({"app_id": app.id, "name": app.name, "mode": app.mode, "state": app.state,
                      "version": self.versions.get(app.id), "functions": dict(app.functions), "created": created})

    async def info(self, request: web.Request) -> web.Response:
        """What `shoal app info` shows: the app, its version, functions (with their containers and next
        scheduled run) and containers."""
        row = await self._resolve(request.match_info["app_ref"])
        app_id = row["app_id"]
        live = self.registry.apps.get(app_id)
        now = time.monotonic()
        functions, containers = [], []
        for key, fid in (dict(live.functions) if live else {}).items():
            pool = self.registry.pools.get(fid)
            if pool is None:
                continue
            scheduled = pool.definition.schedule is not None
            functions.append({"tag": key, "function_id": fid, "version": pool.generation or None,
                              "containers": len(pool.live()), "queued": len(pool.queue),
                              "schedule": pool.definition.schedule,
                              "next_run": self.core.scheduler.upcoming(pool) if scheduled else None})
            for c in pool.containers.values():
                containers.append({"container_id": c.id, "function": key, "function_id": fid, "state": c.state,
                                   "superseded": c.id in pool.superseded, "running_inputs": len(c.running),
                                   "age_s": now - c.created_at})
        deployed_at = await app_rows.last_deploy(self.store, app_id)
        return reply({**row, "version": self.versions.get(app_id),
                      "deployed_at": deployed_at[0] if deployed_at else None,
                      "strategy": deployed_at[1] if deployed_at else None,
                      "functions": functions, "containers": containers})

    async def history(self, request: web.Request) -> web.Response:
        row = await self._resolve(request.match_info["app_ref"])
        versions = await app_rows.history(self.store, row["app_id"])
        return reply({**row, "version": self.versions.get(row["app_id"]), "versions": versions})
