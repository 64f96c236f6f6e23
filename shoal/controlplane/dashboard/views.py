"""The dashboard's pages, rendered on the server from the control plane's registry (what runs now), the store
(what ran) and the metrics' recent samples (controlplane/metrics.py). Read-only but for one action: a rollback,
which goes through the API's own rollback route."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import msgpack
import msgspec
from aiohttp import web

from ..._spec import requests as req
from ..metrics import METRICS, container_usage
from ..store import apps as app_rows
from ..store import dashboard as rows
from ..store import dicts as dict_rows
from ..store import objects as object_rows
from ..store import queues as queue_rows
from ..store import secrets as secret_rows
from .html import cards, error_text, esc, link, ms, page, percentile, status_cell, table, when

if TYPE_CHECKING:
    from ..api import Api
    from ..core.model import Container

APPS_SHOWN = 1000
CALLS_SHOWN = 50
INPUTS_SHOWN = 500
FAILURES_SHOWN = 10
LOG_POLL_S = 15.0


def html_response(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers={
        "Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"})



def _path_id(request: web.Request, name: str) -> str:
    """An id from the page's path; one the store could not even look up (PostgreSQL's text holds no NUL) is
    simply not found."""
    value = request.match_info[name]
    if "\x00" in value or len(value) > 256:
        raise web.HTTPNotFound(text=f"no such {name.removesuffix('_id')}")
    return value

class Views:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.core = api.core
        self.registry = api.core.registry
        self.store = api.core.store

    # -- apps ------------------------------------------------------------------------------------------------
    async def apps(self, request: web.Request) -> web.Response:
        recent, total = await asyncio.gather(app_rows.recent(self.store, APPS_SHOWN), rows.count_apps(self.store))
        out = []
        for app_id, name, mode, state, created_at, stopped_at, version in recent:
            live = self.registry.apps.get(app_id)
            fns = ", ".join(sorted(live.functions)) if live else ""
            out.append([link(f"/dashboard/apps/{app_id}", name or app_id), esc(mode), status_cell(state),
                        esc(version or ""), esc(fns), esc(when(created_at)), esc(when(stopped_at))])
        body = cards([("apps", total), ("running", sum(1 for a in self.registry.apps.values())),
                      ("containers", len(self.registry.containers)), ("calls in memory", len(self.registry.calls))])
        shown = f"<p class='dim'>the newest {len(recent)} of {total}</p>" if total > len(recent) else ""
        body += shown + table(["app", "mode", "state", "version", "functions", "created", "stopped"], out, "apps")
        return html_response(page("Apps", body))

    async def app(self, request: web.Request) -> web.Response:
        app_id = _path_id(request, "app_id")
        found = await app_rows.by_id(self.store, app_id)
        if not found:
            raise web.HTTPNotFound(text=f"app {app_id} not found")
        row = found[0]
        live = self.registry.apps.get(app_id)
        history = await app_rows.history(self.store, app_id)
        fn_rows = []
        for function_id, tag in await rows.app_functions(self.store, app_id):
            pool = self.registry.pools.get(function_id)
            kind, extra = "function", ""
            if pool is not None:
                d = pool.definition
                kind = "Server" if d.server else "class" if d.cls else "web function" if d.webhook else "function"
                url = self.core.router.url_for(function_id, None)
                nxt = self.core.scheduler.upcoming(pool) if d.schedule else None
                extra = (link(url, url) if url else "") + (f" next run {esc(when(nxt))}" if nxt else "")
            fn_rows.append([link(f"/dashboard/functions/{function_id}", tag), esc(kind),
                            esc(len(pool.live()) if pool else "stopped"), extra])
        current = self.api.deployments.version_of(app_id) if live else None
        ver_rows = []
        for v in reversed(history):
            button = ""
            if live is not None and live.mode == "deployed" and current and v["version"] < current:
                button = (f'<button class="rollback" data-version="{v["version"]}">roll back to '
                          f'v{v["version"]}</button>')
            note = f" (rollback to v{v['rollback_of']})" if v["rollback_of"] else ""
            ver_rows.append([esc(f"v{v['version']}") + (" <b>current</b>" if v["version"] == current else ""),
                             esc(when(v["created_at"])), esc(v["strategy"] + note), esc(v["tag"]),
                             esc(", ".join(v["functions"])), button])
        body = cards([("state", row["state"]), ("mode", row["mode"]), ("version", current or "-"),
                      ("created", when(row["created_at"]))])
        body += "<h2>Functions</h2>" + table(["function", "kind", "containers", "web URL / schedule"], fn_rows,
                                             "functions")
        body += "<h2>Versions</h2><p id='rollback-result' class='dim'></p>" + table(
            ["version", "deployed", "strategy", "tag", "functions", ""], ver_rows, "versions")
        script = ROLLBACK_JS % json.dumps(f"/dashboard/apps/{app_id}/rollback")
        return html_response(page(f"App {row['name'] or app_id}", body, script))

    async def rollback(self, request: web.Request) -> web.Response:
        """The page's rollback button: the API's own rollback route, called with the API token."""
        app_id = _path_id(request, "app_id")
        try:  # the API's own request type, so its bounds on a version
            version = msgspec.convert(await request.json(), req.Rollback, strict=False).version
        except (msgspec.ValidationError, ValueError):  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
            version = None
        if version is None:
            return web.json_response({"error": "version (an integer) is required"}, status=400)
        url = f"{self.core.containers.address.url}/v1/apps/{quote(app_id, safe='')}/rollback"
        async with aiohttp.ClientSession() as session, session.post(
                url, data=msgpack.packb({"version": version}),
                headers={"Authorization": f"Bearer {self.api.gate.token.decode()}",
                         "Content-Type": "application/msgpack"}) as resp:
            body = msgpack.unpackb(await resp.read(), raw=False)
        return web.json_response(body, status=resp.status)

    # -- a function ------------------------------------------------------------------------------------------
    async def function(self, request: web.Request) -> web.Response:
        function_id = _path_id(request, "function_id")
        pool = self.registry.pools.get(function_id)
        stored = await rows.function_app(self.store, function_id)
        if pool is None and stored is None:
            raise web.HTTPNotFound(text=f"function {function_id} not found")
        tag = pool.tag if pool else stored[1]
        app_id = pool.app_id if pool else stored[0]
        now = time.time()
        calls, per_minute, failures = await asyncio.gather(
            rows.function_calls(self.store, function_id, CALLS_SHOWN),
            rows.calls_per_minute(self.store, function_id, now - 3600),
            rows.failures(self.store, function_id, FAILURES_SHOWN))
        recent = list(METRICS.recent.get(function_id, ()))
        ok = sum(1 for r in recent if r[1] == "success")
        execs = [r[3] for r in recent if r[3]]
        queues = [r[2] for r in recent if r[3]]
        figures = [("inputs (recent)", len(recent)), ("succeeded", ok), ("failed", len(recent) - ok),
                   ("p50 exec", ms(percentile(execs, 0.5))), ("p99 exec", ms(percentile(execs, 0.99))),
                   ("p50 queue", ms(percentile(queues, 0.5))), ("p99 queue", ms(percentile(queues, 0.99)))]
        if pool is not None:
            figures += [("in flight", pool.running_count()), ("queued", len(pool.queue)),
                        ("containers", len(pool.live()))]
        body = f"<p>app {link(f'/dashboard/apps/{app_id}', app_id)}</p>" + cards(figures)
        peak = max((n for _, n in per_minute), default=0)
        body += "<h2>Calls per minute (last hour)</h2>" + table(["minute", "calls", ""], [
            [esc(time.strftime("%H:%M", time.localtime(m * 60))), esc(n),
             f'<span class="bar" style="width:{int(300 * n / peak)}px"></span>'] for m, n in per_minute],
            "calls-per-minute")
        body += "<h2>Recent calls</h2>" + table(["call", "kind", "inputs", "state", "created", "duration"], [
            [link(f"/dashboard/calls/{cid}", cid), esc(kind), esc(n if n is not None else "…"), status_cell(state),
             esc(when(created)), esc(ms(completed - created) if completed else "")]
            for cid, kind, created, n, state, completed in calls], "calls")
        body += "<h2>Recent failures</h2>" + "".join(
            f"<div class='failure'><p>{link(f'/dashboard/calls/{cid}', cid)} input {esc(idx)} "
            f"{status_cell(status)} at {esc(when(t))}</p><pre>{esc(error_text(data))}</pre></div>"
            for cid, idx, status, data, t in failures) if failures else "<p class='dim'>none</p>"
        if pool is not None:
            body += "<h2>Containers</h2>" + containers_table(pool.containers.values())
            auto = pool.autoscaler.describe(pool, time.monotonic())
            last = auto.get("last_decision")
            body += "<h2>Autoscaler</h2>" + table(["setting", "value"], [
                [esc(k), esc(v)] for k, v in auto["settings"].items()], "autoscaler")
            if last:
                body += (f"<p>last decision: <b>{esc(last['desired'])}</b> containers (now {esc(last['current'])})"
                         f" because {esc(last['reason'])}</p>")
            if auto.get("backoff_reason"):
                body += f"<p class='bad'>starts paused: {esc(auto['backoff_reason'])}</p>"
        return html_response(page(f"Function {tag}", body))

    # -- a call ----------------------------------------------------------------------------------------------
    async def call(self, request: web.Request) -> web.Response:
        call_id = _path_id(request, "call_id")
        row = await rows.call_row(self.store, call_id)
        if row is None:
            raise web.HTTPNotFound(text=f"function call {call_id} not found")
        _, function_id, kind, created_at, num_inputs, state, completed_at, method = row
        live = self.registry.calls.get(call_id)
        inputs = await rows.call_inputs(self.store, call_id, INPUTS_SHOWN)
        out = []
        for idx, status, data, finished in inputs:
            open_inp = live.open.get(idx) if live is not None else None
            attempts = (open_inp.attempt + 1) if open_inp is not None else ""
            where = ""
            if open_inp is not None and open_inp.container is not None:
                where = link(f"/dashboard/containers/{open_inp.container.id}", open_inp.container.id)
            shown = status or ("running" if where else None)
            out.append([esc(idx), status_cell(shown), esc(attempts), where,
                        esc(ms(finished - created_at) if finished else ""),
                        f"<pre>{esc(error_text(data))}</pre>" if data else ""])
        body = cards([("kind", kind), ("state", live.state if live else state), ("inputs", num_inputs or "…"),
                      ("done", live.done if live else sum(1 for i in inputs if i[1])),
                      ("created", when(created_at)),
                      ("duration", ms(completed_at - created_at) if completed_at else "")])
        body += (f"<p>function {link(f'/dashboard/functions/{function_id}', function_id)}"
                 f"{' method ' + esc(method) if method else ''}</p>")
        body += "<h2>Inputs</h2>" + table(["index", "status", "attempt", "container", "finished after", "error"],
                                          out, "inputs")
        return html_response(page(f"Call {call_id}", body))

    # -- containers ------------------------------------------------------------------------------------------
    async def containers(self, request: web.Request) -> web.Response:
        body = "<h2>Running</h2>" + containers_table(self.registry.containers.values())
        body += "<h2>Recently ended</h2>" + table(["container", "function", "reason", "detail", "ended"], [
            [esc(e["container_id"]), link(f"/dashboard/functions/{e['function_id']}", e["function"]),
             status_cell(e["reason"]), esc(e["stop_reason"] or e["detail"]), esc(when(e["t"]))]
            for e in reversed(METRICS.exits)], "exits")
        return html_response(page("Containers", body))

    async def container(self, request: web.Request) -> web.Response:
        cid = _path_id(request, "container_id")
        c = self.registry.containers.get(cid)
        ended = next((e for e in reversed(METRICS.exits) if e["container_id"] == cid), None)
        if c is None and ended is None:
            raise web.HTTPNotFound(text=f"container {cid} not found")
        if c is not None:
            usage = container_usage(c)
            figures = [("state", "pending" if c.pending_reason else c.state), ("function", c.pool.tag),
                       ("running inputs", len(c.running)),
                       ("memory", f"{usage[1] / 2**20:.1f} MiB" if usage else "n/a"),
                       ("peak memory", f"{usage[2] / 2**20:.1f} MiB" if usage and usage[2] else "n/a"),
                       ("CPU time", f"{usage[0]:.2f} s" if usage else "n/a")]
            timings = c.timings
        else:
            figures = [("state", "ended"), ("function", ended["function"]), ("reason", ended["reason"]),
                       ("detail", ended["stop_reason"] or ended["detail"])]
            timings = ended["timings"]
        body = cards(figures)
        body += "<h2>Cold start</h2>" + table(["phase", "time"], [[esc(k), esc(ms(v))] for k, v in timings.items()],
                                              "timings")
        entries = []
        app = self.registry.apps.get(c.pool.app_id) if c is not None else None
        if app is not None:
            entries = [e for e in app.logs.entries if e["container_id"] == cid and e["data"]]
        last = app.logs.next_seq - 1 if app is not None else -1
        body += "<h2>Logs</h2><pre id='logs'>" + "".join(esc(e["data"]) for e in entries) + "</pre>"
        script = LOGS_JS % (json.dumps(f"/dashboard/containers/{cid}/logs"), last)
        return html_response(page(f"Container {cid}", body, script))

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the container's new log lines as they arrive, until it stops or the page goes."""
        cid = _path_id(request, "container_id")
        try:  # a reconnecting EventSource says where it was (Last-Event-ID); the page's first request, `after`
            after = int(request.headers.get("Last-Event-ID") or request.query.get("after", "-1"))
        except ValueError:
            after = -1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        while True:
            c = self.registry.containers.get(cid)
            app = self.registry.apps.get(c.pool.app_id) if c is not None else None
            if app is None:
                await resp.write(b"event: end\ndata: {}\n\n")
                break
            entries = await app.logs.wait(after, LOG_POLL_S)
            if entries:
                after = entries[-1]["seq"]
            mine = [e["data"] for e in entries if e["container_id"] == cid and e["data"]]
            payload = json.dumps({"text": "".join(mine)}) if mine else None
            await resp.write(f"id: {after}\ndata: {payload}\n\n".encode() if payload else b": keep-alive\n\n")
        return resp

    # -- web endpoints and Servers ---------------------------------------------------------------------------
    async def web(self, request: web.Request) -> web.Response:
        body = ""
        for pool in [p for p in self.registry.pools.values() if p.is_web]:
            reqs = self.api.proxy.requests_of(pool.function_id, 1000)
            by_status: dict[int, int] = {}
            for r in reqs:
                by_status[r["status"]] = by_status.get(r["status"], 0) + 1
            lat = [r["duration_ms"] / 1000 for r in reqs]
            url = self.core.router.url_for(pool.function_id, None)
            body += f"<h2>{link(f'/dashboard/functions/{pool.function_id}', pool.tag)}</h2>"
            body += f"<p>{link(url, url) if url else ''}</p>" + cards(
                [("requests (recent)", len(reqs)), ("p50", ms(percentile(lat, 0.5))),
                 ("p90", ms(percentile(lat, 0.9))), ("p99", ms(percentile(lat, 0.99)))]
                + [(f"status {s}", n) for s, n in sorted(by_status.items())])
            body += table(["container", "in flight"], [
                [link(f"/dashboard/containers/{c.id}", c.id), esc(len(c.running))] for c in pool.live()])
        return html_response(page("Web endpoints and Servers", body or "<p class='dim'>none running</p>"))

    # -- storage ---------------------------------------------------------------------------------------------
    async def storage(self, request: web.Request) -> web.Response:
        store = self.store
        dicts, queues, volumes, secrets = await asyncio.gather(
            object_rows.list_named(store, "dict"), object_rows.list_named(store, "queue"),
            object_rows.list_named(store, "volume"), secret_rows.list_all(store))
        dict_lens = await asyncio.gather(*(dict_rows.length(store, d.object_id) for d in dicts))
        queue_lens = await asyncio.gather(*(queue_rows.length(store, q.object_id, None) for q in queues))
        partitions = await rows.queue_partitions(store)
        volumes_mod = self.core.volumes
        body = "<h2>Dicts</h2>" + table(["name", "entries", "created"], [
            [esc(d.name), esc(n), esc(when(d.created_at))] for d, n in zip(dicts, dict_lens, strict=True)], "dicts")
        body += "<h2>Queues</h2>" + table(["name", "items (all partitions)", "partitions with items", "created"], [
            [esc(q.name), esc(n), esc(partitions.get(q.object_id, 0)), esc(when(q.created_at))]
            for q, n in zip(queues, queue_lens, strict=True)], "queues")
        body += "<h2>Volumes</h2>" + table(["name", "version", "top-level entries", "created"], [
            [esc(v.name), *(esc(x) for x in volume_version(volumes_mod, v.object_id)), esc(when(v.created_at))]
            for v in volumes], "volumes")
        body += "<h2>Secrets</h2><p class='dim'>names only: values are never shown</p>" + table(
            ["name", "created", "updated"], [[esc(s.name), esc(when(s.created_at)), esc(when(s.updated_at))]
                                             for s in secrets], "secrets")
        return html_response(page("Storage", body))


