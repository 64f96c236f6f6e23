"""The dispatcher: accepts calls, hands inputs to containers, collects outputs, retries, scales pools.

Everything here runs on the control plane's one event loop; the store is written behind (group commit) and
read only at start-up and for calls no longer in memory.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import os
import secrets as _secrets
import time
from pathlib import Path
from typing import Any

import msgpack

from .._spec import frames as _protocol
from .._spec.config import RESULT_TTL_S
from .._spec.errors import dumps_exception
from .._spec.retries import retry_delay
from ..backends.base import ContainerImage, ContainerSpec, Unschedulable
from ..exception import ExecutionError, FunctionTimeoutError
from . import policy
from .logs import AppLogs
from .model import FAILURE, ITEM, SUCCESS, TERMINATED, TIMEOUT, Call, Container, Input, Pool
from .store import Store
from .warmpool import WARM_SOURCE_MOUNT, WarmPool

log = logging.getLogger("shoal.dispatch")
SESSION_GRACE_S = float(os.environ.get("SHOAL_SESSION_GRACE_S", "10"))
CALL_IDLE_EVICT_S = 300.0
PENDING_RETRY_S = 0.25  # how often a container waiting for resources (a GPU) tries again
STOP_DRAIN_S = 3.0  # how long stopping an app waits for its containers' last output
SERVER_REPORT_GRACE_S = 2.0  # past a Server's startup_timeout, before the control plane kills it unheard
HELLO_TIMEOUT_S = 30.0  # a connection to the container listener must say which container it is by then


class WebUnavailableError(Exception):
    """A web request cannot get a container: its function's containers fail to start, or its app stopped."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{_secrets.token_hex(10)}"


class AppState:
    def __init__(self, app_id: str, name: str | None, mode: str, detach: bool) -> None:
        self.id = app_id
        self.name = name
        self.mode = mode
        self.detach = detach
        self.state = "running"
        self.functions: dict[str, str] = {}  # tag -> function_id
        self.logs = AppLogs()
        self.sessions = 0
        self.orphaned_at: float | None = time.monotonic()  # no client session attached yet


