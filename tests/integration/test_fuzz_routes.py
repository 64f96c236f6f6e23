"""Every route of the control plane's API, fuzzed (hypothesis): generated bodies (wrong types, huge ints, NaN,
nested lists and maps, long and unicode strings, bytes that are no msgpack) and queries, on real and made-up
ids. No answer is a 5xx and none hangs; afterwards the control plane is healthy, runs a call, and comes up
again after a SIGKILL. The answers are counted by status and printed (`pytest -s`)."""

from __future__ import annotations

import collections
import http.client
import json
import re
import string
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import msgpack
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shoal
from shoal._client.transport import get_client
from shoal._spec import definitions as defs
from shoal._spec import requests as req

from ..conftest import ControlPlane

CONTROLPLANE = Path(shoal.__file__).parent / "controlplane"
MAX_EXAMPLES = 800
HANG_S = 70.0  # the longest any route may wait is MAX_WAIT_S (50 s); the fuzz asks for waits of 0.1 s at most

# (method, path, body type, query type): every route but POST /v1/shutdown (it ends the control plane).
ROUTES: list[tuple[str, str, Any, Any]] = [
    ("GET", "/v1/health", None, None),
    ("HEAD", "/v1/blobs/{sha}", None, None),
    ("PUT", "/v1/blobs/{sha}", "raw", None),
    ("GET", "/v1/apps", None, None),
    ("POST", "/v1/apps", req.CreateApp, None),
    ("POST", "/v1/apps/{app_id}/functions", req.RegisterFunctions, None),
    ("POST", "/v1/apps/{app_id}/stop", None, None),
    ("GET", "/v1/apps/{app_id}/logs", None, req.LogsQuery),
    ("POST", "/v1/functions/{function_id}/calls", req.CreateCall, None),
    ("POST", "/v1/functions/{function_id}/variants", req.CreateVariant, None),
    ("GET", "/v1/functions/lookup", None, req.FunctionLookupQuery),
    ("GET", "/v1/functions/{function_id}/stats", None, None),
    ("GET", "/v1/functions/{function_id}/web_url", None, req.WebUrlQuery),
    ("GET", "/v1/functions/{function_id}/requests", None, req.RequestsQuery),
    ("POST", "/v1/calls/{call_id}/inputs", req.AddInputs, None),
    ("GET", "/v1/calls/{call_id}/outputs", None, req.OutputsQuery),
    ("GET", "/v1/calls/{call_id}/result", None, req.ResultQuery),
    ("GET", "/v1/calls/{call_id}", None, None),
    ("POST", "/v1/calls/{call_id}/cancel", req.CancelCall, None),
    ("GET", "/v1/calls/{call_id}/graph", None, None),
    ("POST", "/v1/functions/{function_id}/sessions", req.StartSession, None),
    ("POST", "/v1/functions/{function_id}/sessions/terminate", req.TerminateSession, None),
    ("GET", "/v1/containers", None, None),
    ("GET", "/v1/functions/{function_id}/autoscaler", None, None),
    ("POST", "/v1/functions/{function_id}/autoscaler", req.AutoscalerUpdate, None),
    ("GET", "/v1/containers/{container_id}/logs", None, req.ContainerLogsQuery),
    ("POST", "/v1/containers/{container_id}/stop", req.StopContainer, None),
    ("GET", "/v1/containers/{container_id}", None, None),
    ("POST", "/v1/functions/{function_id}/shell", None, None),
    ("POST", "/v1/apps/deploy", req.Deploy, None),
    ("POST", "/v1/apps/lookup", req.AppLookup, None),
    ("GET", "/v1/apps/{app_ref}/info", None, None),
    ("GET", "/v1/apps/{app_ref}/history", None, None),
    ("POST", "/v1/apps/{app_ref}/rollback", req.Rollback, None),
    ("POST", "/v1/objects", req.ObjectLookup, None),
    ("GET", "/v1/objects", None, req.ObjectsQuery),
    ("DELETE", "/v1/objects/{object_id}", None, None),
    *[("POST", f"/v1/dicts/{{object_id}}/{op}", kind, None) for op, kind in [
        ("get", req.DictKey), ("put", req.DictPut), ("pop", req.DictKey), ("contains", req.DictKey),
        ("update", req.DictUpdate), ("clear", req.Empty), ("len", req.Empty), ("items", req.DictItems)]],
    *[("POST", f"/v1/queues/{{object_id}}/{op}", kind, query) for op, kind, query in [
        ("put", req.QueuePut, None), ("get", req.QueueGet, None), ("len", req.QueueLen, None),
        ("clear", req.QueueClear, None), ("peek", req.QueuePeek, req.PeekQuery)]],
    ("GET", "/v1/secrets", None, None),
    ("POST", "/v1/secrets", req.CreateSecret, None),
    ("POST", "/v1/secrets/{name}/update", req.UpdateSecret, None),
    ("DELETE", "/v1/secrets/{name}", None, None),
    ("POST", "/v1/proxy-tokens", req.CreateProxyToken, None),
    ("GET", "/v1/proxy-tokens", None, None),
    ("DELETE", "/v1/proxy-tokens/{token_id}", None, None),
    ("POST", "/v1/proxy-tokens/{token_id}/allow", req.ProxyTokenApp, None),
    ("POST", "/v1/proxy-tokens/{token_id}/revoke", req.ProxyTokenApp, None),
    ("GET", "/v1/images", None, None),
    ("DELETE", "/v1/images/{image_id}", None, None),
    ("POST", "/v1/images/prune", req.PruneImages, None),
    ("POST", "/v1/volumes/rename", req.RenameVolume, None),
    ("GET", "/v1/volumes/{volume_id}/entries", None, req.EntriesQuery),
    ("GET", "/v1/volumes/{volume_id}/file", None, req.FileQuery),
    ("POST", "/v1/volumes/{volume_id}/remove", req.RemovePath, None),
    ("POST", "/v1/volumes/{volume_id}/copy", req.CopyPaths, None),
    ("POST", "/v1/volumes/{volume_id}/uploads", None, None),
    ("PUT", "/v1/volumes/{volume_id}/uploads/{upload_id}/{index}", "raw", None),
    ("POST", "/v1/volumes/{volume_id}/uploads/{upload_id}/commit", req.CommitUpload, None),
    ("POST", "/v1/volumes/{volume_id}/commit", req.ContainerVolume, None),
    ("POST", "/v1/volumes/{volume_id}/reload", req.ContainerVolume, None),
    ("POST", "/v1/sandboxes", req.SandboxCreate, None),
    ("GET", "/v1/sandboxes", None, None),
    ("GET", "/v1/sandboxes/by-name", None, req.SandboxByName),
    ("GET", "/v1/sandboxes/{sandbox_id}", None, None),
    ("GET", "/v1/sandboxes/{sandbox_id}/wait", None, req.SandboxWait),
    ("POST", "/v1/sandboxes/{sandbox_id}/terminate", None, None),
    ("PUT", "/v1/sandboxes/{sandbox_id}/tags", req.SandboxTags, None),
    ("GET", "/v1/sandboxes/{sandbox_id}/output", None, req.StreamRead),
    ("POST", "/v1/sandboxes/{sandbox_id}/stdin", req.StreamWrite, None),
    ("POST", "/v1/sandboxes/{sandbox_id}/exec", req.ExecCreate, None),
    ("GET", "/v1/sandboxes/{sandbox_id}/tunnels", None, None),
    ("POST", "/v1/sandboxes/{sandbox_id}/fs/{op}", req.FsOp, None),
    ("POST", "/v1/sandboxes/{sandbox_id}/snapshot", None, None),
    ("POST", "/v1/sandboxes/{sandbox_id}/reload-volumes", None, None),
    ("GET", "/v1/execs/{exec_id}/output", None, req.StreamRead),
    ("POST", "/v1/execs/{exec_id}/stdin", req.StreamWrite, None),
    ("GET", "/v1/execs/{exec_id}/wait", None, req.SandboxWait),
    ("GET", "/metrics", None, None),
    # The image registry Ray nodes pull from (the admin token is accepted there too).
    ("GET", "/v2/", None, None),
    ("GET", "/v2/{repo}/manifests/{reference}", None, None),
    ("GET", "/v2/{repo}/blobs/{digest}", None, None),
    ("GET", "/v2/{repo}/tags/list", None, None),
    ("POST", "/v1/dashboard/login", None, None),
    # The dashboard's pages, with its session cookie (logged in first).
    ("GET", "/dashboard/login", None, "token"),
    ("GET", "/dashboard/", None, None),
    ("GET", "/dashboard/apps/{app_id}", None, None),
    ("POST", "/dashboard/apps/{app_id}/rollback", "json", None),
    ("GET", "/dashboard/functions/{function_id}", None, None),
    ("GET", "/dashboard/calls/{call_id}", None, None),
    ("GET", "/dashboard/containers", None, None),
    ("GET", "/dashboard/containers/{container_id}", None, None),
    ("GET", "/dashboard/containers/{container_id}/logs", None, "after"),  # a live container's streams: made-up ids
    ("GET", "/dashboard/web", None, None),
    ("GET", "/dashboard/storage", None, None),
]


