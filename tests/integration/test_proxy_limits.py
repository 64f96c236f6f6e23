"""The ingress proxy's limits against a real control plane, with raw sockets: a request target or head over its
bounds (414/431), a declared body over the limit (413, before any body byte), a head that never ends (the
connection is answered and closed after a bounded number of bytes, not 200 MiB, and the control plane's API
answers meanwhile), a head that trickles in (408), a quiet connection (closed). Then, with real web endpoints:
refused requests do not spend authenticated traffic's rate budget, and a result URL asks for the same
credentials as its endpoint and serves only there."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shoal._spec import limits
from shoal.controlplane.ingress_policy import MISSING_CREDENTIALS, REJECTED_LIMITED

from ..conftest import ControlPlane, _use_home, run_cli, wait_for

FIRST_S = 180.0  # a cold start may include a first image build: a deadline, not a timing
HTTP_TIMEOUT = (10, FIRST_S)
MiB = 1024 * 1024
# What the proxy may still take in after a head goes over its limit: its read buffer, the bytes it drops before
# closing (PROXY_LINGER_BYTES), and what the kernel's socket buffers held (the receive buffer grows up to
# net.ipv4.tcp_rmem's maximum, 32 MiB here). Far below the 200 MiB that were read in full before.
ACCEPTED_BOUND = 48 * MiB
ENDLESS = 200 * MiB


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """A control plane of this module alone: short head/idle limits (so tests need not wait 20 s), a short
    request timeout (303s come quickly) and a small workspace rate budget (20 requests)."""
    env = {"SHOAL_WEB_HEAD_TIMEOUT_S": "2", "SHOAL_WEB_IDLE_TIMEOUT_S": "2", "SHOAL_WEB_REQUEST_TIMEOUT_S": "1",
           "SHOAL_WEB_RATE_LIMIT": "20", "SHOAL_WEB_RATE_BURST_S": "1"}
    cp = ControlPlane(tmp_path_factory.mktemp("proxy-limits") / "home", env=env).start()
    _use_home(cp.home)
    try:
        yield cp
    finally:
        cp.stop()
        _use_home(control_plane.home)


def web_port(cp: ControlPlane) -> int:
    return json.loads((cp.home / "server.json").read_text())["web_port"]


def connect(cp: ControlPlane) -> socket.socket:
    return socket.create_connection(("127.0.0.1", web_port(cp)), timeout=60)


def read_all(sock: socket.socket) -> bytes:
    """Everything the proxy sends until it closes the connection (a reset after its answer counts as closed)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data[9:12])


def exchange(cp: ControlPlane, request: bytes) -> bytes:
    """Send `request` on a new connection; return all the proxy sends until it closes the connection."""
    with connect(cp) as sock:
        sock.sendall(request)
        return read_all(sock)


# -- bounds of a head -------------------------------------------------------------------------------------------
def test_request_target_over_the_limit_is_414(plane) -> None:
    near = b"/" + b"a" * (limits.PROXY_MAX_URL - 100)
    assert status_of(exchange(plane, b"GET " + near + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 404
    over = b"/" + b"a" * (limits.PROXY_MAX_URL + 1)
    answer = exchange(plane, b"GET " + over + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 414 and b"connection: close" in answer.lower()


def test_head_over_the_limit_is_431(plane) -> None:
    fits = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (limits.PROXY_MAX_HEAD - 200) + b"\r\n\r\n"
    assert status_of(exchange(plane, fits.replace(b"Host: x", b"Host: x\r\nConnection: close"))) == 404
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (limits.PROXY_MAX_HEAD + 10) + b"\r\n\r\n"
    answer = exchange(plane, big)
    assert status_of(answer) == 431 and b"request head larger" in answer


def test_too_many_header_fields_is_431(plane) -> None:
    def head(fields: int) -> bytes:
        lines = b"".join(b"X-F%d: v\r\n" % i for i in range(fields - 2))
        return b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + lines + b"\r\n"

    assert status_of(exchange(plane, head(limits.PROXY_MAX_HEADERS))) == 404
    answer = exchange(plane, head(limits.PROXY_MAX_HEADERS + 1))
    assert status_of(answer) == 431 and b"header fields" in answer


def test_declared_body_over_the_limit_is_413_before_it_is_sent(plane) -> None:
    with connect(plane) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (limits.PROXY_MAX_BODY + 1))
        answer = read_all(sock)  # no body byte was sent: the answer comes from the head alone
    assert status_of(answer) == 413


def endless(cp: ControlPlane, prefix: bytes) -> tuple[int, bytes]:
    """Send `prefix` and then 'a' forever (up to 200 MiB) while reading: (bytes the proxy took, its answer)."""
    sock = connect(cp)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sent = 0
    answer: list[bytes] = []

    def receive() -> None:
        answer.append(read_all(sock))

    reader = threading.Thread(target=receive)
    reader.start()
    chunk = b"a" * (256 * 1024)
    try:
        sock.sendall(prefix)
        while sent < ENDLESS and reader.is_alive():
            sent += sock.send(chunk)
    except OSError:  # reset or broken pipe: the proxy closed the connection
        pass
    reader.join(60)
    sock.close()
    return sent, answer[0] if answer else b""


def vm_hwm_mib(cp: ControlPlane) -> float:
    assert cp.proc is not None
    for line in Path(f"/proc/{cp.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize(("prefix", "status"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ", 431),
    (b"GET /", 414),
])
def test_an_endless_head_is_cut_off_and_the_api_answers_meanwhile(plane, prefix: bytes, status: int) -> None:
    peak_before = vm_hwm_mib(plane)
    health: list[int] = []
    result: list[tuple[int, bytes]] = []
    flood = threading.Thread(target=lambda: result.append(endless(plane, prefix)))
    flood.start()
    while flood.is_alive() or not health:
        health.append(requests.get(f"{plane.url}/v1/health", timeout=30).status_code)
    flood.join()
    sent, answer = result[0]
    assert sent < ACCEPTED_BOUND, f"the proxy took {sent / MiB:.1f} MiB of one head"
    if answer:  # (a reset may overtake the answer on its way)
        assert status_of(answer) == status
    assert set(health) == {200}
    assert vm_hwm_mib(plane) - peak_before < 64, "the control plane's memory grew with the head"


