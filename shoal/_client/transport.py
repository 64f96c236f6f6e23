"""Requests to the control plane: a blocking path on `http.client` (about 0.2 ms a round trip on loopback,
no event loop hop) and an async path on aiohttp, sharing encoding, error mapping and reconnect rules.

Every request is safe to repeat (calls carry client-made ids), so both paths retry through a control-plane
restart for up to RECONNECT_WINDOW_S, re-reading its address each time. With several addresses
(`SHOAL_SERVER_URL=urlA,urlB`: replicas of one control plane) a connection error moves to the next address at
once, and backs off only after each address failed once.
"""

from __future__ import annotations

import atexit
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from .. import exception
from .loop import background_loop
from .server_process import ServerInfo, ensure_server, read_server_info

if TYPE_CHECKING:
    import http.client

RECONNECT_WINDOW_S = 60.0
# Bodies are msgpack maps; msgspec encodes the definitions' Structs (`_spec.definitions`) as the same maps.
_encode = msgspec.msgpack.Encoder().encode
_decode_body = msgspec.msgpack.Decoder().decode


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


class Client:
    """One per process and control plane. Thread-safe: each thread has its own keep-alive connection."""

    def __init__(self, info: ServerInfo) -> None:
        self.info = info
        self._local = threading.local()
        self._session: Any = None  # aiohttp.ClientSession, on the background loop

    def _headers(self, body: bytes | None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.info.token}"}
        if body is not None:
            h["Content-Type"] = "application/msgpack"
        return h

    def _refresh(self) -> None:
        """After a connection failure: the control plane may have restarted on another port."""
        info = read_server_info()
        if info is not None and (info.urls, info.token) != (self.info.urls, self.info.token):
            self.info = info
            self._local = threading.local()

    def _failed(self, url: str, failures: int) -> bool:
        """A request to `url` failed to connect (`failures` in a row): move to the next address. True when the
        caller should retry at once (an address not tried yet), False when it should back off first."""
        if len(self.info.urls) > 1:
            if self.info.url == url:
                self.info = self.info.next_url()
            if failures % len(self.info.urls):
                return True
        self._refresh()
        return False

    # -- blocking --------------------------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        import http.client

        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "url", None) != self.info.url:
            parts = urlsplit(self.info.url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=None)
            self._local.conn = conn
            self._local.url = self.info.url
        return conn

    def request_raw(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        import http.client

        deadline = time.monotonic() + RECONNECT_WINDOW_S
        delay = 0.05
        failures = 0
        while True:
            conn = self._conn()
            url = self.info.url
            try:
                conn.request(method, path, body=body, headers=self._headers(body))
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                if time.monotonic() > deadline:
                    raise exception.ConnectionError(f"cannot reach the shoal control plane: {exc}") from exc
                failures += 1
                if not self._failed(url, failures):
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)

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
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
            atexit.register(_close_session, self._session)
        data = _encode(body) if body is not None else None
        deadline = time.monotonic() + RECONNECT_WINDOW_S
        delay = 0.05
        failures = 0
        while True:
            url = self.info.url
            try:
                async with self._session.request(
                    method, url + path, data=data, headers=self._headers(data)
                ) as resp:
                    return _decode(resp.status, await resp.read())
            except (aiohttp.ClientConnectionError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise exception.ConnectionError(f"cannot reach the shoal control plane: {exc}") from exc
                failures += 1
                if not self._failed(url, failures):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)


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