def _declared_routes() -> set[tuple[str, str]]:
    """Every route the control plane's modules add to the router, read from their source."""
    found = set()
    adder = re.compile(r'add_(get|post|put|delete)\(f?"((?:/v1/|/v2/|/metrics|\{PREFIX\})[^"]*)"'
                       r'|add_route\("(HEAD)", f?"(/v1/[^"]+)"')
    for path in CONTROLPLANE.rglob("*.py"):
        text = path.read_text()
        for m in adder.finditer(text):
            method, route = (m.group(1) or m.group(3)).upper(), m.group(2) or m.group(4)
            route = route.replace("{{", "{").replace("}}", "}").replace("{PREFIX}", "/dashboard").replace(":.+}", "}")
            prefix = text.rfind("for op in (", 0, m.start())
            if "{op}" in route and prefix >= 0:  # objects.py: one route per operation, from a tuple on the same line
                line = text[m.start():text.index("\n", m.start())]
                ops = re.findall(r'"(\w+)"', text[prefix:text.index(")", prefix)])
                found.update((method, route.replace("{op}", op)) for op in ops)
                assert line
            else:
                found.add((method, route))
    return found


def test_the_fuzz_covers_every_route() -> None:
    assert {(m, p) for m, p, *_ in ROUTES} | {("POST", "/v1/shutdown")} == _declared_routes()


