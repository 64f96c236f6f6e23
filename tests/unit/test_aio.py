"""The one sync/async rule (shoal/_client/aio.py): each shape of implementation gives the same answers blocking and
through `.aio`, the options apply to both forms, and nothing asks the control plane before a request is due."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from shoal._client import transport
from shoal._client.aio import Emit, Plan, in_thread, on_loop, rpc, rpc_iter
from shoal._client.server_process import ServerInfo
from shoal.exception import InvalidError, NotFoundError


class Echo:
    """A real HTTP server standing in for the control plane: answers every path with itself (msgpack, as the
    control plane answers), `/missing` with a 404 NotFoundError; records the requests. The SDK's real client
    talks to it, blocking (http.client) and async (aiohttp)."""

    def __init__(self) -> None:
        import http.server
        import threading

        import msgspec

        self.requests: list[tuple[str, str]] = []
        echo = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client expects

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                echo.requests.append(("GET", self.path))
                missing = self.path == "/missing"
                body = msgspec.msgpack.encode({"error": self.path, "type": "NotFoundError"} if missing
                                              else {"path": self.path})
                self.send_response(404 if missing else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.client = transport.Client(ServerInfo(url=f"http://127.0.0.1:{self.server.server_port}", token="t"))


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> Iterator[Echo]:
    server = Echo()
    monkeypatch.setattr(transport, "_client", server.client)
    yield server
    server.server.shutdown()
    server.server.server_close()


class Thing:
    @rpc
    def lookup(self, name: str) -> Plan:
        resp = yield ("GET", f"/{name}", None)
        return resp["path"]

    @rpc
    def lookup_or(self, default: str) -> Plan:
        try:
            return (yield ("GET", "/missing", None))
        except NotFoundError:
            return default

    @rpc
    def local_only(self) -> Plan:
        if False:
            yield ("GET", "/never", None)
        return "no request"

    @rpc_iter
    def pages(self, n: int) -> Plan:
        for i in range(n):
            yield ("GET", f"/page{i}", None)
            yield Emit([2 * i, 2 * i + 1])

    @on_loop
    async def doubled(self, x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @on_loop(refuse_in_loop=True)
    async def stream(self, n: int) -> Any:
        for i in range(n):
            yield i

    @in_thread
    def chunks(self, n: int) -> Any:
        yield from (bytes([i]) for i in range(n))

    @rpc(deprecated="`Thing.old` is deprecated; use `Thing.lookup`")
    def old(self) -> Plan:
        resp = yield ("GET", "/old", None)
        return resp["path"]

    @staticmethod
    @on_loop
    async def total(*xs: int) -> int:
        return sum(xs)


def test_plan_forms_agree(echo: Echo) -> None:
    t = Thing()
    assert t.lookup("a") == "/a"
    assert asyncio.run(t.lookup.aio("b")) == "/b"
    assert t.lookup_or("dflt") == "dflt" == asyncio.run(t.lookup_or.aio("dflt"))
    assert echo.requests == [("GET", "/a"), ("GET", "/b"), ("GET", "/missing"), ("GET", "/missing")]


def test_a_plan_without_requests_never_gets_a_client(echo: Echo) -> None:
    assert Thing().local_only() == "no request" == asyncio.run(Thing().local_only.aio())
    assert echo.requests == []


def test_paged_plans_request_as_the_caller_iterates(echo: Echo) -> None:
    it = Thing().pages(3)
    assert echo.requests == []
    assert next(it) == 0 and echo.requests == [("GET", "/page0")]
    assert list(it) == [1, 2, 3, 4, 5]

    async def collect() -> list[int]:
        return [x async for x in Thing().pages.aio(2)]

    assert asyncio.run(collect()) == [0, 1, 2, 3]


def test_async_implementations_run_blocking_on_the_loop_thread() -> None:
    t = Thing()
    assert t.doubled(21) == 42 == asyncio.run(t.doubled.aio(21))
    assert list(t.stream(3)) == [0, 1, 2]
    assert Thing.total(1, 2, 3) == 6 == asyncio.run(Thing.total.aio(1, 2, 3))


def test_refuse_in_loop_points_at_aio() -> None:
    async def blocking_inside_a_loop() -> None:
        Thing().stream(3)

    with pytest.raises(InvalidError, match=r"\.stream\.aio"):
        asyncio.run(blocking_inside_a_loop())

    async def collect() -> list[int]:
        return [x async for x in Thing().stream.aio(3)]

    assert asyncio.run(collect()) == [0, 1, 2]


def test_blocking_implementations_run_in_a_thread_for_aio() -> None:
    async def collect() -> list[bytes]:
        return [c async for c in Thing().chunks.aio(3)]

    assert list(Thing().chunks(3)) == [b"\x00", b"\x01", b"\x02"] == asyncio.run(collect())


def test_deprecation_warns_once_at_the_callers_line(echo: Echo) -> None:
    t = Thing()
    for call in (lambda: t.old(), lambda: asyncio.run(t.old.aio())):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert call() == "/old"
        # (only the deprecations: a ResourceWarning from an object another test left may be collected meanwhile)
        deprecations = [w.filename for w in caught if issubclass(w.category, DeprecationWarning)]
        assert deprecations == [__file__]


def test_importing_the_sdk_imports_no_asyncio() -> None:
    """Every container's runtime imports the SDK on its cold-start path; asyncio (with ssl, ≈ 12 ms) comes only
    when something async runs."""
    import subprocess
    import sys

    code = "import sys, shoal, shoal.runtime.worker; print(sorted(m for m in ('asyncio', 'ssl') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
