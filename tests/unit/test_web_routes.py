"""Labels and URLs of web functions (Modal's rules), and how a request finds its route."""

from __future__ import annotations

import hashlib
import ipaddress
from types import SimpleNamespace

import msgspec

from shoal._spec.definitions import FunctionDefinition
from shoal.controlplane.web_routes import Route, Router, label_address, web_label


def test_labels_follow_modals_rules() -> None:
    assert web_label("shoal", "web-demo", "f", None, dev=False) == "shoal--web-demo-f"
    assert web_label("shoal", "web-demo", "f", None, dev=True) == "shoal--web-demo-f-dev"
    assert web_label("shoal", "My_App", "Server.files", None, dev=False) == "shoal--my-app-server-files"
    assert web_label("shoal", "ignored", "f", "square", dev=True) == "shoal--square-dev"


def test_long_labels_are_cut_to_56_characters_and_a_hash() -> None:
    full = "shoal--" + "a" * 70 + "-f"
    label = web_label("shoal", "a" * 70, "f", None, dev=False)
    assert len(label) == 63
    assert label == full[:56] + "-" + hashlib.sha256(full.encode()).hexdigest()[:6]


def test_label_addresses_are_stable_loopback_addresses_away_from_127_0_0_1() -> None:
    addr = label_address("shoal--web-demo-f-dev")
    assert addr == label_address("shoal--web-demo-f-dev")  # the same after a restart, on any machine
    ip = ipaddress.ip_address(addr)
    assert ip.is_loopback and ip not in ipaddress.ip_network("127.0.0.0/10")
    assert label_address("shoal--web-demo-f-dev", 1) != addr  # the next candidate when two labels collide


def _dispatcher(*apps: tuple[str, str, str, list[dict]]) -> SimpleNamespace:
    """Apps (id, name, mode, [definitions]) as the router reads them from a dispatcher, oldest first."""
    pools, app_states = {}, {}
    for app_id, name, mode, defs in apps:
        functions = {}
        for i, d in enumerate(defs):
            fid = f"fu-{app_id}-{i}"
            functions[d["tag"]] = fid
            pools[fid] = SimpleNamespace(definition=msgspec.convert(d, FunctionDefinition), tag=d["tag"])
        app_states[app_id] = SimpleNamespace(id=app_id, name=name, mode=mode, state="running", functions=functions)
    return SimpleNamespace(apps=app_states, pools=pools)


WEB = {"type": "asgi", "label": None, "requires_proxy_auth": False, "custom_domains": []}


def test_a_newer_app_takes_a_label_over_and_routes_resolve_by_host_or_address() -> None:
    d = _dispatcher(("ap-old", "demo", "ephemeral", [{"tag": "f", "webhook": WEB}]),
                    ("ap-new", "demo", "ephemeral", [{"tag": "f", "webhook": {**WEB, "custom_domains": ["x.example"]}},
                                                     {"tag": "plain", "webhook": None}]))
    router = Router(port=8700)
    seen: list[list[Route]] = []
    router.on_change.append(seen.append)
    router.rebuild(d)
    route = router.by_label["shoal--demo-f-dev"]
    assert route.app_id == "ap-new" and len(router.by_label) == 1 and seen
    assert router.url(route) == f"http://{route.address}:8700"
    assert router.url_for(route.function_id, None) == router.url(route)
    assert router.resolve(None, route.address) is route  # by the address the client connected to
    assert router.resolve(b"shoal--demo-f-dev.localhost:8700", "127.0.0.1") is route  # by Host
    assert router.resolve(b"X.example", "127.0.0.1") is route  # a custom domain
    assert router.resolve(b"nothing.localhost", "127.0.0.1") is None


def test_servers_are_routed_and_authenticated_unless_unauthenticated() -> None:
    server = {"port": 8000, "unauthenticated": False}
    d = _dispatcher(("ap-1", "srv", "deployed", [{"tag": "Api", "server": server, "cls": {"name": "Api"}},
                                                 {"tag": "Open", "server": {**server, "unauthenticated": True},
                                                  "cls": {"name": "Open"}}]))
    router = Router(port=8700)
    router.rebuild(d)
    assert router.by_label["shoal--srv-api"].requires_auth
    assert not router.by_label["shoal--srv-open"].requires_auth
