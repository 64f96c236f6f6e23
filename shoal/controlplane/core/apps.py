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

    async def create_app(self, name: str | None, mode: str, detach: bool) -> AppState:
        app = AppState(new_id("ap"), name, mode, detach)
        await self.ownership.created(app.id)
        self.registry.apps[app.id] = app
        await self.store.flushed(app_rows.put_app(self.store, app.id, name, mode, detach))
        return app

    async def register_functions(self, app: AppState, definitions: list[FunctionDefinition]) -> dict[str, str]:
        """Add the app's functions, or give those it has (same tag) their new definitions."""
        self.router.check_claims(app.id, app.name, app.mode, definitions)  # labels belong to their app
        ticket = 0
        pools = self.registry.pools
        for d in definitions:
            function_id = app.functions.get(d.tag) or new_id("fu")
            pool = pools.get(function_id)
            if pool is not None:
                pool.redefine(d)
                self.schedules.reset(function_id)  # a Period restarts from the redeploy
            else:
                pool = self.registry.add_pool(function_id, app.id, d)
                if pool.options.min_containers:
                    self.queues.scale(pool)
            ticket = app_rows.put_function(self.store, function_id, app.id, d.tag, d)
        await self.store.flushed(ticket)
        self.routes_changed()
        return dict(app.functions)

    def routes_changed(self) -> None:
        """Apps or functions changed: the web routing table (labels, URLs) follows."""
        self.router.rebuild(self.registry)

    async def stop_app(self, app_id: str) -> None:
        """Terminate the app's calls and containers. Its log stays open ("stopping") until the containers'
        output is drained, so followers print everything before they see "stopped"."""
        app = self.registry.apps.get(app_id)
        if app is None or app.state != "running":
            return
        app.state = "stopping"
        stopped = app_rows.set_stopped(self.store, app_id)
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

    async def forget_unborn(self, app_id: str) -> None:
        """An app created for a deploy that failed before anything was deployed: stopped, and no row left."""
        await self.stop_app(app_id)
        app_rows.delete(self.store, app_id)

    def stop_pool(self, pool: Pool, reason: str) -> None:
        """A function the app's new version no longer has: its calls end, its containers stop, it is
        forgotten."""
        self.registry.drop_pool(pool.function_id)
        app = self.registry.apps.get(pool.app_id)
        if app is not None:
            for key, fid in list(app.functions.items()):
                if fid == pool.function_id:
                    del app.functions[key]
        self.calls.terminate_running(pool, reason)
        for c in list(pool.containers.values()):
            self.queues.stop_container(c, reason)
        app_rows.delete_function(self.store, pool.function_id)
        if pool.definition.schedule is not None:
            self.schedules.reset(pool.function_id)

    async def stop_orphans(self, now: float) -> None:
        """Ephemeral apps whose client has been gone for SESSION_GRACE_S stop."""
        for app in list(self.registry.apps.values()):
            if (app.mode == "ephemeral" and not app.detach and app.sessions == 0 and app.orphaned_at
                    and now - app.orphaned_at > SESSION_GRACE_S):
                log.info("app %s lost its client; stopping", app.id)
                await self.stop_app(app.id)