# -- time limits ------------------------------------------------------------------------------------------------
def test_a_trickling_head_gets_408_and_the_connection_closes(plane) -> None:
    with connect(plane) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.3)
        answer = b""
        deadline = time.monotonic() + 60  # a bound for a broken proxy, not a timing
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # a header field every 0.3 s, never the end of the head
            except OSError:
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        sock.settimeout(10)
        answer += read_all(sock)
    assert status_of(answer) == 408, answer


def test_quiet_connections_are_closed(plane) -> None:
    with connect(plane) as sock:  # never sends a byte
        assert read_all(sock) == b""
    with connect(plane) as sock:  # one request, then nothing: answered, then closed
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_all(sock)
    assert status_of(answer) == 404 and answer.count(b"HTTP/1.1") == 1


# -- auth before the rate limit; result URLs behind auth ------------------------------------------------------
def create_token(*apps: str) -> tuple[str, str]:
    args = [a for app in apps for a in ("--app", app)]
    out = run_cli("workspace", "proxy-tokens", "create", *args, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    return data["token_id"], data["token_secret"]


def get(url: str, **kwargs) -> requests.Response:
    return requests.get(url, timeout=kwargs.pop("timeout", HTTP_TIMEOUT), **kwargs)


@pytest.fixture(scope="module")
def apps(plane) -> Iterator[dict[str, str]]:
    import web_simple_app
    import web_slow_auth_app

    key, secret = create_token()
    other_key, other_secret = create_token("some-other-app")
    with web_slow_auth_app.app.run(quiet=True), web_simple_app.app.run(quiet=True):
        creds = {"Modal-Key": key, "Modal-Secret": secret}
        slow, simple = web_slow_auth_app.slow.get_web_url(), web_simple_app.f.get_web_url()
        assert wait_for(lambda: get(slow, params={"seconds": 0}, headers=creds).status_code == 200,
                        timeout=FIRST_S, interval=0.5)
        assert wait_for(lambda: get(simple).status_code == 200, timeout=FIRST_S, interval=0.5)
        yield {"slow": slow, "simple": simple, "key": key, "secret": secret, "other_key": other_key,
               "other_secret": other_secret}


def test_unauthenticated_flood_does_not_spend_the_budget_of_authenticated_traffic(apps) -> None:
    parts = urllib.parse.urlsplit(apps["slow"])
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    statuses: list[int] = []
    # On one keep-alive connection, until the address's budget for refused requests is spent (over 100 requests,
    # five times the workspace's budget of 20), and 100 more.
    while statuses.count(429) < 100 and len(statuses) < 5000:
        conn.request("GET", "/?seconds=0")
        response = conn.getresponse()
        body = response.read().decode()
        statuses.append(response.status)
        assert (response.status, body) in ((401, MISSING_CREDENTIALS), (429, REJECTED_LIMITED)), body
    conn.close()
    assert statuses.count(401) >= 100 and statuses.count(429) == 100  # the flood spent its own budget...
    # ...and none of the workspace's: another app, and the protected one with credentials, are served at once.
    assert get(apps["simple"]).status_code == 200
    creds = {"Modal-Key": apps["key"], "Modal-Secret": apps["secret"]}
    r = get(apps["slow"], params={"seconds": 0}, headers=creds)
    assert r.status_code == 200 and r.json() == {"slept": 0}


def test_result_url_asks_for_the_endpoints_credentials_and_serves_only_there(plane, apps) -> None:
    creds = {"Modal-Key": apps["key"], "Modal-Secret": apps["secret"]}
    first = get(apps["slow"], params={"seconds": 3}, headers=creds, allow_redirects=False)
    assert first.status_code == 303, first.text
    result_url = urllib.parse.urljoin(apps["slow"] + "/", first.headers["location"])
    query = urllib.parse.urlsplit(result_url).query
    assert "__shoal_call_id=" in query

    # (The 303 took the request timeout, 1 s: an earlier flood's address budget has refilled by 20 since.)
    missing = get(result_url, allow_redirects=False)
    assert missing.status_code == 401 and missing.text == MISSING_CREDENTIALS
    scoped = {"Modal-Key": apps["other_key"], "Modal-Secret": apps["other_secret"]}
    assert get(result_url, headers=scoped, allow_redirects=False).status_code == 403
    # Not at another endpoint's address, nor at the proxy's own address (no endpoint there).
    elsewhere = get(f"{apps['simple']}/?{query}", headers=creds, allow_redirects=False)
    assert elsewhere.status_code == 404, elsewhere.text
    assert get(f"http://127.0.0.1:{web_port(plane)}/?{query}", headers=creds,
               allow_redirects=False).status_code == 404

    final = None
    for _ in range(30):  # each hop waits up to the request timeout
        r = get(result_url, headers=creds, allow_redirects=False)
        if r.status_code != 303:
            final = r
            break
    assert final is not None and final.status_code == 200, final and final.text
    assert final.json() == {"slept": 3}