def volume_version(volumes: Any, volume_id: str) -> tuple[str, str]:
    """(current version, entries at its top level) of a Volume on this machine's disk; blanks when it has none
    yet. Read without creating anything (the volumes part makes version 0 on first use)."""
    d = volumes.storage.dir(volume_id)
    try:
        n = (d / "current").read_text().strip()
        return n, str(len(os.listdir(d / "versions" / n)))
    except OSError:
        return "", ""


def containers_table(containers: Any) -> str:
    now = time.monotonic()
    out = []
    for c in list(containers):
        c: Container
        out.append([link(f"/dashboard/containers/{c.id}", c.id),
                    link(f"/dashboard/functions/{c.pool.function_id}", c.pool.tag),
                    status_cell("pending" if c.pending_reason else c.state), esc(len(c.running)),
                    esc(f"{now - c.created_at:.0f} s"), esc(ms(c.timings.get("total")))])
    return table(["container", "function", "state", "inputs", "age", "cold start"], out, "containers")


ROLLBACK_JS = """
document.querySelectorAll('button.rollback').forEach(function (b) {
  b.addEventListener('click', function () {
    if (!confirm('Roll back to version ' + b.dataset.version + '?')) return;
    fetch(%s, {method: 'POST', credentials: 'same-origin',
      headers: {'Content-Type': 'application/json', 'X-Shoal-Dashboard': '1'},
      body: JSON.stringify({version: parseInt(b.dataset.version, 10)})})
    .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
    .then(function (x) {
      var out = document.getElementById('rollback-result');
      out.textContent = x[0] === 200 ? 'rolled back to v' + x[1].rolled_back_to + ': now version ' + x[1].version +
        ' (reload the page to see it)' : 'error: ' + x[1].error;
    });
  });
});
"""

LOGS_JS = """
(function () {
  var pre = document.getElementById('logs');
  var es = new EventSource(%s + '?after=' + %d);
  es.onmessage = function (ev) {
    var m = JSON.parse(ev.data);
    pre.appendChild(document.createTextNode(m.text));
    pre.scrollTop = pre.scrollHeight;
  };
  es.addEventListener('end', function () { es.close(); });
})();
"""
