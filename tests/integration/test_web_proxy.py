"""The ingress proxy against real containers: WebSockets (echo, the 2 MiB message limit), streamed responses that
arrive while the handler is still running, large streamed uploads, proxy auth (401/403/200), the workspace rate
limit (429 + Retry-After), requests past the request timeout (303 to a result URL that runs the call once), and
a rolling redeploy under steady load without a failed request."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

import shoal as modal
from shoal.controlplane.ingress_policy import INVALID_CREDENTIALS, MISSING_CREDENTIALS

from ..conftest import ControlPlane, _use_home, run_cli, wait_for

FIRST_S = 180.0  # a cold start may include a first image build: a deadline, not a timing
HTTP_TIMEOUT = (10, FIRST_S)
MiB = 1024 * 1024


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def get(url: str, **kwargs: Any) -> requests.Response:
    return requests.get(url, timeout=kwargs.pop("timeout", HTTP_TIMEOUT), **kwargs)


def web_port(cp: ControlPlane) -> int:
    return json.loads((cp.home / "server.json").read_text())["web_port"]


@contextmanager
def private_plane(tmp_path: Path, shared: ControlPlane, env: dict[str, str]) -> Iterator[ControlPlane]:
    """A control plane of this test alone, with `env` (the proxy reads its settings at start)."""
    cp = ControlPlane(tmp_path / "home", env=env).start()
    _use_home(cp.home)
    try:
        yield cp
    finally:
        cp.stop()
        _use_home(shared.home)


# -- WebSockets ---------------------------------------------------------------------------------------------------
def test_websocket_echo_and_message_size_limit(control_plane) -> None:
    import web_ws_app

    with web_ws_app.app.run(quiet=True):
        url = web_ws_app.ws_app.get_web_url()
        assert get(url + "/").status_code == 404  # the container is up (FastAPI has no "/" route)
        ws_url = "ws" + url[len("http"):] + "/ws"

        with ws_connect(ws_url, open_timeout=FIRST_S, max_size=None) as ws:
            assert ws.response.headers.get("sec-websocket-extensions") is None  # no permessage-deflate
            for i in range(5):
                ws.send(f"message {i}")
                assert ws.recv(timeout=30) == f"echo: message {i}"
            ws.send(b"\x00\x01binary")
            assert ws.recv(timeout=30) == b"\x00\x01binary"
            at_limit = os.urandom(2 * MiB)  # exactly Modal's limit passes
            ws.send(at_limit)
            assert ws.recv(timeout=60) == at_limit
            ws.send("still open")
            assert ws.recv(timeout=30) == "echo: still open"

        # Several connections at once: each is its own function call, sharing a concurrent container.
        with contextlib.ExitStack() as stack:
            conns = [stack.enter_context(ws_connect(ws_url, open_timeout=FIRST_S)) for _ in range(3)]
            for i, ws in enumerate(conns):
                ws.send(f"conn {i}")
            assert [ws.recv(timeout=30) for ws in conns] == [f"echo: conn {i}" for i in range(3)]

        with ws_connect(ws_url, open_timeout=FIRST_S, max_size=None) as ws:
            ws.send(b"x" * (2 * MiB + 1))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=60)
            rcvd = closed.value.rcvd
            assert rcvd is None or rcvd.code == 1009, rcvd  # 1009: message too big

        with ws_connect(ws_url, open_timeout=FIRST_S) as ws:  # the endpoint still serves
            ws.send("after")
            assert ws.recv(timeout=30) == "echo: after"


# -- streaming ----------------------------------------------------------------------------------------------------
def test_server_sent_events_arrive_while_the_handler_runs(control_plane) -> None:
    import web_stream_app

    name = unique("web-sse")
    modal.Queue.objects.create(name)  # from_name is lazy: the container must find it
    queue = modal.Queue.from_name(name)
    try:
        with web_stream_app.app.run(quiet=True):
            url = web_stream_app.events.get_web_url()
            with httpx.stream("GET", url, params={"queue": name},
                              timeout=httpx.Timeout(FIRST_S, connect=10)) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                lines = r.iter_lines()
                # The generator is now blocked on the queue: this event can only have come through as a chunk.
                assert next(lines) == "data: first"
                queue.put("go")
                rest = [line for line in lines if line]
            assert rest == ["data: second", "data: done"]
    finally:
        modal.Queue.objects.delete(name, allow_missing=True)


def test_large_streamed_download(control_plane) -> None:
    import web_stream_app

    with web_stream_app.app.run(quiet=True):
        url = web_stream_app.download.get_web_url()
        block = bytes(range(256)) * 4096
        expected, got = hashlib.sha256(), hashlib.sha256()
        for _ in range(300):
            expected.update(block)
        with requests.get(url, params={"mib": 300}, stream=True, timeout=(10, 600)) as r:
            assert r.status_code == 200
            total = 0
            for chunk in r.iter_content(MiB):
                got.update(chunk)
                total += len(chunk)
        assert total == 300 * MiB
        assert got.hexdigest() == expected.hexdigest()
        assert get(url, params={"mib": 1}).content == block  # the connection pool is still good


def _chunks(total: int, size: int = MiB) -> Iterator[bytes]:
    block = os.urandom(size)
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield block[:n]
        sent += n


def test_large_streamed_uploads(control_plane) -> None:
    import web_stream_app

    with web_stream_app.app.run(quiet=True):
        url = web_stream_app.upload.get_web_url()
        total = 200 * MiB + 12345
        r = requests.post(url, data=_chunks(total), timeout=(10, 600))  # a generator: chunked encoding
        assert r.status_code == 200, r.text
        assert r.json()["bytes"] == total
        assert r.json()["chunks"] > 1  # it streamed in, not as one piece

        # With a Content-Length instead of chunks.
        parts = urllib.parse.urlsplit(url)
        length = 64 * MiB + 7
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
        try:
            conn.putrequest("POST", "/")
            conn.putheader("Content-Length", str(length))
            conn.putheader("Content-Type", "application/octet-stream")
            conn.endheaders()
            for chunk in _chunks(length):
                conn.send(chunk)
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read())["bytes"] == length
        finally:
            conn.close()


# -- proxy auth ---------------------------------------------------------------------------------------------------
def create_token(*apps: str) -> tuple[str, str]:
    args = [a for app in apps for a in ("--app", app)]
    out = ok(run_cli("workspace", "proxy-tokens", "create", *args, "--json"))
    data = json.loads(out.stdout)
    return data["token_id"], data["token_secret"]


def test_requires_proxy_auth(control_plane) -> None:
    import web_proxy_auth_app

    good_id, good_secret = create_token()
    scoped_id, scoped_secret = create_token("other-app")
    own_id, own_secret = create_token("web-proxy-auth")
    try:
        with web_proxy_auth_app.app.run(quiet=True):
            url = web_proxy_auth_app.private.get_web_url()

            missing = get(url)
            assert missing.status_code == 401
            assert missing.text == MISSING_CREDENTIALS
            assert get(url, headers={"Modal-Key": good_id}).text == MISSING_CREDENTIALS

            wrong = get(url, headers={"Modal-Key": good_id, "Modal-Secret": "ws-wrong"})
            assert wrong.status_code == 401 and wrong.text == INVALID_CREDENTIALS
            unknown = get(url, headers={"Modal-Key": "wk-nosuchtoken", "Modal-Secret": good_secret})
            assert unknown.status_code == 401

            other = get(url, headers={"Modal-Key": scoped_id, "Modal-Secret": scoped_secret})
            assert other.status_code == 403, other.text
            assert "web-proxy-auth" in other.text

            for key, secret in ((good_id, good_secret), (own_id, own_secret)):
                r = get(url, headers={"Modal-Key": key, "Modal-Secret": secret})
                assert r.status_code == 200, r.text
                assert r.json() == {"ok": True, "saw_secret": False}  # credentials are not forwarded

            ok(run_cli("workspace", "proxy-tokens", "delete", good_id, "-y"))
            assert get(url, headers={"Modal-Key": good_id, "Modal-Secret": good_secret}).status_code == 401
    finally:
        for token_id in (good_id, scoped_id, own_id):
            run_cli("workspace", "proxy-tokens", "delete", token_id, "-y")


def test_pipelined_requests_on_one_connection(control_plane) -> None:
    """Requests written back to back before any answer: answered in order on the same connection."""
    import web_query_app

    with web_query_app.app.run(quiet=True):
        url = web_query_app.square.get_web_url()
        assert get(url, params={"x": 1}).status_code == 200  # warm
        parts = urllib.parse.urlsplit(url)
        host = f"{parts.hostname}:{parts.port}"
        with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
            sock.sendall(b"".join(f"GET /?x={x} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for x in (2, 3, 4)))
            data = b""
            deadline = time.monotonic() + 60
            while (data.count(b"HTTP/1.1 200") < 3 or not data.endswith(b"}")) and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        bodies = re.findall(rb'\{"square":\d+\}', data)
        assert bodies == [b'{"square":4}', b'{"square":9}', b'{"square":16}'], data


# -- unknown addresses --------------------------------------------------------------------------------------------
def test_no_label_is_404(control_plane) -> None:
    r = get(f"http://127.0.0.1:{web_port(control_plane)}/")
    assert r.status_code == 404
    r = requests.post(f"http://127.0.0.1:{web_port(control_plane)}/x", data=b"body", timeout=HTTP_TIMEOUT)
    assert r.status_code == 404


# -- rate limit ---------------------------------------------------------------------------------------------------
def test_rate_limit_gives_429_with_retry_after(control_plane, tmp_path: Path) -> None:
    import web_simple_app

    env = {"SHOAL_WEB_RATE_LIMIT": "5", "SHOAL_WEB_RATE_BURST_S": "1"}
    with private_plane(tmp_path, control_plane, env), web_simple_app.app.run(quiet=True):
        url = web_simple_app.f.get_web_url()
        assert wait_for(lambda: get(url).status_code == 200, timeout=FIRST_S, interval=0.5)

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            burst = list(pool.map(lambda _: get(url), range(30)))
        statuses = [r.status_code for r in burst]
        limited = [r for r in burst if r.status_code == 429]
        assert limited, statuses
        assert set(statuses) == {200, 429}, statuses  # the bucket's burst passes, the rest is refused
        for r in limited:
            assert int(r.headers["retry-after"]) >= 1
            assert "rate limit" in r.text

        def served() -> bool:
            r = get(url)
            return r.status_code == 200 and r.json() == "Hello world!"

        assert wait_for(served, timeout=30, interval=0.3)  # the bucket refills: requests pass again


# -- long requests ------------------------------------------------------------------------------------------------
def test_long_request_redirects_to_its_result(control_plane, tmp_path: Path) -> None:
    import web_slow_app

    env = {"SHOAL_WEB_REQUEST_TIMEOUT_S": "1"}
    with private_plane(tmp_path, control_plane, env), web_slow_app.app.run(quiet=True):
        counter = unique("web-slow")
        modal.Dict.objects.create(counter)  # from_name is lazy: the container must find it
        calls = modal.Dict.from_name(counter)
        url = web_slow_app.slow.get_web_url()
        # Warm up: while the container starts, requests may be refused (503) after the 1 s timeout.
        assert wait_for(lambda: get(url, params={"seconds": 0, "counter": counter}).status_code == 200,
                        timeout=FIRST_S, interval=0.5)

        first = get(url, params={"seconds": 2.5, "counter": counter, "key": "a"}, allow_redirects=False)
        assert first.status_code == 303, first.text
        location = first.headers["location"]
        assert "__shoal_call_id=" in location
        result_url = urllib.parse.urljoin(url + "/", location)
        final = None
        for _ in range(20):  # each hop waits up to the request timeout
            r = get(result_url, allow_redirects=False)
            if r.status_code == 303:
                result_url = urllib.parse.urljoin(result_url, r.headers["location"])
                continue
            final = r
            break
        assert final is not None and final.status_code == 200, final and final.text
        assert final.json() == {"slept": 2.5, "key": "a"}
        again = get(result_url, allow_redirects=False)  # the result URL can be reloaded...
        assert again.status_code == 200 and again.json() == {"slept": 2.5, "key": "a"}
        assert calls.get("a") == 1  # ...without running the call again

        followed = get(url, params={"seconds": 2.5, "counter": counter, "key": "b"})  # a client that follows
        assert followed.status_code == 200 and followed.json() == {"slept": 2.5, "key": "b"}
        assert [h.status_code for h in followed.history][:1] == [303]
        assert calls.get("b") == 1

        missing = get(url + "/?__shoal_call_id=nosuchcall")
        assert missing.status_code == 404

        # A request still waiting for a container at the timeout gets the 303 too, and runs once a slot frees.
        queued_url = web_slow_app.one_at_a_time.get_web_url()
        assert wait_for(lambda: get(queued_url, params={"seconds": 0, "counter": counter}).status_code == 200,
                        timeout=FIRST_S, interval=0.5)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            busy = pool.submit(get, queued_url, params={"seconds": 2.5, "counter": counter, "key": "qa"})
            assert wait_for(lambda: calls.get("qa") == 1, timeout=30, interval=0.05)  # the container is busy
            waited = get(queued_url, params={"seconds": 0, "counter": counter, "key": "qb"}, allow_redirects=False)
            assert waited.status_code == 303, waited.text
            assert calls.get("qb") is None  # not run yet: it was still waiting for the container
            final = get(urllib.parse.urljoin(queued_url + "/", waited.headers["location"]))
            assert final.status_code == 200 and final.json() == {"slept": 0, "key": "qb"}
            assert busy.result().status_code == 200
        assert calls.get("qb") == 1
    modal.Dict.objects.delete(counter, allow_missing=True)


# -- redeploys ----------------------------------------------------------------------------------------------------
VERSIONED_WEB_APP = '''
import shoal as modal

app = modal.App({name!r})

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function(image=image)
@modal.concurrent(max_inputs=20)
@modal.fastapi_endpoint()
def version():
    return {{"version": {version}}}
'''


def test_rolling_redeploy_under_load_fails_no_request(control_plane, tmp_path: Path) -> None:
    name = unique("web-redeploy")
    path = tmp_path / "web_redeploy_app.py"
    path.write_text(VERSIONED_WEB_APP.format(name=name, version=1))
    try:
        ok(run_cli("deploy", str(path), cwd=tmp_path))
        url = modal.Function.from_name(name, "version").get_web_url()
        assert url
        assert get(url).json() == {"version": 1}

        results: list[tuple[int, Any]] = []
        errors: list[str] = []
        stop = threading.Event()

        per_thread: dict[str, list[Any]] = {}

        def load(session: requests.Session | None) -> None:
            mine = per_thread.setdefault(threading.current_thread().name, [])
            deadline = time.monotonic() + 40  # bounded whatever happens
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    r = (session or requests).get(url, timeout=(10, 60))
                    result = (r.status_code, r.json().get("version") if r.status_code == 200 else r.text)
                    results.append(result)
                    mine.append(result[1])
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    errors.append(repr(exc))
                time.sleep(0.01)

        threads = [threading.Thread(target=load, args=(requests.Session(),), daemon=True),  # keep-alive
                   threading.Thread(target=load, args=(None,), daemon=True)]  # a new connection each time
        for t in threads:
            t.start()
        try:
            assert wait_for(lambda: len(results) >= 5, timeout=30)
            path.write_text(VERSIONED_WEB_APP.format(name=name, version=2))
            ok(run_cli("deploy", str(path), cwd=tmp_path))
            assert wait_for(lambda: any(v == 2 for _, v in results[-3:]), timeout=60)
            seen = len(results)
            assert wait_for(lambda: len(results) >= seen + 10, timeout=30)  # still serving after the switch
        finally:
            stop.set()
            for t in threads:
                t.join(70)
        assert not errors, errors[:5]
        bad = [(s, v) for s, v in results if s != 200]
        assert not bad, bad[:5]
        versions = [v for _, v in results]
        assert set(versions) == {1, 2}
        assert versions[-10:] == [2] * 10
        for seq in per_thread.values():  # once the new version answers, the old one takes no new requests
            assert 1 not in seq[seq.index(2):], seq
        assert modal.Function.from_name(name, "version").get_web_url() == url  # the URL stays the same
    finally:
        run_cli("app", "stop", name, "-y")