# -- what the fuzz sends ----------------------------------------------------------------------------------------
_INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_WORDS = st.sampled_from(["", "x", "a" * 65, "dict", "queue", "volume", "rolling", "recreate", "remote", "map",
                          "spawn", "gen", "fc-x", "ap-x", "fu-x", "/", "../..", "a\x00b", "é漢🙂", "1e23", "nan",
                          "-1", str(2**63), "true"])
_SCALAR = st.one_of(st.none(), st.booleans(), _INT, st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=40), st.binary(max_size=40), _WORDS, st.just("x" * 100_000))
_ANY = st.recursive(_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=12), _INT), inner, max_size=4)),
    max_leaves=12)
_WAIT = st.one_of(_ANY, st.floats(min_value=0.0, max_value=0.1))  # valid waits stay short: the fuzz never idles


def _fields(kind: Any) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(kind)]


def _map_of(names: list[str], values: dict[str, Any] | None = None) -> st.SearchStrategy[dict[Any, Any]]:
    """Maps with some of these keys (each with a value of any type) and maybe some others."""
    values = values or {}
    known = st.fixed_dictionaries({}, optional={n: values.get(n, _ANY) for n in names})
    return st.builds(lambda a, b: {**b, **a}, known, st.dictionaries(st.text(max_size=12), _ANY, max_size=2))


_DEFINITION = _map_of(_fields(defs.FunctionDefinition), {
    "tag": st.one_of(_WORDS, _ANY), "serialized_fn": st.one_of(st.just(b"x"), _ANY),
    "options": st.one_of(_map_of(_fields(defs.Options)), _ANY),
    "schedule": st.one_of(_map_of(["type", *_fields(defs.PeriodSchedule), "cron_string", "timezone"],
                                  {"type": st.sampled_from(["period", "cron", "x"])}), _ANY),
    "webhook": st.one_of(_map_of(_fields(defs.WebhookConfig)), _ANY),
    "cls": st.one_of(_map_of(_fields(defs.ClsInfo)), _ANY),
})
_SPECIAL: dict[str, st.SearchStrategy[Any]] = {
    "timeout": _WAIT, "wait": _WAIT, "functions": st.one_of(st.lists(_DEFINITION, max_size=2), _ANY),
    "options": st.one_of(_map_of(["options", "extra", "secrets"], {"options": _map_of(_fields(defs.Options))}),
                         _ANY),
}


