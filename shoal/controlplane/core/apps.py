"""Running apps: created (owned by the control plane that creates them), their functions registered (a pool
each), stopped (their calls terminated, their containers drained); an ephemeral app whose client is gone for
SESSION_GRACE_S stops by itself."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Protocol

from ..._spec.definitions import FunctionDefinition
from ..store import Store
from ..store import apps as app_rows
from .calls import Calls
from .model import AppState, Pool, new_id
from .ownership import AppOwnership
from .queues import Queues, WebUnavailableError

if TYPE_CHECKING:
    from ..web_routes import Router
    from .registry import Registry

log = logging.getLogger("shoal.dispatch")
SESSION_GRACE_S = float(os.environ.get("SHOAL_SESSION_GRACE_S", "10"))
STOP_DRAIN_S = 3.0  # how long stopping an app waits for its containers' last output


class ScheduleResets(Protocol):
    def reset(self, function_id: str) -> None: ...  # a Period restarts from a redeploy


class Apps:
    def __init__(self, registry: Registry, store: Store, ownership: AppOwnership, router: Router,
                 schedules: ScheduleResets, calls: Calls, queues: Queues) -> None:
        self.registry = registry
        self.store = store
        self.ownership = ownership
        self.router = router
        self.schedules = schedules
        self.calls = calls
        self.queues = queues

    async def create_app(self, name: str | None, mode: str, detach: bool, idem: str | None = None) -> AppState:
        """A new running app; with `idem` (the request's idempotency key) its {"app_id"} reply is kept under
        the key with the app's row (a resend finds it: `store.idempotency.replayed`)."""
        app = AppState(new_id("ap"), name, mode, detach)
        await self.ownership.created(app.id)
        self.registry.apps[app.id] = app
        await app_rows.put_app(self.store, app.id, name, mode, detach, idem)
        return app

    async def unborn_app(self, name: str | None, mode: str, detach: bool) -> AppState:
        """A new app that is neither stored nor listed until `register_functions(..., new=True)` stores it with
        its functions (a deploy lands whole or leaves nothing); `abandon` it if that never comes."""
        app = AppState(new_id("ap"), name, mode, detach)
        await self.ownership.created(app.id)
        return app

    async def abandon(self, app: AppState) -> None:
        await self.ownership.stopped(app.id, 0)

    async def register_functions(self, app: AppState, definitions: list[FunctionDefinition], *, new: bool = False,
                                 removed: list[Pool] | None = None,
                                 version: app_rows.NewVersion | None = None,
                                 idem: tuple[str, dict] | None = None) -> dict[str, str]:
        """Add the app's functions, or give those it has (same tag) their new definitions; stored in one
        transaction with the app (`new`: an `unborn_app`), the functions a new version drops (`removed`, stopped
        with `stop_pool` by the caller), the version and the reply kept under an idempotency key (`idem`:
        `app_rows.put_functions`), before anything changes in memory."""
        self.router.check_claims(app.id, app.name, app.mode, definitions)  # labels belong to their app
        ids = {d.tag: app.functions.get(d.tag) or new_id("fu") for d in definitions}
        await app_rows.put_functions(
            self.store, app.id, [(ids[d.tag], d.tag, d) for d in definitions],
            new_app=app_rows.NewApp(app.name, app.mode, app.detach) if new else None,
            removed=[p.function_id for p in removed or ()], version=version, idem=idem)
        if new:
            self.registry.apps[app.id] = app
        pools = self.registry.pools
        for d in definitions:
            function_id = ids[d.tag]
            pool = pools.get(function_id)
            if pool is not None:
                pool.redefine(d)
                self.schedules.reset(function_id)  # a Period restarts from the redeploy
            else:
                pool = self.registry.add_pool(function_id, app.id, d)
                if pool.options.min_containers:
                    self.queues.scale(pool)
        self.routes_changed()
        return dict(app.functions)

    def routes_changed(self) -> None:
        """Apps or functions changed: the web routing table (labels, URLs) follows."""
        self.router.rebuild(self.registry)

    async def stop_app(self, app_id: str, state: str = "stopped") -> None:
        """Terminate the app's calls and containers. Its log stays open ("stopping") until the containers'
        output is drained, so followers print everything before they see "stopped". `state`: what the store
        records ("failed": the control plane could not run it)."""
        app = self.registry.apps.get(app_id)
        if app is None or app.state != "running":
            return
        app.state = "stopping"
        stopped = app_rows.set_stopped(self.store, app_id, state)
        exits = []
        for function_id in app.functions.values():
            pool = self.registry.drop_pool(function_id)
            if pool is None:
                continue
            self.calls.terminate_running(pool, "the app was stopped")
            self.queues.fail_queue(pool, WebUnavailableError("the app was stopped"))  # web requests still waiting
            for c in list(pool.containers.values()):
                self.queues.stop_container(c, "app stopped")
                exits.append(c.exited)
        if exits:
            await asyncio.wait(exits, timeout=STOP_DRAIN_S)
        app.state = "stopped"
        self.registry.forget_app(app_id)
        self.routes_changed()
        app.logs.wake()
        await self.ownership.stopped(app_id, stopped)

    async def fail_app(self, app_id: str, why: str) -> None:
        """An app whose state breaks a background loop (an unusable definition): logged, stopped and marked
        failed, so the loop goes on with every other app."""
        log.error("app %s failed: %s; stopping it", app_id, why)
        app = self.registry.apps.get(app_id)
        if app is not None:
            app.logs.append("", "system", f"app failed: {why}\n")
        try:
            await self.stop_app(app_id, "failed")
        except Exception:  # noqa: BLE001 - whatever stopping it left, it runs nothing more here
            log.exception("stopping failed app %s", app_id)
        if app is not None and self.registry.apps.get(app_id) is app:
            for function_id in list(app.functions.values()):
                self.registry.drop_pool(function_id)
            self.registry.forget_app(app_id)
            app_rows.set_stopped(self.store, app_id, "failed")

    def stop_pool(self, pool: Pool, reason: str) -> None:
        """A function the app's new version no longer has (its row was deleted with the version): its calls
        end, its containers stop, it is forgotten."""
        self.registry.drop_pool(pool.function_id)
        app = self.registry.apps.get(pool.app_id)
        if app is not None:
            for key, fid in list(app.functions.items()):
                if fid == pool.function_id:
                    del app.functions[key]
        self.calls.terminate_running(pool, reason)
        for c in list(pool.containers.values()):
            self.queues.stop_container(c, reason)
        if pool.definition.schedule is not None:
            self.schedules.reset(pool.function_id)

    async def stop_orphans(self, now: float) -> None:
        """Ephemeral apps whose client has been gone for SESSION_GRACE_S stop."""
        for app in list(self.registry.apps.values()):
            if (app.mode == "ephemeral" and not app.detach and app.sessions == 0 and app.orphaned_at
                    and now - app.orphaned_at > SESSION_GRACE_S):
                log.info("app %s lost its client; stopping", app.id)
                try:
                    await self.stop_app(app.id)
                except Exception as exc:  # noqa: BLE001 - one app never stops the reaping of the others
                    await self.fail_app(app.id, f"stopping it failed: {exc!r}")
