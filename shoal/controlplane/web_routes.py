"""Which web function answers a request: labels, URLs and the routing table.

A web function's label follows Modal's rules (`<workspace>--<app>-<function>`, or `<workspace>--<label>`,
`-dev` for ephemeral apps, cut to 63 characters with a hash). Its URL needs no DNS set-up: each label gets its
own loopback address, `http://127.A.B.C:PORT/` (derived from the label, so it is stable across restarts), which
curl, Python, browsers and containers (through their forwarded loopback) all reach, and root-relative links work.
Browsers may also use `http://<label>.localhost:PORT/`; with `SHOAL_WEB_DOMAIN` set, URLs are
`http://<label>.<domain>` for a wildcard DNS name pointing at the proxy.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .rest import ApiError

if TYPE_CHECKING:
    from .._spec.definitions import FunctionDefinition
    from .core.registry import Registry

MAX_LABEL = 63
WORKSPACE = os.environ.get("SHOAL_WORKSPACE", "shoal")


def web_label(workspace: str, app_name: str, function_name: str, label: str | None, dev: bool) -> str:
    """Modal's label: `<workspace>--<label or app-function>[-dev]`, lower-case, at most 63 characters (longer
    ones are cut to 56 and end in `-` and 6 hex digits of the full label's SHA-256)."""
    base = label or f"{app_name}-{function_name}"
    base = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")
    full = f"{workspace}--{base}{'-dev' if dev else ''}"
    if len(full) > MAX_LABEL:
        full = f"{full[:56]}-{hashlib.sha256(full.encode()).hexdigest()[:6]}"
    return full


def label_address(label: str, attempt: int = 0) -> str:
    """The label's loopback address, in 127.64.0.0–127.127.255.255 (127.0.0.1 stays the control plane's)."""
    h = hashlib.sha256(f"{label}#{attempt}".encode() if attempt else label.encode()).digest()
    return f"127.{64 + h[0] % 64}.{h[1]}.{h[2] or 1}"


@dataclass
class Route:
    label: str
    address: str
    app_id: str
    app_name: str | None
    function_id: str  # the base pool (a class's parameter sets get pools of their own, per request)
    method: str | None  # the web method of a class, None for a web function
    requires_auth: bool  # a proxy auth token is needed (`requires_proxy_auth`; a Server unless unauthenticated)
    app_mode: str  # the holder's mode: only an app of the same name and mode takes a label over


class WebTarget(NamedTuple):
    method: str | None
    label: str | None
    custom_domains: list[str]
    requires_auth: bool


def web_targets(d: FunctionDefinition) -> list[WebTarget]:
    """Each web target of a function: the function itself, or a class's web methods."""
    if d.server is not None:  # @app.server: authenticated unless `unauthenticated=True`
        return [WebTarget(None, None, [], not d.server.unauthenticated)]
    if d.webhook is not None:
        return [WebTarget(None, d.webhook.label, d.webhook.custom_domains, d.webhook.requires_proxy_auth)]
    methods = d.cls.methods if d.cls is not None else {}
    return [WebTarget(name, m.webhook.label, m.webhook.custom_domains, m.webhook.requires_proxy_auth)
            for name, m in methods.items() if m.webhook is not None]


def function_name(d: FunctionDefinition, method: str | None) -> str:
    if method is not None:
        return f"{d.cls.name if d.cls is not None else d.tag}-{method}"
    return d.tag


def labels_of(app_name: str | None, mode: str, d: FunctionDefinition) -> list[tuple[WebTarget, str]]:
    """Each web target of a function of an app (its name, its mode) with its label."""
    return [(target, web_label(WORKSPACE, app_name or d.module or "app", function_name(d, target.method),
                               target.label, dev=mode == "ephemeral"))
            for target in web_targets(d)]


class Router:
    """label → route, rebuilt from the running apps whenever their functions change. A label (or custom domain)
    belongs to the app that holds it: another app claiming it is refused at registration (`check_claims`); a
    new version of the same app (same name: a redeploy, a newer `shoal serve`) takes it over, which is why apps
    are visited oldest first."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.domain = os.environ.get("SHOAL_WEB_DOMAIN") or ""
        self.by_label: dict[str, Route] = {}
        self.by_address: dict[str, Route] = {}
        self.by_host: dict[str, Route] = {}  # custom domains
        self.on_change: list[Any] = []  # callbacks(routes) — the proxy opens listeners for new addresses

    def rebuild(self, running: Registry) -> None:
        by_label: dict[str, Route] = {}
        by_host: dict[str, Route] = {}
        for app in list(running.apps.values()):
            if app.state != "running":
                continue
            for function_id in app.functions.values():
                pool = running.pools.get(function_id)
                if pool is None or pool.definition.variant_of:
                    continue
                for target, label in labels_of(app.name, app.mode, pool.definition):
                    route = Route(label, "", app.id, app.name, function_id, target.method, target.requires_auth,
                                  app.mode)
                    by_label[label] = route
                    for domain in target.custom_domains:
                        by_host[domain.lower()] = route
        used: set[str] = set()
        for label in sorted(by_label):
            attempt = 0
            while (addr := label_address(label, attempt)) in used:
                attempt += 1
            used.add(addr)
            by_label[label].address = addr
        self.by_label = by_label
        self.by_address = {r.address: r for r in by_label.values()}
        self.by_host = by_host
        for callback in self.on_change:
            callback(list(by_label.values()))

    def check_claims(self, app_id: str | None, app_name: str | None, mode: str,
                     defs: list[FunctionDefinition]) -> None:
        """Refuse (409, naming the holder) definitions of an app whose web label or custom domain another live
        app holds; the same app, or a new run of it (same name and mode: a newer `shoal serve`), may take its
        own labels."""
        for d in defs:
            for target, label in labels_of(app_name, mode, d):
                claims = [(f"web label {label!r}", self.by_label.get(label))]
                claims += [(f"custom domain {domain!r}", self.by_host.get(domain.lower()))
                           for domain in target.custom_domains]
                for what, holder in claims:
                    if holder is not None and holder.app_id != app_id and (
                            holder.app_name is None or holder.app_name != app_name or holder.app_mode != mode):
                        raise ApiError(409, f"function {d.tag!r} cannot take the {what}: app "
                                            f"{holder.app_name or '(unnamed)'} ({holder.app_id}) holds it. Give it "
                                            "another label, or stop that app first", "AlreadyExistsError")

    def url(self, route: Route) -> str:
        if self.domain:
            return f"http://{route.label}.{self.domain}" + (f":{self.port}" if self.port != 80 else "")
        return f"http://{route.address}:{self.port}"

    def url_for(self, function_id: str, method: str | None) -> str | None:
        for route in self.by_label.values():
            if route.function_id == function_id and (method is None or route.method == method):
                return self.url(route)
        return None

    def resolve(self, host: bytes | None, local_address: str) -> Route | None:
        """The route of a request: by its Host (`<label>.localhost`, `<label>.<domain>`, a custom domain), else
        by the loopback address it came to."""
        if host:
            name = host.decode("latin-1").rsplit(":", 1)[0].lower() if not host.startswith(b"[") else ""
            route = self.by_host.get(name)
            if route is not None:
                return route
            first, _, rest = name.partition(".")
            if rest and (rest == "localhost" or rest == self.domain) and first in self.by_label:
                return self.by_label[first]
        return self.by_address.get(local_address)