def _body(kind: Any) -> st.SearchStrategy[bytes]:
    if kind == "raw":
        return st.binary(max_size=2000)
    if kind == "json":
        as_json = st.dictionaries(st.sampled_from(["version", "x"]), _SCALAR.filter(
            lambda v: not isinstance(v, bytes)), max_size=2)  # (floats: NaN and Infinity as JSON writes them)
        return st.one_of(as_json.map(lambda v: json.dumps(v).encode()), st.binary(max_size=50))
    as_map = _map_of(_fields(kind), _SPECIAL) if kind is not None else st.dictionaries(st.text(max_size=8), _ANY,
                                                                                        max_size=3)
    packed = st.one_of(as_map, as_map, as_map, _ANY).map(lambda v: msgpack.packb(v, use_bin_type=True))
    return st.one_of(packed, packed, packed, st.binary(max_size=100))


def _query(kind: Any) -> st.SearchStrategy[dict[str, str]]:
    names = [kind] if isinstance(kind, str) else _fields(kind) if kind is not None else []
    value = st.one_of(_WORDS, st.text(max_size=20), _INT.map(str), st.floats().map(str))
    timeouts = st.one_of(value, st.floats(min_value=0.0, max_value=0.1).map(str))
    known = st.fixed_dictionaries({}, optional={n: timeouts if n == "timeout" else value for n in names})
    return st.builds(lambda a, b: {**b, **a}, known, st.dictionaries(st.text(max_size=8), value, max_size=2))


def _send(url: str, token: str, method: str, path: str, body: bytes | None, cookie: str = "") -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HANG_S)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}",
                                                       "Content-Type": "application/msgpack",
                                                       "Cookie": cookie, "X-Shoal-Dashboard": "1"})
        resp = conn.getresponse()
        if resp.getheader("Content-Type", "").startswith("text/event-stream"):
            resp.read(1)  # a stream (a stopped container's logs end at once): it answered
        data = resp.read()
        assert resp.status < 500, f"{method} {path} -> {resp.status}: {data[:500]!r} (body {body[:300]!r})" \
            if body else f"{method} {path} -> {resp.status}: {data[:500]!r}"
        return resp.status
    finally:
        conn.close()


def _dashboard_cookie(url: str, token: str) -> str:
    """The dashboard's session cookie, from a login link (`shoal dashboard`)."""
    link = get_client().call("POST", "/v1/dashboard/login")["path"]
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HANG_S)
    try:
        conn.request("GET", link)
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("Set-Cookie", "").split(";")[0]
    finally:
        conn.close()


def _round_trip() -> None:
    import basic_app

    with basic_app.app.run(quiet=True):
        assert basic_app.square.remote(7) == 49


