"""Several control planes on one PostgreSQL schema (`python -m shoal.controlplane --replica`).

Every replica answers the whole API on its own URL; clients list them all (`SHOAL_SERVER_URL=urlA,urlB`) and fail
over to the next on a connection error (every request is safe to repeat). Each running app has exactly one owner
at a time: the replica holding its lease (`leases` row `app:<app_id>`: owner, expiry on the database's clock),
which keeps the app's pools, queues, calls and containers in memory exactly as a single control plane does. The
owner renews its leases every `renew_s`; a lease not renewed for `ttl_s` is free.

- A request for an app this replica does not own is forwarded to the owner's URL (`replicas` table) and its
  answer relayed; a long-poll stays open through the forward. Requests that name no app (Dicts, Queues, secrets,
  volumes, blobs, `create_app`) are served by the replica that receives them, from the shared store.
- Creating an app makes the receiving replica its owner.
- A lease that expired (its replica died or lost the database) is taken by another replica, which rebuilds the
  app from the store exactly as a restarted control plane does (`Recovery.recover_app`): its functions, its
  running calls and their unfinished inputs, queued again; outputs already committed stay, and are what readers
  behind them read next. Containers die with their control plane, so only the inputs that were running when it
  died run again, and only once: each gets its final output once (the new owner sees the committed ones).
- A replica that cannot renew a lease in time lets go of the app before the lease can expire (the margin is
  measured on its own clock from when it sent the renewal: `policy.lease_confirmed_until`), killing the app's
  containers, so two replicas never run one app.
- Schedules fire at the app's owner (controlplane/scheduler.py), so each fires once, and keep firing at the next owner.
- Web endpoints are served by the owner's ingress proxy: the URLs an app's functions get point at it.

The lease rules are pure (`policy.lease_decision`); `store/leases.py` applies them inside the transactions that
change leases, and this module acts on the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
from aiohttp import ClientConnectionError, ClientSession, ClientTimeout, web

from .._spec.headers import IDEMPOTENCY_KEY, RETRY
from . import policy
from .core.model import new_id
from .rest import ApiError
from .store import leases
from .store import replicas as replica_rows

if TYPE_CHECKING:
    from .core.registry import Registry
    from .store import Store

log = logging.getLogger("shoal.replicas")
HOPS_HEADER = "X-Shoal-Forwarded"  # how many replicas a request went through (a forward is served, not re-sent)
MAX_HOPS = 2
APP_PREFIX = "app:"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_APP_PATH = re.compile(r"^/v1/apps/(ap-[^/]+)/(functions|stop|logs)$")
_APP_REF_PATH = re.compile(r"^/v1/apps/([^/]+)/(info|history|rollback)$")
_FUNCTION_PATH = re.compile(r"^/v1/functions/(fu-[^/]+)(/.*)?$")
_CALL_PATH = re.compile(r"^/v1/calls/(fc-[^/]+)(/.*)?$")
_CONTAINER_PATH = re.compile(r"^/v1/containers/([^/]+)(/.*)?$")


def replica_settings() -> tuple[float, float]:
    """(ttl_s, renew_s): how long a lease lasts unrenewed, how often it is renewed."""
    ttl = float(os.environ.get("SHOAL_LEASE_TTL_S", "5"))
    renew = float(os.environ.get("SHOAL_LEASE_RENEW_S", str(min(1.0, ttl / 4))))
    if ttl <= 0 or renew <= 0 or renew * 2 > ttl:
        raise ValueError(f"SHOAL_LEASE_RENEW_S ({renew:g}) must be positive and at most half of "
                         f"SHOAL_LEASE_TTL_S ({ttl:g})")
    return ttl, renew


def app_fence(replica_id: str, app_id: str) -> tuple[str, str]:
    """What a write for the app checks in the database: this replica still holds its lease."""
    return APP_PREFIX + app_id, replica_id


class Takeover(Protocol):
    """How apps come and go here (controlplane/core/recovery.py)."""

    async def recover_app(self, app_id: str) -> bool: ...
    def release_app(self, app_id: str, reason: str) -> None: ...


class Replicas:
    def __init__(self, store: Store, registry: Registry, takeover: Takeover, replica_id: str | None = None,
                 ttl_s: float | None = None, renew_s: float | None = None) -> None:
        self.registry = registry
        self.takeover = takeover
        self.store: Any = store  # a PostgresStore with shared=True
        self.id = replica_id or new_id("cp")
        default_ttl, default_renew = replica_settings()
        self.ttl_s = ttl_s or default_ttl
        self.renew_s = renew_s or default_renew
        self.margin_s = max(self.renew_s, self.ttl_s / 4)
        self.url = ""
        self.web_url = ""
        self.confirmed: dict[str, float] = {}  # app_id -> monotonic time until which its lease may be acted on
        self.taking: dict[str, asyncio.Future] = {}  # app_id -> resolved once its takeover is done
        self.on_takeover: list[Callable[[str], Any]] = []
        self._app_of_function: dict[str, str] = {}
        self._app_of_call: dict[str, str] = {}
        self._owner_cache: dict[str, tuple[str, float]] = {}  # app_id -> (owner's URL, until)
        self._session: ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.takeovers = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self, url: str, web_url: str = "") -> None:
        """Register this replica (its URL, for forwards) and start renewing; free apps are taken over by the
        loop's first pass."""
        self.url, self.web_url = url, web_url
        await replica_rows.register(self.store, self.id, url, web_url, os.getpid())
        self._session = ClientSession(timeout=ClientTimeout(total=None, sock_connect=5))
        await self.pass_once()
        if self._tasks:
            await asyncio.wait(set(self._tasks))  # the apps free at start are this replica's before it answers
        self._task = asyncio.create_task(self._loop())

    async def others_alive(self) -> bool:
        return await replica_rows.others_alive(self.store, self.id, self.ttl_s)

    async def close(self) -> None:
        """A clean stop: its containers are already gone; hand every app over at once (no lease to wait out)."""
        if self._task is not None:
            self._task.cancel()
        try:
            await replica_rows.leave(self.store, self.id)
        except Exception as exc:  # noqa: BLE001 - the leases expire anyway
            log.warning("could not hand over leases at stop: %s", exc)
        if self._session is not None:
            await self._session.close()

    # -- leases ----------------------------------------------------------------------------------------------
    def owns(self, app_id: str) -> bool:
        """This replica may act for the app now (its lease is confirmed and not about to expire)."""
        until = self.confirmed.get(app_id)
        return until is not None and time.monotonic() < until and app_id in self.registry.apps

    async def claim_new(self, app_id: str) -> None:
        """A freshly created app (nobody else knows its id yet): this replica owns it."""
        sent = time.monotonic()
        await leases.claim(self.store, APP_PREFIX + app_id, self.id, self.ttl_s)
        self.confirmed[app_id] = policy.lease_confirmed_until(sent_at=sent, ttl_s=self.ttl_s, margin_s=self.margin_s)

    async def forget(self, app_id: str) -> None:
        """The app stopped (its state is committed): its lease goes."""
        self.confirmed.pop(app_id, None)
        try:
            await leases.release(self.store, APP_PREFIX + app_id, self.id)
        except Exception as exc:  # noqa: BLE001 - it expires anyway, and nobody takes a stopped app
            log.warning("could not drop the lease of %s: %s", app_id, exc)

    async def take_over(self, app_id: str) -> bool:
        """Take the app if its lease is free and rebuild it from the store; True when this replica owns it now.
        Concurrent callers for one app wait for the same takeover."""
        if self.owns(app_id):
            return True
        pending = self.taking.get(app_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut = asyncio.get_running_loop().create_future()
        self.taking[app_id] = fut
        ok = False
        try:
            sent = time.monotonic()
            decision = await leases.take(self.store, app_id, APP_PREFIX + app_id, self.id, self.ttl_s)
            if decision is not None and decision.action in ("take", "renew"):
                self.confirmed[app_id] = policy.lease_confirmed_until(sent_at=sent, ttl_s=self.ttl_s,
                                                                      margin_s=self.margin_s)
                if app_id not in self.registry.apps:
                    t0 = time.monotonic()
                    if await self.takeover.recover_app(app_id):
                        self.takeovers += 1
                        log.warning("took over app %s (%.0f ms to rebuild it from the store)", app_id,
                                    (time.monotonic() - t0) * 1000)
                        for callback in self.on_takeover:
                            callback(app_id)
                ok = app_id in self.registry.apps
                if not ok:
                    self.confirmed.pop(app_id, None)
                    await self.forget(app_id)
        except Exception:
            log.exception("taking over app %s failed", app_id)
        finally:
            self.taking.pop(app_id, None)
            fut.set_result(ok)
        return ok

    async def pass_once(self) -> None:
        """Heartbeat and renew the leases of the apps held; let go of those not confirmed in time; take over the
        running apps whose lease is free."""
        sent = time.monotonic()
        held = {APP_PREFIX + a for a in self.confirmed} | {APP_PREFIX + a for a in self.taking}
        try:
            # Bounded: however long the database takes, the leases this replica can no longer vouch for are let
            # go of in time (below).
            renewed, free = await asyncio.wait_for(
                asyncio.shield(leases.renew(self.store, self.id, held, self.ttl_s, APP_PREFIX)),
                timeout=self.ttl_s - self.margin_s)
        except Exception as exc:  # noqa: BLE001 - the database is unreachable: leases lapse below
            log.warning("could not renew leases: %s", exc)
            renewed, free = set(), []
        until = policy.lease_confirmed_until(sent_at=sent, ttl_s=self.ttl_s, margin_s=self.margin_s)
        for key in renewed:
            app_id = key[len(APP_PREFIX):]
            if app_id in self.confirmed:  # (not forgotten meanwhile: stopped)
                self.confirmed[app_id] = max(until, self.confirmed[app_id])
        now = time.monotonic()
        for app_id in list(self.registry.apps):
            if app_id not in self.taking and (app_id not in self.confirmed or self.confirmed[app_id] <= now):
                self.confirmed.pop(app_id, None)
                self.takeover.release_app(app_id, "its lease could not be renewed in time")
        for app_id in free:
            if app_id not in self.registry.apps and app_id not in self.taking:
                # In a task of its own: rebuilding a big app must not hold up the next renewal.
                task = asyncio.create_task(self.take_over(app_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                await self.pass_once()
            except Exception:  # noqa: BLE001 - the loop must go on
                log.exception("replica pass failed")

    # -- where requests go -----------------------------------------------------------------------------------
    async def locate(self, app_id: str) -> str | None:
        """Where a request for the app is served: None here (this replica owns it, has just taken it over, or
        the app is not running: the handlers answer from the store), else the owner's URL."""
        if self.owns(app_id):
            return None
        if app_id in self.taking:
            await asyncio.shield(self.taking[app_id])
            return None
        cached = self._owner_cache.get(app_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        where, url = await leases.locate(self.store, app_id, APP_PREFIX + app_id, self.id, self.ttl_s)
        if where == "none":
            return None
        if where == "remote" and url:
            self._owner_cache[app_id] = (str(url), time.monotonic() + self.renew_s)
            return str(url)
        await self.take_over(app_id)  # free (or ours but not in memory): take it now rather than at the next pass
        if self.owns(app_id):
            return None
        return await self.locate_again(app_id)

    async def locate_again(self, app_id: str) -> str | None:
        return await leases.holder_url(self.store, APP_PREFIX + app_id, self.id)

    async def app_of(self, request: web.Request) -> str | None:
        """The app a request is about, when it is about one that runs (else None: served here)."""
        path = request.path
        if (m := _APP_PATH.match(path)) is not None:
            return m.group(1)
        if (m := _FUNCTION_PATH.match(path)) is not None:
            return await self._function_app(m.group(1))
        if (m := _CALL_PATH.match(path)) is not None:
            return await self._call_app(m.group(1))
        if path == "/v1/functions/lookup":
            return await self._app_by_name(request.query.get("app_name", ""), deployed_only=False)
        if path in ("/v1/apps/deploy", "/v1/apps/lookup") and request.method == "POST":
            try:
                body = msgpack.unpackb(await request.read(), raw=False) or {}
                name = body.get("name") if isinstance(body, dict) else None
            except Exception:  # noqa: BLE001 - the handler reports a malformed body
                return None
            if not isinstance(name, str) or not name:
                return None
            if name.startswith("ap-"):
                return name
            return await self._app_by_name(name, deployed_only=True)
        if (m := _APP_REF_PATH.match(path)) is not None:
            ref = m.group(1)
            return ref if ref.startswith("ap-") else await self._app_by_name(ref, deployed_only=False)
        return None

    async def _function_app(self, function_id: str) -> str | None:
        pool = self.registry.pools.get(function_id)
        if pool is not None:
            return pool.app_id
        app_id = self._app_of_function.get(function_id)
        if app_id is None:
            app_id = await replica_rows.app_of_function(self.store, function_id)
            if app_id is None:
                return None
            self._app_of_function[function_id] = app_id
        return app_id

    async def _call_app(self, call_id: str) -> str | None:
        call = self.registry.calls.get(call_id)
        if call is not None:
            return call.pool.app_id
        app_id = self._app_of_call.get(call_id)
        if app_id is None:
            app_id = await replica_rows.app_of_call(self.store, call_id)
            if app_id is None:
                return None
            if len(self._app_of_call) > 100_000:
                self._app_of_call.clear()
            self._app_of_call[call_id] = app_id
        return app_id

    async def _app_by_name(self, name: str, deployed_only: bool) -> str | None:
        """The running app a name means: the deployed one, else (`deployed_only=False`) the newest running."""
        rows = await replica_rows.running_apps_named(self.store, name)
        deployed = [r[0] for r in rows if r[1] == "deployed"]
        if deployed:
            return deployed[0]
        return None if deployed_only or not rows else rows[0][0]

    # -- the middleware --------------------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        hops = _hops(request)
        if request.path == "/v1/containers" and request.method == "GET" and hops == 0:
            return await self._all_containers(request, handler)
        if (m := _CONTAINER_PATH.match(request.path)) is not None and hops == 0 \
                and m.group(1) not in self.registry.containers:
            return await self._container_anywhere(request, handler)
        app_id = await self.app_of(request)
        if app_id is None:
            return await handler(request)
        deadline = time.monotonic() + self.ttl_s + 3 * self.renew_s + 5
        while True:
            url = await self.locate(app_id)
            if url is None:
                resp = await handler(request)
                if app_id in self.registry.apps or self.owns(app_id) or time.monotonic() > deadline \
                        or not await self._still_running(app_id):
                    return resp
                continue  # it moved to another replica while this request was being served: ask there
            if hops >= MAX_HOPS:
                raise ApiError(503, f"app {app_id} is changing owner; try again", "ConnectionError")
            try:
                return await self.forward(request, url, hops + 1)
            except (ClientConnectionError, OSError, asyncio.TimeoutError) as exc:
                self._owner_cache.pop(app_id, None)
                # Its owner is gone: wait for its lease to expire, then take it over (locate does).
                if time.monotonic() > deadline:
                    raise ApiError(503, f"the control plane owning app {app_id} ({url}) is unreachable: {exc}",
                                   "ConnectionError") from exc
                await asyncio.sleep(min(0.2, self.renew_s))

    async def _still_running(self, app_id: str) -> bool:
        return await replica_rows.app_state(self.store, app_id) == "running"

    async def forward(self, request: web.Request, url: str, hops: int) -> web.Response:
        """Send the request to another replica and relay its answer (API bodies are bounded msgpack)."""
        assert self._session is not None
        body = await request.read()
        headers = {HOPS_HEADER: str(hops)}
        for name in ("Authorization", "Content-Type", IDEMPOTENCY_KEY, RETRY):
            if name in request.headers:
                headers[name] = request.headers[name]
        async with self._session.request(request.method, url + request.path_qs, data=body or None,
                                         headers=headers) as resp:
            data = await resp.read()
            return web.Response(body=data, status=resp.status,
                                content_type=resp.content_type or "application/msgpack")

    async def _all_containers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """`GET /v1/containers`: every replica's containers."""
        resp = await handler(request)
        if not isinstance(resp, web.Response) or resp.status != 200 or resp.body is None:
            return resp
        merged = msgpack.unpackb(resp.body, raw=False)  # type: ignore[arg-type]
        for url in await replica_rows.peers(self.store, self.id, self.ttl_s):
            try:
                other = await self.forward(request, url, MAX_HOPS)
            except (ClientConnectionError, OSError, asyncio.TimeoutError):
                continue
            if other.status == 200 and other.body is not None:
                merged["containers"] += msgpack.unpackb(other.body, raw=False).get("containers", [])  # type: ignore[arg-type]
        return web.Response(body=msgpack.packb(merged, use_bin_type=True), content_type="application/msgpack")

    async def _container_anywhere(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A container this replica does not run: the replica that runs it answers (else this one, from what
        it knows)."""
        for url in await replica_rows.peers(self.store, self.id, self.ttl_s):
            try:
                resp = await self.forward(request, url, MAX_HOPS)
            except (ClientConnectionError, OSError, asyncio.TimeoutError):
                continue
            if resp.status != 404:
                return resp
        return await handler(request)


def _hops(request: web.Request) -> int:
    try:
        return int(request.headers.get(HOPS_HEADER, "0"))
    except ValueError:
        return 0