class Dispatcher:
    def __init__(self, store: Store, backend: Any, state_dir: Path, control_address: str) -> None:
        self.store = store
        self.backend = backend
        self.state_dir = state_dir
        self.control_address = control_address
        self.apps: dict[str, AppState] = {}
        self.pools: dict[str, Pool] = {}
        self.calls: dict[str, Call] = {}
        self.containers: dict[str, Container] = {}
        self.secrets: Any = None  # server.secrets.SecretStore, set by main
        self.scheduler: Any = None  # server.scheduler.Scheduler, set by main
        self.volumes: Any = None  # server.volumes.Volumes, set by main
        self.proxy_tokens: Any = None  # server.proxy_tokens.ProxyTokens, set by main
        self.router: Any = None  # server.web_routes.Router (web URLs), set by main
        self.proxy: Any = None  # server.proxy.Proxy (request logs), set by main
        self._ties = 0  # Server requests among equally loaded containers go round in turn
        self.replicas: Any = None  # server.replicas.Replicas, when this is one of several control planes
        self._waiting: set[Pool] = set()
        self.warmpool = WarmPool(self)  # pools that wanted containers the machine had no room for
        self.server_url = ""
        self.server_token = ""
        self._tasks: set[asyncio.Task] = set()

    # -- start-up and housekeeping ---------------------------------------------------------------------------
    async def recover(self) -> None:
        """Rebuild running apps, their functions and every unfinished input from the store (at start, when this
        control plane is the only one; replicas rebuild the apps they take over one by one: `recover_app`)."""
        self._apply_recovered(self._load_recovered(None))

    async def recover_app(self, app_id: str) -> bool:
        """Take over one app from the store, as `recover` does at start: its functions, its running calls and
        their unfinished inputs (queued again), the outputs already committed (kept). False when the app is
        not running (stopped meanwhile)."""
        data = await asyncio.to_thread(self._load_recovered, app_id)
        if not data["apps"] or app_id in self.apps:
            return False
        self._apply_recovered(data)
        return True

    def _load_recovered(self, app_id: str | None) -> dict[str, Any]:
        """What recovery needs, read from the store (blocking: at start, or in a thread)."""
        read = self.store.read_now
        one = app_id is not None  # one app (a takeover), else every running app (start-up)
        args = (app_id,) if one else ()
        apps = read("SELECT app_id, name, mode, detach FROM apps WHERE state='running'"
                    + (" AND app_id=?" if one else "") + " ORDER BY created_at", args)
        functions = read("SELECT function_id, app_id, definition FROM functions" + (" WHERE app_id=?" if one else ""),
                         args)
        calls = read(
            "SELECT c.call_id, c.function_id, c.kind, c.num_inputs, "
            "(SELECT COALESCE(MAX(seq), -1) FROM outputs o WHERE o.call_id = c.call_id), c.method "
            "FROM calls c WHERE c.state='running'"
            + (" AND c.function_id IN (SELECT function_id FROM functions WHERE app_id=?)" if one else ""), args)
        running = {a[0] for a in apps}
        known = {row[0] for row in functions if row[1] in running}
        details = {}
        for call_id, function_id, *_ in calls:
            if function_id not in known:
                continue
            finals = read("SELECT idx, status, data FROM outputs WHERE call_id=? AND final=1", (call_id,))
            inputs = read("SELECT idx, args FROM inputs WHERE call_id=?", (call_id,))
            details[call_id] = (finals, inputs)
        return {"apps": apps, "functions": functions, "calls": calls, "details": details}

    def _apply_recovered(self, data: dict[str, Any]) -> None:
        for app_id, name, mode, detach in data["apps"]:
            self.apps[app_id] = AppState(app_id, name, mode, bool(detach))
        for function_id, app_id, definition in data["functions"]:
            if app_id in self.apps and function_id not in self.pools:
                self._add_pool(function_id, app_id, msgpack.unpackb(definition))
        requeued = 0
        pools = set()
        for call_id, function_id, kind, num_inputs, max_seq, method in data["calls"]:
            pool = self.pools.get(function_id)
            if pool is None:
                self.store.set_call_state(call_id, TERMINATED)  # its function or its app is gone
                continue
            if call_id in self.calls:
                continue
            pools.add(pool)
            call = Call(call_id, pool, kind, num_inputs, method)
            call.next_seq = max_seq + 1
            call.published = max_seq  # committed, so visible: readers behind it read them from the store
            call.recovered_seq = max_seq
            self.calls[call_id] = call
            finals_rows, input_rows = data["details"].get(call_id, ((), ()))
            finals = {idx: (status, data_) for idx, status, data_ in finals_rows}
            call.done = len(finals)
            if call.keeps_results:
                call.results.update(finals)
            for idx, args in input_rows:
                if call.received is not None:
                    call.received.add(idx)
                if idx not in finals:
                    pool.queue.append(Input(call, idx, args))
                    requeued += 1
            if call.finished:
                self._complete_call(call)
        if requeued:
            log.info("recovered %d unfinished inputs", requeued)
        self.routes_changed()
        for app_id, *_ in data["apps"]:
            app = self.apps.get(app_id)
            for function_id in list(app.functions.values()) if app else ():
                pool = self.pools.get(function_id)
                if pool is not None:
                    self._scale(pool)

    def release_app(self, app_id: str, reason: str) -> None:
        """Forget an app without touching the store: another replica owns it now (controlplane/replicas.py). Its
        containers are killed (their inputs run again at the new owner), its waiting readers are woken, and
        requests for it go to the new owner from now on."""
        app = self.apps.pop(app_id, None)
        if app is None:
            return
        log.warning("app %s: %s; letting go of it", app_id, reason)
        app.state = "moved"
        for function_id in list(app.functions.values()):
            pool = self.pools.pop(function_id, None)
            if pool is None:
                continue
            pool.stopped = True
            pool.queue.clear()
            for c in list(pool.containers.values()):
                for inp in c.running.values():
                    if inp.timer:
                        inp.timer.cancel()
                c.running.clear()
                self._stop_container(c, f"app moved to another control plane ({reason})", kill=True)
            for call in [c for c in self.calls.values() if c.pool is pool]:
                del self.calls[call.id]
                call.state = "moved"
                for futs in call.result_waiters.values():
                    for fut in futs:
                        if not fut.done():
                            fut.set_result(None)
                for fut in call.output_waiters:
                    if not fut.done():
                        fut.set_result(None)
        self.routes_changed()
        app.logs.wake()

    async def housekeeping(self) -> None:
        """Once a second: scale idle pools down, stop orphaned apps, forget idle calls; hourly: expire results."""
        last_expiry = 0.0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for app in list(self.apps.values()):
                if (app.mode == "ephemeral" and not app.detach and app.sessions == 0 and app.orphaned_at
                        and now - app.orphaned_at > SESSION_GRACE_S):
                    log.info("app %s lost its client; stopping", app.id)
                    await self.stop_app(app.id)
            for pool in list(self.pools.values()):
                self._scale_down(pool, now)
            self.warmpool.trim(now)
            for call in list(self.calls.values()):
                if call.state != "running" and now - call.last_active > CALL_IDLE_EVICT_S:
                    del self.calls[call.id]
            if time.time() - last_expiry > 3600:
                last_expiry = time.time()
                self.store.expire(time.time() - RESULT_TTL_S)

    def shutdown(self) -> None:
        """Kill every container (the control plane is exiting; unfinished inputs stay in the store)."""
        for c in list(self.containers.values()):
            self._stop_container(c, "control plane shutting down", kill=True)

    # -- apps and functions ----------------------------------------------------------------------------------
    async def create_app(self, name: str | None, mode: str, detach: bool) -> AppState:
        app = AppState(new_id("ap"), name, mode, detach)
        if self.replicas is not None:
            await self.replicas.claim_new(app.id)  # the replica that creates an app owns it
        self.apps[app.id] = app
        await self.store.flushed(self.store.put_app(app.id, name, mode, detach))
        return app

    def _add_pool(self, function_id: str, app_id: str, definition: dict[str, Any]) -> Pool:
        pool = Pool(function_id, app_id, definition)
        self.pools[function_id] = pool
        # A variant (class parameter set, with_options) is listed under its own key; its tag stays the base's.
        self.apps[app_id].functions[definition.get("variant_key") or definition["tag"]] = function_id
        if _needs_params(definition):
            # A class with required parameters runs only in its parameter sets' pools: none warm here.
            pool.options = {**pool.options, "min_containers": None, "buffer_containers": None}
        return pool

    async def create_variant(self, pool: Pool, params: bytes | None, overrides: dict[str, Any]) -> str:
        """The pool for a class parameter set and/or option overrides of `pool`'s function: created on first
        use, stored like any function (so it survives a restart), the same one for the same values."""
        base = self.pools.get(pool.definition.get("variant_of") or pool.function_id)
        if base is None or base.stopped:
            raise KeyError(f"function {pool.function_id} is not running")
        app = self.apps[base.app_id]
        digest = hashlib.sha256(msgpack.packb([params, _canonical(overrides)], use_bin_type=True)).hexdigest()
        key = f"{base.tag}#{digest[:16]}"
        existing = app.functions.get(key)
        if existing is not None and existing in self.pools:
            return existing
        d = variant_definition(base.definition, params, overrides, base.function_id, key)
        function_id = new_id("fu")
        variant = self._add_pool(function_id, app.id, d)
        await self.store.flushed(self.store.put_function(function_id, app.id, key, msgpack.packb(d)))
        if variant.options.get("min_containers"):
            self._scale(variant)
        return function_id

    async def register_functions(self, app: AppState, definitions: list[dict[str, Any]]) -> dict[str, str]:
        ticket = 0
        for d in definitions:
            function_id = app.functions.get(d["tag"]) or new_id("fu")
            if function_id in self.pools:
                self.pools[function_id].definition = d
                self.pools[function_id].options = d.get("options", {})
                if _needs_params(d):  # as in _add_pool: no warm containers without parameter values
                    self.pools[function_id].options = {**d.get("options", {}), "min_containers": None,
                                                       "buffer_containers": None}
                self.pools[function_id].start_failures = 0
                self.pools[function_id].autoscaler.reset()  # runtime overrides last until a redeploy
                if self.scheduler is not None:
                    self.scheduler.reset(function_id)  # a Period restarts from the redeploy
            else:
                pool = self._add_pool(function_id, app.id, d)
                min_c = pool.options.get("min_containers") or 0
                if min_c:
                    self._scale(pool)
            ticket = self.store.put_function(function_id, app.id, d["tag"], msgpack.packb(d))
        await self.store.flushed(ticket)
        self.routes_changed()
        return dict(app.functions)

    def routes_changed(self) -> None:
        """Apps or functions changed: the web routing table (labels, URLs) follows."""
        if self.router is not None:
            self.router.rebuild(self)

    async def stop_app(self, app_id: str) -> None:
        """Terminate the app's calls and containers. Its log stays open ("stopping") until the containers'
        output is drained, so followers print everything before they see "stopped"."""
        app = self.apps.get(app_id)
        if app is None or app.state != "running":
            return
        app.state = "stopping"
        stopped = self.store.set_app_stopped(app_id)
        exits = []
        for function_id in app.functions.values():
            pool = self.pools.pop(function_id, None)
            if pool is None:
                continue
            pool.stopped = True
            for call in [c for c in self.calls.values() if c.pool is pool and c.state == "running"]:
                self._terminate_call(call, "the app was stopped")
            self._fail_queue(pool, WebUnavailableError("the app was stopped"))  # web requests still waiting
            for c in list(pool.containers.values()):
                self._stop_container(c, "app stopped")
                exits.append(c.exited)
        if exits:
            await asyncio.wait(exits, timeout=STOP_DRAIN_S)
        app.state = "stopped"
        self.apps.pop(app_id, None)
        self.routes_changed()
        app.logs.wake()
        if self.replicas is not None:
            await self.store.flushed(stopped)  # no other replica may take it over as a running app
            await self.replicas.forget(app_id)

    # -- calls -----------------------------------------------------------------------------------------------
    def get_pool(self, function_id: str) -> Pool | None:
        return self.pools.get(function_id)

    async def create_call(self, pool: Pool, call_id: str, kind: str, args: bytes | None,
                          method: str | None = None) -> tuple[Call, int]:
        """A new call (idempotent on `call_id`); returns it with the store ticket that makes it durable.
        `method`: the method of a class the call runs."""
        existing = self.calls.get(call_id)
        if existing is not None:
            return existing, 0
        total = None if kind == "map" else 1
        call = Call(call_id, pool, kind, total, method)
        self.calls[call_id] = call
        ticket = self.store.put_call(call_id, pool.function_id, kind, total, method)
        if args is not None:
            ticket = self.store.put_inputs([(call_id, 0, args)])
            self._enqueue(pool, [Input(call, 0, args)])
        return call, ticket

    def add_inputs(self, call: Call, items: list[tuple[int, bytes]], last: bool) -> int:
        """Inputs of a map, streamed in batches; duplicates (client retries) are ignored."""
        assert call.received is not None
        fresh = [(idx, args) for idx, args in items if idx not in call.received]
        call.received.update(idx for idx, _ in fresh)
        ticket = self.store.put_inputs([(call.id, idx, args) for idx, args in fresh]) if fresh else 0
        if last and call.total is None:
            call.total = len(call.received)
            call.received = None
            ticket = self.store.set_call_total(call.id, call.total)
        if call.cancelled:
            return ticket
        self._enqueue(call.pool, [Input(call, idx, args) for idx, args in fresh])
        if call.finished:
            self._complete_call(call)
        return ticket

    def cancel_call(self, call: Call, terminate_containers: bool) -> None:
        self._terminate_call(call, "the call was cancelled", terminate_containers=terminate_containers)

    def _terminate_call(self, call: Call, reason: str, terminate_containers: bool = True) -> None:
        call.cancelled = True
        pool = call.pool
        pool.queue = type(pool.queue)(i for i in pool.queue if i.call is not call)
        for c in list(pool.containers.values()):
            hit = [i for i in c.running.values() if i.call is call]
            if hit and (terminate_containers or not pool.definition.get("is_async")):
                # Sync code cannot be interrupted safely: the container goes, its other inputs are re-queued.
                self._stop_container(c, f"terminated: {reason}", kill=True)
        if call.total is None:
            call.total = len(call.received or ())
        data = dumps_exception(ExecutionError(f"Function call {call.id} terminated: {reason}"))
        self._finish_outputs([(call, idx, TERMINATED, data) for idx in list(call.open)])
        if call.finished:
            self._complete_call(call)

    # -- scheduling ------------------------------------------------------------------------------------------
    def _enqueue(self, pool: Pool, inputs: list[Input], front: bool = False) -> None:
        if front:
            pool.queue.extendleft(reversed(inputs))
        else:
            pool.queue.extend(inputs)
        self._pump(pool)
        if pool.queue:
            self._scale(pool)

    def _pump(self, pool: Pool) -> None:
        """Hand queued inputs to ready containers with room, least loaded first."""
        if not pool.queue:
            return
        ready = pool.ready()
        if not ready:
            return
        web = pool.is_web
        if pool.single_use:
            capacity = 1
        elif pool.batch_max_size or web:  # no prefetch: a batch, or requests held by the proxy
            capacity = pool.batch_max_size or pool.max_inputs
        else:
            capacity = policy.prefetch_capacity(pool.max_inputs, pool.avg_exec_s)
        now = time.monotonic()
        timeout = float(pool.options.get("timeout") or 300)
        for c in sorted(ready, key=lambda c: len(c.running)):
            room = capacity - len(c.running)
            n = room if web else policy.dispatch_batch(
                room=room, queued=len(pool.queue), ready_containers=len(ready), avg_exec_s=pool.avg_exec_s,
            )
            if n <= 0:
                continue
            items = []
            taken = 0
            loop = asyncio.get_running_loop()
            while pool.queue and taken < n:
                inp = pool.queue.popleft()
                if inp.call.cancelled or (inp.waiter is not None and inp.waiter.done()):
                    continue  # cancelled, or a web request whose client gave up while it waited
                taken += 1
                self._assign(c, inp, now)
                if inp.waiter is not None:
                    inp.waiter.set_result(c)  # the proxy forwards the request to this container itself
                    continue
                inp.timer = loop.call_later(timeout, self._on_timeout, inp)
                items.append([inp.key, inp.input_id, inp.call.id, inp.args, inp.call.method])
            if items and c.writer is not None:
                c.writer.write(_protocol.encode({"t": "inputs", "items": items}))
            if not pool.queue:
                break

    @staticmethod
    def _assign(c: Container, inp: Input, now: float) -> None:
        """`inp` runs in `c` from now: it holds one of the container's slots until its output (or release)."""
        c.next_key += 1
        inp.key = c.next_key
        inp.container = c
        inp.dispatched_at = now
        c.running[inp.key] = inp

    def _scale(self, pool: Pool, decision: policy.Decision | None = None) -> None:
        """Start the containers the autoscaler wants (`decision`, else one made now for the load now)."""
        if pool.stopped:
            return
        now = time.monotonic()
        if pool.start_failures >= policy.MAX_START_FAILURES:
            pause = pool.autoscaler.start_failed(now, pool.last_start_error)
            log.warning("%s: %d container starts failed in a row (last error: %s); warm-up starts pause %gs",
                        pool.tag, pool.start_failures, pool.last_start_error, pause)
            self._fail_queue(pool, ExecutionError(
                f"Function {pool.tag!r}: {pool.start_failures} container starts failed in a row; last error: "
                f"{pool.last_start_error}"))
            pool.start_failures = 0  # the next call tries fresh containers
            return
        live = pool.live()
        if decision is None:
            decision = pool.autoscaler.decide(pool, now, current=len(live), capacity=self.backend.capacity())
        need = decision.desired - len(live)
        if need <= 0:
            self._waiting.discard(pool)
            return
        if not pool.queue and now < pool.autoscaler.backoff_until:
            return  # warm containers (min/buffer) wait out the back-off after failed starts; inputs don't
        free = self.backend.capacity() - len(self.containers)
        if free < need:
            # The machine is full: make room by ending idle containers of other pools; this pool gets
            # another look whenever any container exits.
            self._waiting.add(pool)
            self._evict_idle(need - free, keep=pool)
        starting = sum(1 for c in live if c.state == "starting")
        for _ in range(min(need, max(free, 0))):
            if starting >= max(2, os.cpu_count() or 2):
                break
            starting += 1
            self._start_container(pool)

    def _evict_idle(self, count: int, keep: Pool) -> None:
        """Stop up to `count` idle containers of other pools, longest idle first, above their minimums; warm
        containers go first."""
        count -= self.warmpool.evict(count)
        idle = sorted((c for p in self.pools.values() if p is not keep for c in p.ready() if not c.running),
                      key=lambda c: c.idle_since)
        for c in idle[:count]:
            if len(c.pool.live()) > c.pool.autoscaler.min_containers(c.pool.options):
                self._stop_container(c, f"evicted to make room for {keep.tag!r}")

    def _scale_down(self, pool: Pool, now: float) -> None:
        """The autoscaler's once-a-second tick for one pool: sample its load, decide, then start containers or
        stop idle ones (only those idle for the scaledown window, only down to the decision)."""
        if pool.stopped:
            return
        live = pool.live()
        decision = pool.autoscaler.decide(pool, now, current=len(live), capacity=self.backend.capacity(),
                                          record=True)
        if decision.desired > len(live):
            self._scale(pool, decision)
        elif len(live) > decision.desired:
            window = pool.autoscaler.settings(pool).scaledown_window
            idle_for = [now - c.idle_since if c.state == "ready" and not c.running and not pool.queue else None
                        for c in live]
            for i in policy.scale_down_victims(idle_for, decision=decision, window_s=window):
                self._stop_container(live[i], "scaled down after idle window")
        # Containers that never became ready in time are failed starts.
        startup = float(pool.options.get("startup_timeout") or pool.options.get("timeout") or 300)
        # A Server's runtime enforces the same timeout on its port and says why it failed: it goes first.
        grace = SERVER_REPORT_GRACE_S if pool.server is not None else 0.0
        for c in pool.live():
            if c.state == "starting" and c.pending_reason is None and now - c.created_at > startup + grace:
                c.init_error = None
                pool.last_start_error = f"container did not become ready within {startup:g}s"
                self._stop_container(c, pool.last_start_error, kill=True, failed_start=True)

    def _fail_queue(self, pool: Pool, exc: BaseException, data: bytes | None = None) -> None:
        data = data or dumps_exception(exc)
        while pool.queue:
            inp = pool.queue.popleft()
            if inp.waiter is not None:
                if not inp.waiter.done():
                    why = str(exc) if isinstance(exc, WebUnavailableError) else (pool.last_start_error or str(exc))
                    inp.waiter.set_exception(WebUnavailableError(why))
            elif not inp.call.cancelled:
                self._finish_output(inp.call, inp.idx, FAILURE, data)

    # -- containers ------------------------------------------------------------------------------------------
    def _start_container(self, pool: Pool, warm: bool = False) -> Container:
        c = None if warm else self.warmpool.take(pool)
        if c is not None:
            self._spawn_task(self._assign_warm(c))
            return c
        c = Container(id=new_id("ta"), pool=pool, token=_secrets.token_hex(16), warm=warm,
                      exited=asyncio.get_running_loop().create_future())
        pool.containers[c.id] = c
        self.containers[c.id] = c
        self._spawn_task(self._run_container(c))
        return c

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _assign_warm(self, c: Container) -> None:
        """Give a warm container its function: source linked in, secrets as its environment, then `init`."""
        try:
            secret_env = await self.secrets.resolve(c.pool.definition.get("secrets") or [])
        except Exception as exc:  # noqa: BLE001 - e.g. the secret was deleted since registration
            c.pool.last_start_error = f"cannot resolve secrets: {exc}"
            self._stop_container(c, c.pool.last_start_error, kill=True, failed_start=True)
            return
        self._send_init(c, assign=self.warmpool.assignment(c, secret_env))

    def _send_init(self, c: Container, assign: dict[str, Any] | None = None) -> None:
        pool = c.pool
        app = self.apps.get(pool.app_id)
        assert c.writer is not None
        c.writer.write(_protocol.encode({
            "t": "init", "function_id": pool.function_id, "definition": pool.definition,
            "app_functions": dict(app.functions) if app else {}, "app_id": pool.app_id, "assign": assign,
        }))

    def _route_output(self, container_id: str, fd: str, text: str) -> None:
        """Container output goes to the log of the app its container serves now (a warm one changes apps)."""
        c = self.containers.get(container_id)
        app = self.apps.get(c.pool.app_id) if c is not None else None
        if app is not None:
            app.logs.append(container_id, fd, text)

    async def _run_container(self, c: Container) -> None:
        env = {
            "SHOAL_CONTAINER_ID": c.id,
            "SHOAL_CONTAINER_TOKEN": c.token,
            "SHOAL_CONTROL": self.control_address,
            "SHOAL_SERVER_URL": self.server_url,
            "SHOAL_TOKEN": self.server_token,
        }
        app = self.apps.get(c.pool.app_id)
        definition = c.pool.definition
        try:
            secret_env = {} if c.warm else await self.secrets.resolve(definition.get("secrets") or [])
        except Exception as exc:  # noqa: BLE001 - e.g. the secret was deleted since registration
            c.pool.last_start_error = f"cannot resolve secrets: {exc}"
            self._on_container_exit(c, None, failed_start=True)
            return
        spec = ContainerSpec(
            container_id=c.id, function_id=c.pool.function_id, app_id=c.pool.app_id, definition=definition,
            env={**secret_env, **env}, source_dir=None if c.warm else definition.get("source_dir"),
            image=ContainerImage(**definition["image_built"]) if definition.get("image_built") else None,
            binds=[(str(self.warmpool.source_dir(c)), WARM_SOURCE_MOUNT, False)] if c.warm else [],
            idle=c.shell,
        )
        try:
            if self.volumes is not None and not c.warm:
                spec.volumes = await self.volumes.prepare(c)  # each at its current version
            c.handle = await self._start_when_schedulable(c, spec, app)
        except Exception as exc:  # the backend could not even start it
            log.exception("container %s failed to start", c.id)
            c.pool.last_start_error = f"{type(exc).__name__}: {exc}"
            await self._release_volumes(c)
            self._on_container_exit(c, None, failed_start=True)
            return
        if c.handle is None:  # it waited for resources until it was no longer wanted
            await self._release_volumes(c)
            self._on_container_exit(c, None)
            return
        if c.state == "dead" or (c.shell and c.state == "stopping"):  # stopped while starting
            c.handle.kill()
        returncode = await c.handle.wait()
        await self._release_volumes(c)  # its uncommitted volume changes are committed before it counts as gone
        self._on_container_exit(c, returncode)

    async def _release_volumes(self, c: Container) -> None:
        if self.volumes is not None:
            await self.volumes.release(c.id)

    async def _start_when_schedulable(self, c: Container, spec: ContainerSpec, app: AppState | None) -> Any:
        """Start the container; while the backend cannot yet (`Unschedulable`: no free GPU of the model asked
        for), it stays pending with the reason shown (containers list, app logs) and tries again. Returns None
        once it is no longer wanted (stopped, or nothing left queued for it: a cancelled call)."""
        while True:
            try:
                c.t_launch = time.time()
                handle = await self.backend.start(spec, on_output=self._route_output)
            except Unschedulable as exc:
                if c.pending_reason != str(exc):
                    c.pending_reason = str(exc)
                    log.info("container %s of %s is pending: %s", c.id, c.pool.tag, exc)
                    if app is not None:
                        app.logs.append(c.id, "system", f"container {c.id} is pending: {exc}\n")
                await asyncio.sleep(PENDING_RETRY_S)
                pool = c.pool
                if c.state != "starting" or pool.stopped:
                    return None
                if not pool.queue and len(pool.live()) > int(pool.options.get("min_containers") or 0):
                    c.state = "stopping"
                    c.stop_reason = "no longer needed while pending"
                    return None
                continue
            if c.pending_reason is not None:
                c.pending_reason = None
                c.created_at = time.monotonic()  # the startup timeout counts from the real start
            return handle

    def _stop_container(self, c: Container, reason: str, kill: bool = False, failed_start: bool = False) -> None:
        if c.state in ("stopping", "dead"):
            return
        c.stop_reason = reason
        c.state = "stopping"
        if failed_start:
            c.pool.start_failures += 1
        if c.handle is None:
            return  # _run_container kills it once started
        if kill or c.writer is None:
            c.handle.kill()
        else:
            c.writer.write(_protocol.encode({"t": "stop"}))
            asyncio.get_running_loop().call_later(30.0, c.handle.kill)
        # Inputs it held go back to the queue now, not when the process is gone.
        self._requeue_running(c, charge=False)

    def _requeue_running(self, c: Container, charge: bool, reason: str = "") -> None:
        pool = c.pool
        back = []
        for inp in c.running.values():
            if inp.timer:
                inp.timer.cancel()
            inp.container = None
            if inp.call.cancelled or inp.waiter is not None:
                continue  # a web request was already forwarded: its client sees the failure (502)
            if charge:
                inp.crashes += 1
                if inp.crashes > policy.MAX_CRASH_RETRIES:
                    self._finish_output(inp.call, inp.idx, FAILURE, dumps_exception(ExecutionError(
                        f"the container running this input died {inp.crashes} times ({reason})")))
                    continue
            back.append(inp)
        c.running.clear()
        if back and not pool.stopped:
            self._enqueue(pool, back, front=True)

    def _on_container_exit(self, c: Container, returncode: int | None, failed_start: bool = False) -> None:
        was_ready = c.ready_at is not None
        prev_state = c.state
        c.state = "dead"
        if not c.exited.done():
            c.exited.set_result(returncode)
        pool = c.pool
        pool.containers.pop(c.id, None)
        self.containers.pop(c.id, None)
        if c.writer is not None:
            c.writer.close()
        if c.warm:
            self.warmpool.forget(c)
        reason = describe_exit(returncode)
        exit_reason = getattr(c.handle, "exit_reason", None)  # the backend may know better (an OOM kill)
        if callable(exit_reason):
            reason = exit_reason() or reason
        if prev_state != "stopping":
            app = self.apps.get(pool.app_id)
            if app and returncode not in (0, None):
                app.logs.append(c.id, "system", f"container {c.id} exited: {reason}\n")
            if not was_ready:
                pool.start_failures += 1
                if not failed_start and c.init_error is None:  # an init failure already said why
                    pool.last_start_error = f"container {reason}"
            self._requeue_running(c, charge=True, reason=reason)
        if c.init_error is not None:
            self._fail_queue(pool, ExecutionError("init failed"), data=c.init_error)
        if pool.queue:
            self._scale(pool)
        for waiting in list(self._waiting):
            if waiting.stopped:
                self._waiting.discard(waiting)
            elif waiting is not pool:
                self._scale(waiting)

    async def handle_runtime(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One container runtime's stream: hello, init, then inputs out and outputs in."""
        try:
            hello = await asyncio.wait_for(_protocol.read_frame(reader), HELLO_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - silent or garbled: a peer that is no runtime of ours (the Ray
            hello = None  # backend's TCP listener is reachable from the network)
        c = self.containers.get(hello.get("container_id", "")) if isinstance(hello, dict) else None
        if c is None or hello.get("token") != c.token or c.state != "starting":
            writer.close()
            return
        c.writer = writer
        if c.warm:
            writer.write(_protocol.encode({"t": "warm", "imports": self.warmpool.imports_for(c)}))
        else:
            self._send_init(c)
        while True:
            msg = await _protocol.read_frame(reader)
            if msg is None:
                break
            if c.state == "dead":
                # Fenced: the backend reported this container gone (e.g. its Ray node died) and its inputs were
                # handed to other containers; whatever it still sends is discarded, and its stream closed.
                log.warning("container %s sent a %r frame after it was declared dead; discarded", c.id, msg.get("t"))
                break
            t = msg["t"]
            pool = c.pool  # a warm container changes pools when it is assigned
            app = self.apps.get(pool.app_id)
            if t == "warm_ready":
                if c.state == "starting" and c.pool.function_id.startswith("warm:"):
                    c.state = "warm"
                continue
            if t == "modules":
                self.warmpool.learn(pool, msg.get("names") or [])
                continue
            if t == "out":
                self._on_outputs(c, msg["items"])
            elif t == "item":
                inp = c.running.get(msg["key"])
                if inp is not None and not inp.call.cancelled:
                    self._add_output(inp.call, inp.idx, ITEM, msg["data"], final=False)
            elif t == "ready":
                if c.state == "starting":
                    c.web_ports = msg.get("web") or {}
                    c.state = "ready"
                    c.ready_at = time.monotonic()
                    c.idle_since = c.ready_at
                    c.timings = phase_timings(c.t_requested, c.t_launch or c.t_requested, msg.get("timings", {}))
                    if app is not None:
                        app.logs.append(c.id, "info", f"container {c.id} ready in {format_timings(c.timings)}\n")
                    pool.start_failures = 0
                    pool.autoscaler.started()
                    if pool.superseded and c.id not in pool.superseded:
                        self._retire_superseded(pool)  # a container of the new version is ready (rolling)
                    self.warmpool.want(pool)  # its image is in use: keep one started for the next container
                    self._pump(pool)
                    if pool.queue and pool.avg_exec_s is not None:
                        self._scale(pool)  # a start slot is free; unmeasured inputs wait for their first output
            elif t == "init_failed":
                c.init_error = msg["exc"]
                pool.last_start_error = msg.get("summary", "container initialisation failed")
        # Stream gone: the process is dying or dead; make sure it is.
        if c.state not in ("dead",) and c.handle is not None:
            c.handle.kill()

    def _on_outputs(self, c: Container, items: list[list[Any]]) -> None:
        pool = c.pool
        finals: list[tuple[Call, int, str, bytes | None]] = []
        for key, status, data, duration in items:
            inp = c.running.pop(key, None)
            if inp is None:
                continue  # timed out or cancelled meanwhile
            if inp.timer:
                inp.timer.cancel()
            inp.container = None
            pool.avg_exec_s = policy.ewma(pool.avg_exec_s, duration)
            if inp.call.cancelled:
                continue
            if status == "ok":
                finals.append((inp.call, inp.idx, SUCCESS, data))
            else:
                self._fail_attempt(inp, FAILURE, data)
        self._finish_outputs(finals)
        if pool.single_use and c.ready_at is not None:
            self._stop_container(c, "single-use container finished its input")
        self._slots_freed(c)

    def _slots_freed(self, c: Container) -> None:
        """Inputs (or requests) of `c` finished: an idle draining container stops; the queue moves on."""
        if not c.running:
            c.idle_since = time.monotonic()
            if c.state == "draining":
                self._stop_container(c, c.stop_reason or "drained")
        self._pump(c.pool)
        if c.pool.queue:
            self._scale(c.pool)

    def _on_timeout(self, inp: Input) -> None:
        c = inp.container
        if c is None:
            return
        c.running.pop(inp.key, None)
        inp.container = None
        timeout = pool_timeout(c.pool)
        data = dumps_exception(FunctionTimeoutError(f"Function {c.pool.tag!r} timed out after {timeout:g}s"))
        self._stop_container(c, f"input {inp.input_id} timed out", kill=True)
        self._fail_attempt(inp, TIMEOUT, data)

    def _fail_attempt(self, inp: Input, status: str, data: bytes) -> None:
        """A user-visible failure: retry per the function's policy or finish with the error."""
        retries = inp.call.pool.options.get("retries")
        inp.attempt += 1
        if retries and inp.attempt <= retries["max_retries"] and not inp.call.cancelled:
            delay = retry_delay(retries, inp.attempt)
            asyncio.get_running_loop().call_later(delay, self._retry, inp)
        else:
            self._finish_output(inp.call, inp.idx, status, data)

    def _retry(self, inp: Input) -> None:
        if not inp.call.cancelled and not inp.call.pool.stopped:
            self._enqueue(inp.call.pool, [inp], front=True)

    # -- outputs ---------------------------------------------------------------------------------------------
    def _finish_output(self, call: Call, idx: int, status: str, data: bytes | None) -> None:
        self._finish_outputs([(call, idx, status, data)])

    def _finish_outputs(self, finals: list[tuple[Call, int, str, bytes | None]]) -> None:
        """Final outputs of inputs: each counted once, stored in one write, then shown to readers."""
        rows = []
        for call, idx, status, data in finals:
            if call.open.pop(idx, None) is None:
                continue  # already finished (a late duplicate)
            call.done += 1
            rows.append((call, idx, status, data, True))
        self._add_outputs(rows)
        for call, *_ in rows:
            if call.finished:
                self._complete_call(call)

    def _add_output(self, call: Call, idx: int, status: str, data: bytes | None, final: bool) -> None:
        self._add_outputs([(call, idx, status, data, final)])

    def _add_outputs(self, rows: list[tuple[Call, int, str, bytes | None, bool]]) -> None:
        if not rows:
            return
        stored, shown = [], []
        for call, idx, status, data, final in rows:
            seq = call.next_seq
            call.next_seq += 1
            if final and call.kind == "remote":
                # The waiting `.remote()` caller gets its result now; durability follows behind.
                call.results[idx] = (status, data)
                for fut in call.result_waiters.pop(idx, []):
                    if not fut.done():
                        fut.set_result((status, data))
            stored.append((call.id, seq, idx, status, data, final))
            shown.append((call, seq, idx, status, data, final))
        fences = None
        if self.replicas is not None:  # written only while this replica still holds the app's lease
            fences = [self.replicas.fence(call.pool.app_id) for call, *_ in shown]
        ticket = self.store.put_outputs(stored, fences)

        def publish() -> None:
            for call, seq, idx, status, data, final in shown:
                call.publish(seq, idx, status, data, final)

        self.store.after(ticket, publish)

    def _complete_call(self, call: Call) -> None:
        if call.state != "running":
            return
        call.state = "terminated" if call.cancelled else "complete"
        self.store.set_call_state(call.id, call.state)

    # -- reads for the API -----------------------------------------------------------------------------------
    async def wait_result(self, call: Call, idx: int, timeout: float) -> tuple[str, bytes | None] | None:
        if idx in call.results:
            return call.results[idx]
        fut = asyncio.get_running_loop().create_future()
        call.result_waiters[idx].append(fut)
        try:
            return await asyncio.wait_for(fut, timeout) if timeout > 0 else None
        except asyncio.TimeoutError:
            return None
        finally:
            if fut in call.result_waiters.get(idx, []):
                call.result_waiters[idx].remove(fut)

    async def wait_outputs(self, call: Call, after: int, timeout: float, limit: int) -> list:
        out = call.outputs_after(after, limit)
        if out or timeout <= 0 or call.drained:
            return out
        fut = asyncio.get_running_loop().create_future()
        call.output_waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        return call.outputs_after(after, limit)

    # -- web requests (controlplane/proxy.py) -----------------------------------------------------------------------
    def web_enqueue(self, pool: Pool) -> Input:
        """A web request waits for a slot in one of the pool's containers, counted as an input (the autoscaler
        sees it at once); `inp.waiter` resolves with the container. Requests are not stored: they do not
        outlive their HTTP connection."""
        inp = self._web_input(pool)
        self._enqueue(pool, [inp])
        return inp

    @staticmethod
    def _web_input(pool: Pool) -> Input:
        """A request as an input of its pool's web call (never stored); `waiter` gets its container."""
        call = pool.web_call
        if call is None:
            call = pool.web_call = Call(new_id("fc"), pool, "web", None)
        call.next_seq += 1
        inp = Input(call, call.next_seq, None)
        inp.waiter = asyncio.get_running_loop().create_future()
        return inp

    def server_acquire(self, pool: Pool, session: str | None) -> Input | str:
        """A Server request gets a slot now or not at all (Servers have no queue): the least loaded ready
        container, or with a `Modal-Session-ID` the session's container (rendezvous hashing, best effort).
        Returns "none" when no container is ready (a container is started: the caller answers 503) and "full"
        when every container is at `max_concurrency` (429)."""
        ready = [c for c in pool.ready() if c.web_ports]
        if not ready:
            live = pool.live()
            if not live:
                self._scale(pool, policy.Decision(desired=1, current=0, reason="a request at zero"))
            return "none"
        cap = int((pool.server or {}).get("max_concurrency") or 0)
        choice = None
        if session:
            choice = ready[policy.rendezvous(session, [c.id for c in ready])]
            if cap and len(choice.running) >= cap:
                choice = None
        if choice is None:
            low = min(len(c.running) for c in ready)
            if cap and low >= cap:
                return "full"
            least = [c for c in ready if len(c.running) == low]
            self._ties += 1
            choice = least[self._ties % len(least)]  # ties in turn: one request at a time spreads too
        inp = self._web_input(pool)
        # Resolved at once: a container that ends under the request does not put it back in the queue as a
        # function input (_requeue_running); its client gets the 502.
        inp.waiter.set_result(choice)  # type: ignore[union-attr]
        self._assign(choice, inp, time.monotonic())
        target = pool.autoscaler.server_knobs(pool.server or {})["target_concurrency"]
        if target and len(ready) == len(pool.live()) and sum(len(c.running) for c in ready) > len(ready) * target:
            self._scale(pool)  # above target: the autoscaler may want more now, not at the next tick
        return inp

    def web_release(self, inp: Input) -> None:
        """The request is over (answered, failed or abandoned): its slot goes to the next one waiting."""
        inp.call.open.pop(inp.idx, None)
        if inp.waiter is not None and not inp.waiter.done():
            inp.waiter.cancel()  # still queued: _pump skips it
            return
        c = inp.container
        inp.container = None
        if c is None or c.running.pop(inp.key, None) is None:
            return
        pool = c.pool
        if pool.server is None:  # a Server's load is its requests in flight, never weighted by their time
            pool.avg_exec_s = policy.ewma(pool.avg_exec_s, time.monotonic() - inp.dispatched_at)
        if pool.single_use:
            self._stop_container(c, "single-use container finished its request")
        self._slots_freed(c)

    def stats(self, pool: Pool) -> dict[str, int]:
        live = pool.live()
        slots = 1 if pool.single_use else pool.max_inputs
        return {
            "backlog": len(pool.queue),
            "num_total_runners": len(live),
            "num_running_inputs": pool.running_count(),
            "input_headroom": sum(max(0, slots - len(c.running)) for c in live),
        }

    # -- operator actions ------------------------------------------------------------------------------------
    def update_autoscaler(self, pool: Pool, values: dict[str, Any]) -> dict[str, int]:
        """Runtime overrides of the pool's autoscaler knobs, kept until the app is redeployed; takes effect now
        (a higher min_containers starts containers at once). Raises ValueError on bad values."""
        applied = pool.autoscaler.update(pool.options, values, server=pool.server is not None)
        log.info("%s: autoscaler settings updated: %s", pool.tag, applied)
        self._scale(pool)
        return applied

    def _retire_superseded(self, pool: Pool) -> None:
        """Containers of an earlier version of the pool's function take no new inputs: idle ones stop now, busy
        ones once their inputs are done (draining). See controlplane/deploy.py."""
        for cid in list(pool.superseded):
            c = pool.containers.get(cid)
            if c is None:
                pool.superseded.discard(cid)
            elif c.state == "ready" and c.running:
                c.state = "draining"
                c.stop_reason = "replaced by a new version (drained)"
                self._drain_deadline(c)
            elif c.state in ("starting", "ready"):
                self._stop_container(c, "replaced by a new version")

    def _drain_deadline(self, c: Container) -> None:
        """A draining Server container gets `exit_grace_period` seconds for its requests in flight, then it is
        stopped (SIGTERM-like: `@exit` hooks with 30 s, then killed) whether or not they finished."""
        if c.pool.server is None:
            return
        grace = float(c.pool.server.get("exit_grace_period") or 0)

        def end() -> None:
            if c.state == "draining":
                self._stop_container(c, f"{c.stop_reason} after its exit_grace_period of {grace:g}s")

        asyncio.get_running_loop().call_later(grace, end)

    def health_failed(self, c: Container, reason: str) -> None:
        """A Server container whose port stopped answering HEALTH_FAILURES checks in a row: replaced."""
        app = self.apps.get(c.pool.app_id)
        if app is not None:
            app.logs.append(c.id, "system", f"container {c.id} failed its health checks ({reason}); replacing it\n")
        self._stop_container(c, f"failed {c.health_failures} health checks in a row ({reason})", kill=True)
        self._scale(c.pool)

    def start_shell(self, pool: Pool) -> Container:
        """`shoal shell`: a container of the pool's function (image, sandbox, secrets, source) that runs nothing
        until it is stopped, for the CLI to exec a shell into. Its state is "shell": it takes no inputs, the
        autoscaler neither counts nor stops it, and its exit is no failed start of the pool; stopping the app
        (the CLI's session ends) stops it."""
        c = Container(id=new_id("ta"), pool=pool, token=_secrets.token_hex(16), state="shell", shell=True,
                      exited=asyncio.get_running_loop().create_future())
        c.ready_at = time.monotonic()
        pool.containers[c.id] = c
        self.containers[c.id] = c
        task = asyncio.create_task(self._run_container(c))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return c

    def stop_container(self, container_id: str, graceful: bool = False) -> Container | None:
        """`shoal container stop`: the container ends now and its inputs go back to the queue; with `graceful`
        it takes no new inputs and ends once the ones it runs are done."""
        c = self.containers.get(container_id)
        if c is None or c.state in ("stopping", "dead"):
            return c
        if graceful and c.state == "ready" and c.running:
            c.state = "draining"  # neither live nor ready: gets no inputs, and the pool may replace it
            c.stop_reason = "stopped by user (drained)"
            self._drain_deadline(c)
            self._scale(c.pool)
            return c
        busy = bool(c.running)
        self._stop_container(c, "stopped by user")
        if busy and c.handle is not None:
            c.handle.terminate()  # its inputs run elsewhere now
        return c


def phase_timings(t_requested: float, t_launch: float, reported: dict[str, float]) -> dict[str, float]:
    """Where a container's cold start went, in seconds: waiting to be scheduled, building the sandbox and
    starting the process, the interpreter (with shoal's own import), the user's imports, `@enter`. The image is
    built when the app is registered, so it costs containers nothing here."""
    if reported.get("warm"):  # a warm container: sandbox and interpreter were ready before it was asked for
        t_launch = reported.get("t_assigned", t_launch)
        reported = {**reported, "t_exec": t_launch, "t_main": t_launch}
    t_exec = reported.get("t_exec", t_launch)
    t_main = reported.get("t_main", t_exec)
    phases = {
        "schedule": max(0.0, t_launch - t_requested),
        "sandbox": max(0.0, t_exec - t_launch),
        "interpreter": max(0.0, t_main - t_exec),
        "imports": reported.get("imports_s", 0.0),
        "enter": reported.get("enter_s", 0.0),
    }
    phases["total"] = max(0.0, reported.get("t_ready", t_main) - t_requested)
    return phases


def format_timings(t: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {t[k] * 1000:.0f}" for k in ("schedule", "sandbox", "interpreter", "imports", "enter"))
    return f"{t['total'] * 1000:.0f} ms ({parts})"


def pool_timeout(pool: Pool) -> float:
    return float(pool.options.get("timeout") or 300)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "could not be started"
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exited with code {returncode}"


def variant_definition(base: dict[str, Any], params: bytes | None, overrides: dict[str, Any], base_id: str,
                       key: str) -> dict[str, Any]:
    """The definition of a variant pool: its base function's with the option overrides and parameter values
    applied. The overrides are kept, so a redeploy can derive the variant again from the new base."""
    d = copy.deepcopy(base)
    d["options"] = {**d.get("options", {}), **overrides.get("options", {})}
    if overrides.get("extra"):
        d["options"]["extra"] = {**d["options"].get("extra", {}), **overrides["extra"]}
    if "secrets" in overrides:
        d["secrets"] = list(overrides["secrets"])
    d.update(params=params, variant_of=base_id, variant_key=key, variant_overrides=overrides)
    return d


def _canonical(value: Any) -> Any:
    """Maps with sorted keys, so equal overrides hash equally whatever order the client built them in."""
    if isinstance(value, dict):
        return [[k, _canonical(value[k])] for k in sorted(value)]
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _needs_params(definition: dict[str, Any]) -> bool:
    """The base pool of a class with required parameters (its parameter sets get pools of their own)."""
    cls = definition.get("cls")
    return bool(cls) and definition.get("params") is None and any("default" not in p for p in cls["params"])