def test_no_route_answers_5xx_or_hangs(private_control_plane: ControlPlane) -> None:
    import basic_app

    cp = private_control_plane
    client = get_client()
    token = client.info.token
    # Real ids for the paths, next to made-up ones.
    shoal.Secret.objects.create("fuzz-secret", {"K": "v"})
    token_id = client.call("POST", "/v1/proxy-tokens", {"scope": []})["token_id"]
    dict_id, queue_id, volume_id = (
        client.call("POST", "/v1/objects", {"kind": kind, "name": f"fuzz-{kind}", "create_if_missing": True})[
            "object_id"] for kind in ("dict", "queue", "volume"))
    upload_id = client.call("POST", f"/v1/volumes/{volume_id}/uploads", {})["upload_id"]
    throwaway = client.call("POST", "/v1/apps", {"name": "fuzz-throwaway"})["app_id"]
    counts: collections.Counter[int] = collections.Counter()
    with basic_app.app.run(quiet=True):
        assert basic_app.square.remote(3) == 9
        call_id = basic_app.square.spawn(4).object_id
        app_id = basic_app.app.app_id
        function_id = basic_app.square.object_id
        containers = client.call("GET", "/v1/containers")["containers"]
        sandbox_id = client.call("POST", "/v1/sandboxes", {"app_id": app_id, "command": ["sleep", "600"],
                                                            "timeout": 600})["sandbox_id"]
        exec_id = client.call("POST", f"/v1/sandboxes/{sandbox_id}/exec", {"argv": ["true"]})["exec_id"]
        real = {
            "app_id": [app_id], "function_id": [function_id], "call_id": [call_id],
            "container_id": [c["container_id"] for c in containers][:1] or ["ct-x"],
            "app_ref": ["basic", app_id], "object_id": [dict_id, queue_id], "token_id": [token_id],
            "name": ["fuzz-secret"], "sha": ["0" * 64], "volume_id": [volume_id], "upload_id": [upload_id],
            "index": ["0", "1"], "repo": ["shoal/im-x", "library/app"],
            "reference": ["latest", "sha256:" + "0" * 64], "digest": ["sha256:" + "0" * 64],
            "image_id": [i["image_id"] for i in client.call("GET", "/v1/images")["images"]],
            "sandbox_id": [sandbox_id], "exec_id": [exec_id], "op": ["read", "write", "list", "mkdir", "stat"],
        }
        cookie = _dashboard_cookie(cp.url, token)
        segment = st.one_of(st.text(alphabet=string.printable, min_size=1, max_size=20),
                            st.text(min_size=1, max_size=80), _WORDS.filter(bool))

        def path_of(template: str) -> st.SearchStrategy[str]:
            names = re.findall(r"\{(\w+)\}", template)
            choices = {n: st.one_of(st.sampled_from([throwaway] if template.endswith("/stop") and n == "app_id"
                                                    else real[n]), segment) for n in names}
            if template.endswith("/logs") and template.startswith("/dashboard"):
                choices = {"container_id": segment}  # a live container's log stream lasts as long as the page
            return st.fixed_dictionaries(choices).map(
                lambda v: template.format(**{k: quote(x, safe="") for k, x in v.items()}))

        requests = st.sampled_from(ROUTES).flatmap(lambda r: st.tuples(
            st.just(r[0]), path_of(r[1]), _body(r[2]) if r[0] not in ("GET", "HEAD", "DELETE") else st.none(),
            _query(r[3]) if r[3] is not None else st.one_of(st.just({}), _query(None))))

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(requests)
        def fuzz(request: tuple[str, str, bytes | None, dict[str, str]]) -> None:
            method, path, body, query = request
            if query:
                path += "?" + urlencode(query)
            counts[_send(cp.url, token, method, path, body, cookie)] += 1

        started = time.monotonic()
        fuzz()
        print(f"\nfuzzed {sum(counts.values())} requests in {time.monotonic() - started:.1f} s; by status: "
              + ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())))
        assert client.call("GET", "/v1/health")["ok"]
    assert counts and all(status < 500 for status in counts)
    _round_trip()
    cp.kill()
    cp.start()
    assert get_client().call("GET", "/v1/health")["ok"]
    _round_trip()


def _first_line_of_answer(port: int, head: str) -> bytes:
    """Send only a request's head (its body never comes): the status line of the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=HANG_S) as s:
        s.sendall(head.encode())
        return s.recv(200).split(b"\r\n")[0]


def test_a_declared_body_over_its_limit_is_refused_before_it_is_sent(private_control_plane: ControlPlane) -> None:
    cp = private_control_plane
    token = get_client().info.token
    api_port = urlsplit(cp.url).port
    assert api_port is not None
    for path, length in [("POST /v1/apps", 5 << 20), (f"PUT /v1/blobs/{'0' * 64}", 5 << 30),
                         ("POST /v1/dicts/di-x/put", 200 << 20)]:
        head = f"{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n"
        assert b" 413 " in _first_line_of_answer(api_port, head), path
    web_port = int((cp.run_dir / "web_port").read_text())
    head = f"POST / HTTP/1.1\r\nHost: nothing.localhost\r\nContent-Length: {5 << 30}\r\n\r\n"
    assert b" 413 " in _first_line_of_answer(web_port, head)
