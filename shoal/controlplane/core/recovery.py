"""Recovery: the running apps rebuilt from the store, at start (every app: this control plane is the only one)
or when a replica takes one over (controlplane/replicas.py); and letting go of an app another replica owns now.

Rebuilt: the app, its functions (pools), its running calls with their unfinished inputs queued again; outputs
already committed are kept, and readers behind them read them from the store (`Call.recovered_seq`).

Stored state this version cannot use (a definition an older or buggy version wrote with a wrong type, bytes
that are no definition) fails that app alone: it is logged and marked "failed", and every other app recovers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..._spec.definitions import FunctionDefinition
from ..store import Store
from ..store import apps as app_rows
from ..store import calls as call_rows
from .logs import wake_all
from .model import TERMINATED, AppState, Call, Input, Pool
from .outputs import Outputs
from .queues import Queues

if TYPE_CHECKING:
    from ..web_routes import Router
    from .registry import Registry

log = logging.getLogger("shoal.dispatch")


@dataclass
class Stored:
    """What recovery reads from the store."""

    apps: list[tuple[str, str | None, str, int]]  # (app_id, name, mode, detach)
    functions: list[tuple[str, str, FunctionDefinition | str]]  # (function_id, app_id, definition or why not)
    calls: list[call_rows.Unfinished]


class Recovery:
    def __init__(self, store: Store, registry: Registry, queues: Queues, outputs: Outputs, router: Router) -> None:
        self.store = store
        self.registry = registry
        self.queues = queues
        self.outputs = outputs
        self.router = router

    async def recover(self) -> None:
        """Rebuild every running app from the store (at start, when this control plane is the only one)."""
        self._apply(self._load(None))

    async def recover_app(self, app_id: str) -> bool:
        """Take over one app from the store, as `recover` does at start. False when the app is not running
        (stopped meanwhile) or already here."""
        data = await asyncio.to_thread(self._load, app_id)
        if not data.apps or app_id in self.registry.apps:
            return False
        self._apply(data)
        return True

    def _load(self, app_id: str | None) -> Stored:
        """What recovery needs, read from the store (blocking: at start, or in a thread)."""
        apps = app_rows.running_now(self.store, app_id)
        functions = app_rows.definitions_now(self.store, app_id)
        running = {a[0] for a in apps}
        known = {function_id for function_id, owner, _ in functions if owner in running}
        return Stored(apps, functions, call_rows.load_unfinished_now(self.store, app_id, known))

    def _apply(self, data: Stored) -> None:
        registry = self.registry
        unusable = {app_id: f"function {function_id}: {why}"
                    for function_id, app_id, why in data.functions if isinstance(why, str)}
        for app_id, name, mode, detach in data.apps:
            if app_id in unusable:
                self._fail(app_id, unusable[app_id])
            elif app_id not in registry.apps:
                registry.apps[app_id] = AppState(app_id, name, mode, bool(detach))
        for function_id, app_id, definition in data.functions:
            if app_id in registry.apps and function_id not in registry.pools and not isinstance(definition, str):
                try:
                    registry.add_pool(function_id, app_id, definition)
                except Exception as exc:  # noqa: BLE001 - one app's stored state never stops the others
                    self._fail(app_id, f"function {function_id}: {exc!r}")
        requeued = 0
        for stored in data.calls:
            pool = registry.pools.get(stored.function_id)
            if pool is None:
                call_rows.set_state(self.store, stored.call_id, TERMINATED)  # its function or its app is gone
                continue
            if stored.call_id in registry.calls:
                continue
            try:
                requeued += self._recover_call(pool, stored)
            except Exception:  # noqa: BLE001 - a call this version cannot read ends; the others go on
                log.exception("call %s cannot be recovered; terminating it", stored.call_id)
                registry.calls.pop(stored.call_id, None)
                call_rows.set_state(self.store, stored.call_id, TERMINATED)
        if requeued:
            log.info("recovered %d unfinished inputs", requeued)
        self.router.rebuild(registry)
        for app_id, *_ in data.apps:
            app = registry.apps.get(app_id)
            for function_id in list(app.functions.values()) if app else ():
                pool = registry.pools.get(function_id)
                if pool is not None:
                    try:
                        self.queues.scale(pool)
                    except Exception as exc:  # noqa: BLE001
                        self._fail(app_id, f"function {function_id}: {exc!r}")

    def _fail(self, app_id: str, why: str) -> None:
        """An app whose stored state cannot run here: logged, marked failed in the store, forgotten."""
        log.error("app %s cannot be recovered (%s); marking it failed", app_id, why)
        app = self.registry.apps.get(app_id)
        for function_id in list(app.functions.values()) if app else ():
            pool = self.registry.drop_pool(function_id)
            for call in self.registry.calls_of(pool) if pool is not None else ():
                del self.registry.calls[call.id]
        self.registry.forget_app(app_id)
        app_rows.set_stopped(self.store, app_id, "failed")

    def _recover_call(self, pool: Pool, stored: call_rows.Unfinished) -> int:
        """A running call rebuilt, its unfinished inputs queued again: how many."""
        registry = self.registry
        call = Call(stored.call_id, pool, stored.kind, stored.num_inputs, stored.method)
        call.next_seq = stored.max_seq + 1
        call.published = stored.max_seq  # committed, so visible: readers behind it read them from the store
        call.recovered_seq = stored.max_seq
        call.done = len(stored.finals)
        if call.keeps_results:
            call.results.update(stored.finals)
        unfinished = [Input(call, idx, args) for idx, args in stored.inputs if idx not in stored.finals]
        if call.received is not None:
            call.received.update(idx for idx, _ in stored.inputs)
        registry.calls[call.id] = call
        pool.queue.extend(unfinished)
        if call.finished:
            self.outputs.complete_call(call)
        return len(unfinished)

    def release_app(self, app_id: str, reason: str) -> None:
        """Forget an app without touching the store: another replica owns it now. Its containers are killed
        (their inputs run again at the new owner), its waiting readers are woken, and requests for it go to the
        new owner from now on."""
        registry = self.registry
        app = registry.apps.pop(app_id, None)
        if app is None:
            return
        log.warning("app %s: %s; letting go of it", app_id, reason)
        app.state = "moved"
        for function_id in list(app.functions.values()):
            pool = registry.drop_pool(function_id)
            if pool is None:
                continue
            pool.queue.clear()
            for c in list(pool.containers.values()):
                for inp in c.running.values():
                    if inp.timer:
                        inp.timer.cancel()
                c.running.clear()
                self.queues.stop_container(c, f"app moved to another control plane ({reason})", kill=True)
            for call in registry.calls_of(pool):
                del registry.calls[call.id]
                call.state = "moved"
                for futs in call.result_waiters.values():
                    for fut in futs:
                        if not fut.done():
                            fut.set_result(None)
                wake_all(call.output_waiters)
        self.router.rebuild(registry)
        app.logs.wake()
