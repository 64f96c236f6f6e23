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

from .._spec import requests as req
from .._spec.definitions import FunctionDefinition
from .._spec.limits import DATA_BODY_MAX
from .core.model import AppState, Pool
from .definitions import check_client_fields
from .idempotency import is_retry, request_key
from .rest import ApiError, body_of, reply
from .store import apps as app_rows
from .store import idempotency as keyed

if TYPE_CHECKING:
    from .build import Core
    from .definitions import Definitions

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

    async def next_version(self, app: AppState, defs: list[FunctionDefinition], strategy: str,
                           key: str | None) -> dict[str, Any]:
        """Prepared definitions become the app's next version (an app registering its functions again with a
        strategy: `shoal serve`'s reloads): the reply, {"functions", "version"}, kept under the request's
        idempotency `key` (a resend gets the first reply; no second version)."""
        async with self._lock(app.id):
            done = await keyed.replayed(self.store, key)
            if done is not None:
                return done.result
            if app.state != "running":  # stopped while its images were building
                raise ApiError(409, f"app {app.id} was stopped while its functions were being updated",
                               "InvalidError")
            version, functions = await self._apply(app, defs, strategy, "", None, idem=(key, {}))
            return {"functions": functions, "version": version}

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
        body = await body_of(request, req.Deploy, DATA_BODY_MAX, "function definition")
        name = body.name
        if not name:
            raise ApiError(400, "a deployed app needs a name")
        strategy = body.strategy or "rolling"
        defs = check_client_fields(body.functions)
        tag = body.tag or ""
        self.core.router.check_claims(None, name, "deployed", defs)  # before an app is made or images built
        key = request_key(request)
        async with self._lock(name):
            done = await keyed.replayed(self.store, key)  # a resend of a deploy that landed: its first reply
            if done is not None:
                return reply(done.result)
            app = self._deployed(name)
            created = app is None
            if app is None:  # stored with its functions and version, in one transaction, or not at all
                app = await self.core.apps.unborn_app(name, "deployed", True)
            try:
                await self.definitions.prepare(app, defs)
                if app.state != "running":  # stopped while its images were building
                    raise ApiError(409, f"app {name!r} was stopped while it was being deployed", "InvalidError")
                version, functions = await self._apply(
                    app, defs, strategy, tag, None, new=created,
                    idem=(key, {"app_id": app.id, "name": name, "created": created}))
            except BaseException:
                if created:
                    await self.core.apps.abandon(app)
                raise
        return reply({"app_id": app.id, "name": name, "version": version, "functions": functions,
                      "created": created})

    async def _apply(self, app: AppState, defs: list[FunctionDefinition], strategy: str, tag: str,
                     rollback_of: int | None, new: bool = False,
                     idem: tuple[str | None, dict[str, Any]] = (None, {})) -> tuple[int, dict[str, str]]:
        """Make `defs` the app's next version: the app (`new`), its functions and the version are stored in
        one transaction first, so a deploy lands whole or leaves nothing; then the pools follow. `idem`: the
        request's idempotency key and its reply's fields (with "version" and "functions" added), kept in that
        transaction."""
        self.core.router.check_claims(app.id, app.name, app.mode, defs)  # before any function of it stops
        version = self.versions.get(app.id, 0) + 1
        for d in defs:
            d.generation = version
        tags = {d.tag for d in defs}
        core = self.core
        removed = [pool for fid in app.functions.values()
                   if (pool := self.registry.pools.get(fid)) is not None and pool.tag not in tags]
        existing = {d.tag: app.functions.get(d.tag) for d in defs}
        functions = await core.apps.register_functions(
            app, defs, new=new, removed=removed,
            version=app_rows.NewVersion(version, strategy, tag, rollback_of),
            idem=None if idem[0] is None else (idem[0], {**idem[1], "version": version}))
        for pool in removed:
            core.apps.stop_pool(pool, f"function {pool.tag!r} is not in version {version} of the app")
        if removed:
            core.apps.routes_changed()
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
        self.versions[app.id] = version
        if self._rolling and self._rollout_task is None:
            self._rollout_task = asyncio.create_task(self._replace_until_done())
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
        body = await body_of(request, req.Rollback)
        strategy = body.strategy or "rolling"
        row = await self._resolve(ref)
        app = self.registry.apps.get(row["app_id"])
        if app is None or app.mode != "deployed" or app.state != "running":
            raise ApiError(400, f"app {ref!r} is not a running deployed app", "InvalidError")
        key = request_key(request)
        async with self._lock(app.name or app.id):
            done = await keyed.replayed(self.store, key)  # a resend of a rollback that landed: its first reply
            if done is not None:
                return reply(done.result)
            current = self.versions.get(app.id, 0)
            target = current - 1 if body.version is None else body.version
            if current < 2:
                raise ApiError(400, f"app {app.name!r} has no earlier version to roll back to")
            if not 1 <= target < current:
                raise ApiError(400, f"cannot roll back app {app.name!r} (at version {current}) to version "
                                    f"{target}: choose a version from 1 to {current - 1}")
            defs = await app_rows.version_definitions(self.store, app.id, target)
            if defs is None:
                raise ApiError(404, f"version {target} of app {app.name!r} is not recorded", "NotFoundError")
            await self.definitions.prepare_again(defs, target)
            version, functions = await self._apply(
                app, defs, strategy, f"rollback to v{target}", target,
                idem=(key, {"app_id": app.id, "name": app.name, "rolled_back_to": target}))
        return reply({"app_id": app.id, "name": app.name, "version": version, "rolled_back_to": target,
                      "functions": functions})

    # -- reads -----------------------------------------------------------------------------------------------
    async def lookup(self, request: web.Request) -> web.Response:
        """`App.lookup(name)`: the deployed app of that name (or any app by id); `create_if_missing` creates an
        empty deployed app."""
        body = await body_of(request, req.AppLookup)
        name = body.name
        if name.startswith("ap-"):
            row = await self._resolve(name)
            return reply({**row, "version": self.versions.get(row["app_id"]),
                          "functions": dict(self.registry.apps[row["app_id"]].functions)
                          if row["app_id"] in self.registry.apps else {}})
        key = request_key(request)
        async with self._lock(name):
            app = self._deployed(name)
            created = False
            if app is None:
                if not body.create_if_missing:
                    raise ApiError(404, f"no deployed app named {name!r}", "NotFoundError")
                app = await self.core.apps.create_app(name, "deployed", True, key)
                created = True
            elif is_retry(request):  # a resend of the lookup that created it answers as the first did
                done = await keyed.replayed(self.store, key)
                created = done is not None and done.result.get("app_id") == app.id
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
