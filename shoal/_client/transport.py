"""Requests to the control plane: a blocking path on `http.client` (about 0.2 ms a round trip on loopback,
no event loop hop) and an async path on aiohttp, sharing encoding, error mapping and reconnect rules.

Every request may be sent again after a connection error: each POST carries an idempotency key made once per
logical request (`_spec/headers.py`), so the control plane does a resent write once (calls and map inputs carry
client-made ids as well). When the connection fails (`_Resend.failed`):

- several addresses (`SHOAL_SERVER_URL=urlA,urlB`: replicas of one control plane): move to the next one at once,
  back off only after each address failed once;
- a local control plane this state directory's client auto-started (`server_process.py`) that died: start it
  again, as the first call did, and go on;
- otherwise wait for it to come back, re-reading its address: up to SHOAL_CONNECT_TIMEOUT seconds (default
  10) for a remote one (`SHOAL_SERVER_URL`), RECONNECT_WINDOW_S for a local one someone else restarts. Then
  ConnectionError, and until a request gets through again, later requests give up after one try (leaving
  `app.run()` does not wait the window out again).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from .. import exception
from .._spec.config import server_url_override
from .._spec.headers import IDEMPOTENCY_KEY, RETRY
from .loop import background_loop
from .server_process import ServerInfo, ensure_server, find_server, read_server_info, restart_if_dead

if TYPE_CHECKING:
    import http.client

RECONNECT_WINDOW_S = 60.0  # a local control plane restarted by someone else (`shoal up`, a supervisor)
CONNECT_TIMEOUT_S = 10.0  # default of SHOAL_CONNECT_TIMEOUT: how long a remote control plane may be unreachable
MAX_RESTARTS = 5  # auto-started control planes one request starts again, at most
# Bodies are msgpack maps; msgspec encodes the definitions' Structs (`_spec.definitions`) as the same maps.
_encode = msgspec.msgpack.Encoder().encode
_decode_body = msgspec.msgpack.Decoder().decode


def connect_timeout() -> float:
    """SHOAL_CONNECT_TIMEOUT: seconds a remote control plane may stay unreachable before a request fails (each
    connection attempt is bounded by it too)."""
    raw = os.environ.get("SHOAL_CONNECT_TIMEOUT", "").strip()
    if not raw:
        return CONNECT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise exception.InvalidError(f"SHOAL_CONNECT_TIMEOUT must be a positive number of seconds, not {raw!r}")
    return value


def raise_error(status: int, payload: bytes) -> None:
    """Raise the exception an error response names (shoal's exception classes, queue.Full, else RemoteError)."""
    try:
        body = _decode_body(payload)
        message, kind = body.get("error", ""), body.get("type", "RemoteError")
    except Exception:  # noqa: BLE001 - not our error format: show the raw body
        message, kind = payload[:500].decode("utf-8", "replace"), "RemoteError"
    if kind == "QueueFull":
        import queue

        raise queue.Full(message)
    cls = getattr(exception, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = exception.RemoteError
    raise cls(f"{message} (HTTP {status})" if cls is exception.RemoteError else message)


def _decode(status: int, payload: bytes) -> dict[str, Any]:
    if status >= 400:
        raise_error(status, payload)
    return _decode_body(payload) if payload else {}


class _Resend:
    """The sends of one logical request: its idempotency key, and what to do when a send cannot connect."""

    __slots__ = ("client", "key", "sends", "failures", "restarts", "first_failure", "delay")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.key = uuid.uuid4().hex
        self.sends = 0
        self.failures = 0
        self.restarts = 0
        self.first_failure = 0.0
        self.delay = 0.05

    def headers(self, method: str, body: bytes | None) -> dict[str, str]:
        h = self.client._headers(body)
        if method == "POST":
            h[IDEMPOTENCY_KEY] = self.key
        if self.sends:
            h[RETRY] = "1"
        self.sends += 1
        return h

    def failed(self, url: str, exc: BaseException) -> float:
        """A send to `url` could not connect or lost its connection: seconds to wait before sending again, or
        ConnectionError. May start the local control plane again (blocking, seconds)."""
        c = self.client
        now = time.monotonic()
        if c.down_since is not None:  # one look for it at a new address, no waiting
            if c.local and not self.restarts and c.recover(url):
                self.restarts += 1
                return 0.0
            raise self._error(exc, "unreachable moments ago as well")
        self.failures += 1
        if self.failures == 1:
            self.first_failure = now
        if len(c.info.urls) > 1:
            if c.info.url == url:
                c.info = c.info.next_url()
            if self.failures % len(c.info.urls):
                return 0.0
        if c.local:
            if self.restarts < MAX_RESTARTS and c.recover(url):
                self.restarts += 1
                return 0.0
            window = RECONNECT_WINDOW_S
        else:
            window = c.connect_timeout
        if now - self.first_failure >= window:
            c.down_since = now
            raise self._error(exc, f"unreachable for {now - self.first_failure:.0f}s")
        delay, self.delay = self.delay, min(self.delay * 2, 1.0)
        return min(delay, max(0.0, self.first_failure + window - now))

    def _error(self, exc: BaseException, how_long: str) -> exception.ConnectionError:
        where = ", ".join(self.client.info.urls) or "(no address)"
        hint = "" if self.client.local else " (SHOAL_CONNECT_TIMEOUT sets how long to wait)"
        return exception.ConnectionError(
            f"cannot reach the shoal control plane at {where} ({how_long}): {exc}{hint}")


class Client:
    """One per process and control plane. Thread-safe: each thread has its own keep-alive connection."""

    def __init__(self, info: ServerInfo) -> None:
        self.info = info
        self.local = server_url_override() is None  # found (or started) through the state directory
        self.connect_timeout = connect_timeout()
        self.down_since: float | None = None  # when a request last gave up on the control plane; None once one
        #                                       gets through again
        self._local = threading.local()
        self._session: Any = None  # aiohttp.ClientSession, on the background loop
        self._recover_lock = threading.Lock()

    def _headers(self, body: bytes | None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.info.token}"}
        if body is not None:
            h["Content-Type"] = "application/msgpack"
        return h

    def recover(self, failed_url: str) -> bool:
        """After a connection failure to the local control plane at `failed_url`: find it at its new address (it
        restarted), or start it again if it was auto-started and died. True when there is a new address to try;
        False when it is to be waited for."""
        with self._recover_lock:  # threads failing together restart it once
            if self.info.url != failed_url:
                return True  # another thread found the new one meanwhile
            info = find_server()
            if info is None:
                info = restart_if_dead(read_server_info())
            if info is None or (info.url, info.token) == (self.info.url, self.info.token):
                return False
            self.info = info
            self._local = threading.local()
            return True

    # -- blocking --------------------------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "url", None) != self.info.url:
            parts = urlsplit(self.info.url)
            conn = _connection_class()(parts.hostname, parts.port, timeout=self.connect_timeout)
            self._local.conn = conn
            self._local.url = self.info.url
        return conn

    def request_raw(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        import http.client

        resend = _Resend(self)
        while True:
            conn = self._conn()
            url = self.info.url
            try:
                conn.request(method, path, body=body, headers=resend.headers(method, body))
                resp = conn.getresponse()
                status, payload = resp.status, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                time.sleep(resend.failed(url, exc))
                continue
            self.down_since = None
            return status, payload

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = _encode(body) if body is not None else None
        return _decode(*self.request_raw(method, path, data))

    # -- async -----------------------------------------------------------------------------------------------
    async def acall(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Async request. The HTTP session lives on shoal's background loop whatever loop calls this, so
        repeated `asyncio.run()`s never leave sessions bound to dead loops."""
        import asyncio

        loop = background_loop()
        coro = self._acall_on_bg(method, path, body)
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def _acall_on_bg(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        import asyncio

        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout))
            atexit.register(_close_session, self._session)
        data = _encode(body) if body is not None else None
        resend = _Resend(self)
        while True:
            url = self.info.url
            try:
                async with self._session.request(
                    method, url + path, data=data, headers=resend.headers(method, data)
                ) as resp:
                    status, payload = resp.status, await resp.read()
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as exc:
                # (may start the control plane again: seconds of blocking work, off the loop)
                await asyncio.sleep(await asyncio.to_thread(resend.failed, url, exc))
                continue
            self.down_since = None
            return _decode(status, payload)


_connection_cls: Any = None


def _connection_class() -> type[http.client.HTTPConnection]:
    """http.client's connection with a bounded connect (its timeout) and unbounded reads after it: long polls
    and calls wait on the control plane for minutes. (Made on first use: http.client loads only then.)"""
    global _connection_cls
    if _connection_cls is None:
        import http.client

        class BoundedConnect(http.client.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                self.sock.settimeout(None)

        _connection_cls = BoundedConnect
    return _connection_cls


def _close_session(session: Any) -> None:
    import asyncio

    if not session.closed:
        try:
            asyncio.run_coroutine_threadsafe(session.close(), background_loop()).result(timeout=2)
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


_client: Client | None = None
_client_lock = threading.Lock()


def get_client() -> Client:
    """The process-wide client, connecting to (or starting) the control plane on first use."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = Client(ensure_server())
    return _client


def reset_client() -> None:
    """Forget the cached client (tests, or after `shoal down`)."""
    global _client
    _client = None
