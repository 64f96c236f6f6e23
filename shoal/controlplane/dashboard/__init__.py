"""The dashboard and `/metrics`, served by the control plane on its API's address (docs/observability.md).

`mount(app, api)` is the one call api.py makes: it adds `/metrics` (the API token as a bearer token, as every API
route), `POST /v1/dashboard/login` (the API token buys a one-time login link: `shoal dashboard`), and the pages
under `/dashboard/`, which a browser reaches with the session cookie the login link sets instead of the API token
(dashboard/auth.py). Their gate is a middleware placed first: a dashboard request is answered by its page once
its cookie is checked, and never reaches the API's bearer check; every other request passes through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..metrics import METRICS
from ..rest import reply
from .auth import COOKIE, DashboardAuth, cookie_header
from .html import page
from .views import Views, html_response

if TYPE_CHECKING:
    from ..api import Api
    from ..rest import Handler

__all__ = ["mount"]

PREFIX = "/dashboard"
LOOP_LAG_TASK = web.AppKey("shoal_loop_lag", asyncio.Task)


def mount(app: web.Application, api: Api) -> None:
    auth = DashboardAuth()
    views = Views(api)
    r = app.router
    r.add_get("/metrics", metrics)

    async def issue_login(request: web.Request) -> web.Response:
        token = auth.issue_login(time.monotonic())
        return reply({"path": f"{PREFIX}/login?token={token}"})

    async def login(request: web.Request) -> web.Response:
        session = auth.redeem(request.query.get("token", ""), time.monotonic())
        if session is None:
            return html_response(page("Login link expired", "<p>This login link was used already or has expired. "
                                      "Run <code>shoal dashboard</code> for a new one.</p>"), status=403)
        raise web.HTTPSeeOther(f"{PREFIX}/", headers={"Set-Cookie": cookie_header(session)})

    r.add_post("/v1/dashboard/login", issue_login)
    r.add_get(f"{PREFIX}/login", login)
    r.add_get(f"{PREFIX}/", views.apps)
    r.add_get(f"{PREFIX}/apps/{{app_id}}", views.app)
    r.add_post(f"{PREFIX}/apps/{{app_id}}/rollback", views.rollback)
    r.add_get(f"{PREFIX}/functions/{{function_id}}", views.function)
    r.add_get(f"{PREFIX}/calls/{{call_id}}", views.call)
    r.add_get(f"{PREFIX}/containers", views.containers)
    r.add_get(f"{PREFIX}/containers/{{container_id}}", views.container)
    r.add_get(f"{PREFIX}/containers/{{container_id}}/logs", views.container_logs)
    r.add_get(f"{PREFIX}/web", views.web)
    r.add_get(f"{PREFIX}/storage", views.storage)

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return await handler(request)
        if path == f"{PREFIX}/login":
            return await request.match_info.handler(request)
        if not auth.allows(request.cookies.get(COOKIE), time.monotonic()):
            return html_response(page("Not logged in", "<p>Run <code>shoal dashboard</code> for a login link.</p>"),
                                 status=401)
        if request.method != "GET" and request.headers.get("X-Shoal-Dashboard") != "1":
            return web.json_response({"error": "dashboard actions come from its pages"}, status=403)
        if path == PREFIX:
            raise web.HTTPFound(f"{PREFIX}/")
        return await request.match_info.handler(request)

    app.middlewares.insert(0, gate)
    app.on_startup.append(_start_watching(api))
    app.on_cleanup.append(_stop_watching)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(METRICS.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _start_watching(api: Api):  # noqa: ANN202 - an aiohttp startup hook
    async def start(app: web.Application) -> None:
        METRICS.attach(api.core.registry)
        api.core.store.on_commit = METRICS.commit_took
        app[LOOP_LAG_TASK] = asyncio.create_task(METRICS.watch_loop())

    return start


async def _stop_watching(app: web.Application) -> None:
    task = app.get(LOOP_LAG_TASK)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
