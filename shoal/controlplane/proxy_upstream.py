"""The ingress proxy's upstream side: connections to containers' web ports, and responses held for result URLs."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httptools

from .proxy_http import Request, simple_response

if TYPE_CHECKING:
    from .proxy import ClientConnection, Proxy

RESULT_MAX_BYTES = 256 * 1024 * 1024  # a redirected response is held in memory up to this size


class Redirected:
    """The response of a request redirected after REQUEST_TIMEOUT_S, held until its result URL is fetched at the
    endpoint (`label`) the request was made to."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.data: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.keep_alive = True
        self.finished: asyncio.Future = asyncio.get_running_loop().create_future()
        self.finished_at: float | None = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > RESULT_MAX_BYTES:
            self.overflow = True
            self.data.clear()
        elif not self.overflow:
            self.data.append(data)

    def end(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.finished_at = time.monotonic()
        if not self.finished.done():
            self.finished.set_result(None)


class Upstream(asyncio.Protocol):
    """A connection to a container's web port. The response is passed through byte for byte; the parser
    only finds where it ends (keep-alive), whether it upgrades (WebSocket) and whether it may be reused."""

    def __init__(self, proxy: Proxy, key: tuple[str, int]) -> None:
        self.proxy = proxy
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.client: ClientConnection | None = None
        self.request: Request | None = None
        self.sink: Any = None  # the client connection, or a Redirected holder
        self.parser: Any = None
        self.status = 0
        self.finished = False
        self.keep_alive = True
        self.tunnel = False
        self.closed = False
        self.idle_since = time.monotonic()

    def start(self, client: ClientConnection, r: Request, sink: Any) -> None:
        self.client, self.request, self.sink = client, r, sink
        self.parser = httptools.HttpResponseParser(self)
        self.status, self.finished, self.keep_alive = 0, False, True

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    # -- transport events ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            self.sink.write(data)
            return
        if self.parser is None:  # bytes on an idle connection: it is not reusable
            self.close()
            return
        upgraded = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            upgraded = True
        except httptools.HttpParserError:
            self.close()
            self._end(ok=False)
            return
        r = self.request
        if r is not None:
            r.response_started = True
        self.sink.write(data)
        if upgraded and self.status == 101:
            self._to_tunnel()
        elif self.finished:
            self._end(ok=True)

    def eof_received(self) -> bool:
        if self.tunnel and self.client is not None and self.client.transport is not None:
            if self.client.transport.can_write_eof():
                self.client.transport.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.request is not None and not self.finished:
            if self.tunnel and self.client is not None:
                self.client.close()
            self._end(ok=False)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause()

    def resume_writing(self) -> None:
        if self.client is not None and (self.request is None or not self.request.complete or self.tunnel):
            self.client.resume()

    # -- parser callbacks ------------------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.request is not None and self.status >= 200:
            self.request.status = self.status
        self.keep_alive = self.parser.should_keep_alive()
        if self.request is not None and self.request.method == b"HEAD" and self.status >= 200:
            self.finished = True  # no body follows, whatever the headers say

    def on_message_complete(self) -> None:
        # 100 Continue and other informational responses: the parser goes on to the real one that follows.
        if self.status >= 200 or self.status == 0:
            self.finished = True

    # -- the end of a response -------------------------------------------------------------------------------
    def _to_tunnel(self) -> None:
        """A 101 Switching Protocols: from now on both directions are raw bytes (a WebSocket)."""
        client = self.client
        self.tunnel = True
        if client is None or self.sink is not client:
            self.close()
            return
        client.tunnel = self
        for chunk in client.tunnel_pending or []:
            self.write(chunk)
        client.tunnel_pending = None
        client.resume()

    def _end(self, ok: bool) -> None:
        r, sink = self.request, self.sink
        self.request = None
        self.finished = True
        if r is None:
            return
        reusable = ok and self.keep_alive and not self.tunnel and r.complete and not self.closed
        if isinstance(sink, Redirected):
            sink.end(keep_alive=True)
            if not ok:
                sink.overflow = sink.overflow or not sink.data
        elif not ok and not r.response_started and sink is not None:
            r.status = 502  # (for the request log)
            sink.write(simple_response(502, "shoal: the web endpoint's container closed the connection",
                                       close=True))
        if r.done is not None and not r.done.done():
            r.done.set_result(ok and self.keep_alive and not self.tunnel)
        if reusable:
            self.proxy.park(self)
        else:
            self.close()
