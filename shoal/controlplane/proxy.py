"""The ingress proxy: HTTP/1.1 and WebSockets from web clients to the containers of web functions.

It runs on the control plane's event loop, so a request takes a container slot (controlplane/core/web_slots.py) directly
(the pool's queue: the autoscaler counts waiting requests at once) without any hop. Built on raw asyncio
protocols with httptools (llhttp) for message boundaries: request heads are rewritten (X-Forwarded-*, proxy-auth
headers removed), bodies and responses are streamed through as they arrive, with back-pressure both ways, so a
4 GiB upload or an endless SSE stream never sits in memory. Upstream connections are kept alive per container
and port (proxy_upstream.py). Chosen over a proxy built on aiohttp's client, which measured about 30% of direct
uvicorn's throughput on this machine before this one was written; this one's figures are in bench/README.md
(`python -m bench.web`).

A request head is read only within the bounds of `_spec/limits.py` (PROXY_*): its target (414), its size and
field count (431), the time it takes to arrive (408) and its declared body size (413) are checked as the bytes
arrive, so no client makes the control plane hold more than a bounded amount per connection; a connection with
no request under way is closed after PROXY_IDLE_TIMEOUT_S.

Per request: route (Host, else the loopback address the client connected to) → proxy auth (401/403) → rate
limit (429; refused requests spend a budget of their client address, admitted ones the workspace's:
ingress_policy.Admission) → a container slot (waiting in the pool's bounded queue while containers start) →
forward. A response that has not started within 150 s turns into Modal's 303 to a result URL that waits for the
same call; the result URL is served only at the same endpoint, after the same auth.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httptools

from .._spec import limits
from .._spec.definitions import VariantOverrides
from .._spec.params import bind_params, pack_params
from .ingress_policy import DEFAULT_BURST_S, DEFAULT_RATE, Admission, TokenRecord, check_proxy_auth
from .metrics import METRICS
from .proxy_http import Request, header_text, listening_socket, simple_response, until
from .proxy_upstream import Redirected, Upstream
from .web_routes import Route, Router

if TYPE_CHECKING:
    from .core.model import Container, Input, Pool
    from .core.variants import Variants
    from .core.web_slots import WebSlots

log = logging.getLogger("shoal.proxy")

REQUEST_TIMEOUT_S = float(os.environ.get("SHOAL_WEB_REQUEST_TIMEOUT_S", "150"))  # then 303 to the result URL
HEAD_TIMEOUT_S = float(os.environ.get("SHOAL_WEB_HEAD_TIMEOUT_S", limits.PROXY_HEAD_TIMEOUT_S))
IDLE_TIMEOUT_S = float(os.environ.get("SHOAL_WEB_IDLE_TIMEOUT_S", limits.PROXY_IDLE_TIMEOUT_S))
RESULT_KEEP_S = 600.0  # how long a redirected call's response waits to be fetched
MAX_QUEUED = 2000  # requests waiting for containers, per function (Modal's pending-input limit)
IDLE_UPSTREAM_S = 60.0
BUFFER_HIGH = 1 << 20  # body bytes held while the upstream is not connected yet or cannot keep up
RESULT_PARAM = "__shoal_call_id"
_RESULT_PARAM = RESULT_PARAM.encode()
# The head's bounds (_spec/limits.py), as module constants: they are checked per request.
MAX_URL, MAX_HEAD, MAX_HEADERS = limits.PROXY_MAX_URL, limits.PROXY_MAX_HEAD, limits.PROXY_MAX_HEADERS
MAX_BODY = limits.PROXY_MAX_BODY
HEAD_TOO_LARGE = f"shoal: request head larger than {MAX_HEAD} bytes"
BODY_TOO_LARGE = f"shoal: request body larger than {MAX_BODY >> 30} GiB"
REQUEST_LOG = 200  # recent requests kept per web function / Server
HEALTH_INTERVAL_S = float(os.environ.get("SHOAL_SERVER_HEALTH_INTERVAL_S", "5"))
HEALTH_FAILURES = 3  # failed port checks in a row before a Server container is replaced
# sec-websocket-extensions: no permessage-deflate (RFC 7692), as in Modal, so the 2 MiB limit is on messages.
_STRIP = {b"modal-key", b"modal-secret", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
          b"sec-websocket-extensions"}
_STRIP_HOP = _STRIP | {b"connection", b"keep-alive"}  # hop-by-hop too, unless the request upgrades


class HeadLimitError(Exception):
    """Raised from a parser callback to stop parsing a head over a limit (feed_data raises it as the context of
    an HttpParserCallbackError); the connection answers `status` and closes."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(status, body)
        self.status, self.body = status, body


class Proxy:
    def __init__(self, router: Router, pools: Mapping[str, Pool], slots: WebSlots, variants: Variants,
                 token_lookup: Callable[[str], TokenRecord | None],
                 health_failed: Callable[[Container, str], None]) -> None:
        """`pools`: the control plane's, by function id; `token_lookup`: ProxyTokens.lookup;
        `health_failed`: what replaces a Server container that fails its health checks."""
        self.router = router
        self.pools = pools
        self.slots = slots
        self.variants = variants
        self.token_lookup = token_lookup
        self.health_failed = health_failed
        rate = float(os.environ.get("SHOAL_WEB_RATE_LIMIT", DEFAULT_RATE))
        self.admission = Admission(rate if rate > 0 else None,
                                   float(os.environ.get("SHOAL_WEB_RATE_BURST_S", DEFAULT_BURST_S)))
        self.idle: dict[tuple[str, int], list[Upstream]] = collections.defaultdict(list)
        self.results: dict[str, Redirected] = {}
        self.listeners: dict[str, asyncio.AbstractServer] = {}  # (a bare socket until it serves)
        self.host = os.environ.get("SHOAL_WEB_HOST", "127.0.0.1")
        self.requests: dict[str, collections.deque[tuple]] = {}
        router.on_change.append(self._open_listeners)
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Any) -> None:
        """A task the proxy keeps (a redirected request going on behind its 303)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- listening -------------------------------------------------------------------------------------------
    async def start(self, port: int) -> int:
        """The main listener (Host routing) on SHOAL_WEB_HOST:port; label addresses get their own."""
        sock = listening_socket(self.host, port)
        server = await asyncio.get_running_loop().create_server(lambda: ClientConnection(self), sock=sock)
        self.listeners[self.host] = server
        self.router.port = server.sockets[0].getsockname()[1]
        return self.router.port

    def _open_listeners(self, routes: list[Route]) -> None:
        wanted = {r.address for r in routes}
        for addr in list(self.listeners):
            if addr != self.host and addr not in wanted:
                self.listeners.pop(addr).close()
        for addr in wanted - set(self.listeners):
            # Bound and listening before this returns: a URL handed out right after a deploy accepts
            # connections at once (the kernel queues them until the server below starts serving).
            try:
                sock = listening_socket(addr, self.router.port)
            except OSError as exc:
                log.warning("cannot listen on %s:%s for a web endpoint: %s", addr, self.router.port, exc)
                continue
            self.listeners[addr] = sock  # type: ignore[assignment]  # replaced by its server once serving
            asyncio.get_running_loop().create_task(self._listen(addr, sock))

    async def _listen(self, addr: str, sock: socket.socket) -> None:
        try:
            server = await asyncio.get_running_loop().create_server(lambda: ClientConnection(self), sock=sock)
        except (OSError, ValueError):  # closed meanwhile: the route went away
            sock.close()
            return
        if self.listeners.get(addr) is sock:
            self.listeners[addr] = server
        else:
            server.close()

    def close(self) -> None:
        for server in self.listeners.values():
            server.close()
        for conns in self.idle.values():
            for u in conns:
                u.close()

    async def housekeeping(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            now = time.monotonic()
            for key, conns in list(self.idle.items()):
                for u in [u for u in conns if now - u.idle_since > IDLE_UPSTREAM_S]:
                    conns.remove(u)
                    u.close()
                if not conns:
                    self.idle.pop(key, None)
            for rid, r in list(self.results.items()):
                if r.finished_at is not None and now - r.finished_at > RESULT_KEEP_S:
                    self.results.pop(rid, None)

    # -- containers ------------------------------------------------------------------------------------------
    async def pool_for(self, route: Route, query: bytes) -> Pool:
        """The pool a request goes to: the function's, or for a class the pool of the parameter values in the
        query string (`?root=%2F`), each value set its own pool."""
        pool = self.pools.get(route.function_id)
        if pool is None:
            raise LookupError("this web endpoint's app is no longer running")
        info = pool.definition.cls
        if info is None or not info.params:
            return pool
        types = {p.name: p.type for p in info.params}
        given = {k: v for k, v in urllib.parse.parse_qsl(query.decode("latin-1")) if k in types}
        values = bind_params(info, (), {k: _typed(types[k], k, v) for k, v in given.items()})
        return self.pools[await self.variants.create_variant(pool, pack_params(values), VariantOverrides())]

    async def connect(self, c: Container, port: int) -> Upstream:
        key = (c.id, port)
        conns = self.idle.get(key)
        while conns:
            u = conns.pop()
            if not u.closed:
                return u
        sock = await c.handle.web_connect(port)
        loop = asyncio.get_running_loop()
        try:
            _, u = await loop.create_connection(lambda: Upstream(self, key), sock=sock)
        except BaseException:
            sock.close()
            raise
        return u

    def log_request(self, function_id: str, r: Request, t0: float, c: Container | None) -> None:
        """The last REQUEST_LOG requests of each web function and Server (`shoal server requests`)."""
        log_ = self.requests.get(function_id)
        if log_ is None:
            log_ = self.requests[function_id] = collections.deque(maxlen=REQUEST_LOG)
        # Kept raw (this runs per request); requests_of() formats them when asked.
        log_.append((time.time(), r.method, r.url, r.status, time.monotonic() - t0, c.id if c else None))
        METRICS.web_request(self.pools.get(function_id), r.status, log_[-1][4])

    def requests_of(self, function_id: str, limit: int) -> list[dict[str, Any]]:
        entries = list(self.requests.get(function_id, ()))[-limit:] if limit > 0 else []
        return [{"t": t, "method": m.decode("latin-1"), "path": url.partition(b"?")[0].decode("latin-1"),
                 "status": status, "duration_ms": round(seconds * 1000, 3), "container_id": cid}
                for t, m, url, status, seconds, cid in entries]

    async def health_checks(self) -> None:
        """Every HEALTH_INTERVAL_S, each ready Server container's port must accept a connection; one that fails
        HEALTH_FAILURES checks in a row is replaced."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            checks = [c for p in list(self.pools.values()) if p.server is not None for c in p.ready()
                      if c.web_ports]
            results = await asyncio.gather(*(self._probe(c) for c in checks), return_exceptions=True)
            for c, error in zip(checks, results, strict=True):
                if error is None:
                    c.health_failures = 0
                    continue
                c.health_failures += 1
                if c.health_failures >= HEALTH_FAILURES and c.state == "ready":
                    self.health_failed(c, str(error) or type(error).__name__)

    async def _probe(self, c: Container) -> None:
        port = c.web_ports.get("")
        if port is None or c.handle is None:
            return
        sock = await asyncio.wait_for(c.handle.web_connect(port), 2.0)
        sock.close()

    def park(self, u: Upstream) -> None:
        """A keep-alive upstream connection whose response is done: reused by the next request there."""
        if u.closed:
            return
        u.idle_since = time.monotonic()
        u.sink = u.parser = None
        if u.transport is not None:
            # Its client may have paused it (back-pressure) as the response's last bytes went out; parked, it
            # must read again, or the next request on it would wait forever for its answer.
            u.transport.resume_reading()
        self.idle[u.key].append(u)


def _typed(kind: str, name: str, value: str) -> Any:
    from ..exception import InvalidError

    try:
        if kind == "int":
            return int(value)
        if kind == "bool":
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind == "bytes":
            return value.encode()
    except ValueError:
        raise InvalidError(f"parameter {name!r} must be {kind}, got {value!r}") from None
    return value


class ClientConnection(asyncio.Protocol):
    """A web client's connection. Requests are answered in order (pipelined ones wait their turn)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Request | None = None
        self.queue: collections.deque[Request] = collections.deque()
        self.task: asyncio.Task | None = None  # answers the requests, one after the other
        self.idle: asyncio.Future | None = None  # resolved when a request arrives while the task waits
        self.client_ip = ""
        self.local_ip = ""
        self.tunnel: Upstream | None = None  # after a WebSocket upgrade: bytes go straight through
        self.tunnel_pending: list[bytes] | None = None
        self.paused_upstream: Upstream | None = None  # whose reading this connection's back-pressure paused
        self.paused = False
        self.closed = False
        # The head's limits: bytes arriving between the end of one request's head and the next one's count
        # against PROXY_MAX_HEAD (a body's bytes do not).
        self.in_head = True
        self.head_bytes = 0
        # The bytes of the head so far plus the last read are within PROXY_MAX_HEAD, so a head ending in that read
        # is too and need not be measured (the common case: one small read per request).
        self.read_fits = True
        self.lingered: int | None = None  # after an error answer: bytes discarded since
        # One timer at most (the idle, head or linger limit), moved lazily: `deadline` changes per request, the
        # timer is re-made only when it fires early or the deadline comes sooner.
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: float | None = None
        self.head_timed = False  # the deadline is the head's (408 when it passes), not the idle one

    # -- transport events ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.client_ip, self.local_ip = peer[0], local[0]
        self.limit(IDLE_TIMEOUT_S, head=False)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.tunnel_pending is not None:
            self.tunnel_pending.append(data)
            return
        if self.lingered is not None:  # answered and closing: what still comes is dropped, up to a bound
            self.lingered += len(data)
            if self.lingered > limits.PROXY_LINGER_BYTES:
                self.close()
            return
        if self.in_head:
            self.head_bytes += len(data)
            self.read_fits = self.head_bytes <= MAX_HEAD
        else:
            self.read_fits = len(data) <= MAX_HEAD
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel_pending = [data[exc.args[0]:]] if exc.args and isinstance(exc.args[0], int) else []
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, HeadLimitError):
                self.refuse(refused.status, refused.body)
            else:
                self.refuse(400, "shoal: malformed HTTP request")
            return
        if self.in_head and self.head_bytes:  # a head under way, not whole yet
            if self.head_bytes > MAX_HEAD:
                self.refuse(431, HEAD_TOO_LARGE)
            elif not self.head_timed and not self.queue:
                self.limit(HEAD_TIMEOUT_S, head=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.tunnel is not None:
            self.tunnel.close()
        for r in [*self.queue]:
            if r.upstream is not None:
                r.upstream.close()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        r = self.queue[0] if self.queue else None
        u = self.tunnel or (r.upstream if r else None)
        if u is not None and u.transport is not None:
            u.transport.pause_reading()
            self.paused_upstream = u

    def resume_writing(self) -> None:
        u, self.paused_upstream = self.paused_upstream, None  # the one paused, even if its request is done
        if u is not None and u.transport is not None and not u.closed:
            u.transport.resume_reading()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    # -- time limits -----------------------------------------------------------------------------------------
    def limit(self, seconds: float, head: bool) -> None:
        """Close the connection in `seconds` unless a request comes (`head`: a head is under way: 408 then)."""
        loop = asyncio.get_running_loop()
        self.deadline, self.head_timed = loop.time() + seconds, head
        if self.timer is None or self.timer.when() > self.deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = loop.call_at(self.deadline, self.expire)

    def expire(self) -> None:
        self.timer = None
        if self.deadline is None or self.closed or self.tunnel is not None or self.tunnel_pending is not None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self.deadline:  # moved since this timer was set
            self.timer = loop.call_at(self.deadline, self.expire)
        elif self.lingered is not None or not self.head_timed:
            self.close()
        else:
            self.refuse(408, f"shoal: the request head did not arrive within {HEAD_TIMEOUT_S:g}s")

    # -- parser callbacks ------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = Request()

    def on_url(self, url: bytes) -> None:
        r = self.parsing
        r.url += url  # type: ignore[union-attr]
        if len(r.url) > MAX_URL:  # type: ignore[union-attr]
            raise HeadLimitError(414, f"shoal: request target longer than {MAX_URL} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.parsing.headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        r = self.parsing
        assert r is not None
        self.in_head, self.head_bytes, self.deadline, self.head_timed = False, 0, None, False
        if len(r.headers) > MAX_HEADERS:
            raise HeadLimitError(431, f"shoal: more than {MAX_HEADERS} header fields")
        if not self.read_fits and len(r.url) + sum(len(k) + len(v) + 4 for k, v in r.headers) > MAX_HEAD:
            raise HeadLimitError(431, HEAD_TOO_LARGE)  # (a head that came whole in one large read)
        p = self.parser
        r.method = p.get_method()
        r.version = p.get_http_version()
        r.keep_alive = p.should_keep_alive()
        r.upgrade = p.should_upgrade()
        te = length = None
        for k, v in r.headers:  # (one pass for both)
            k = k.lower()
            if k == b"content-length":
                length = v
            elif k == b"transfer-encoding":
                te = v
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise HeadLimitError(413, BODY_TOO_LARGE)  # before a byte of the body is read
        r.chunked = te is not None and b"chunked" in te.lower()
        self.queue.append(r)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.serve())
        elif self.idle is not None and not self.idle.done():
            self.idle.set_result(None)  # the connection's task answers the next request (no task per request)

    def on_body(self, body: bytes) -> None:
        r = self.parsing
        assert r is not None
        r.body_bytes += len(body)
        if r.body_bytes > MAX_BODY:  # (chunked: no length was declared)
            self.reply_and_close(413, BODY_TOO_LARGE)
            return
        if r.upstream is not None and not r.upstream.closed:
            r.upstream.write(b"%x\r\n%s\r\n" % (len(body), body) if r.chunked else body)
        else:
            r.body.append(body)
            if sum(map(len, r.body)) > BUFFER_HIGH:
                self.pause()

    def on_message_complete(self) -> None:
        r = self.parsing
        assert r is not None
        r.complete = True
        self.in_head = True
        if r.upstream is not None and r.chunked and not r.upstream.closed:
            r.upstream.write(b"0\r\n\r\n")
        if len(self.queue) > 1:
            self.pause()  # pipelined: read on once the earlier requests are answered

    # -- answering -------------------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def reply_and_close(self, status: int, body: str) -> None:
        self.write(simple_response(status, body, close=True))
        self.close()

    def refuse(self, status: int, body: str) -> None:
        """Answer a head the proxy will not read on, then close. The close lingers: this side's end is shut at
        once, and what the client still sends is read and dropped for a moment (a bounded number of bytes), so
        that the answer is not lost to a reset while the client is still writing its request."""
        if self.queue or self.transport is None or self.closed:  # an earlier request's answer is under way
            self.close()
            return
        self.write(simple_response(status, body, close=True))
        self.lingered = 0
        self.in_head = False
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.limit(limits.PROXY_LINGER_S, head=False)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    async def serve(self) -> None:
        """Answer the connection's requests in order, for as long as it lives."""
        while not self.closed:
            if not self.queue:
                # Waiting for the next request: a head begun must end in time, and a quiet connection closes.
                if self.head_bytes:
                    self.limit(HEAD_TIMEOUT_S, head=True)
                else:
                    self.limit(IDLE_TIMEOUT_S, head=False)
                self.idle = asyncio.get_running_loop().create_future()
                await self.idle
                self.idle = None
                continue
            r = self.queue[0]
            try:
                keep = await self.handle(r)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one request's failure must not take the proxy down
                log.exception("proxy: request failed")
                keep = False
                if not r.response_started:
                    self.write(simple_response(502, "shoal: the web endpoint failed", close=True))
            if self.queue and self.queue[0] is r:
                self.queue.popleft()
            if not keep or not r.keep_alive:
                self.close()
                return
            self.resume()

    async def handle(self, r: Request) -> bool:
        """Route, check and forward one request; True when the connection stays open for the next."""
        proxy = self.proxy
        path, _, query = r.url.partition(b"?")
        route = proxy.router.resolve(r.header(b"host"), self.local_ip)
        if route is None:
            self.write(simple_response(404, "shoal: no web endpoint at this address"))
            return self.skip_body(r)
        # A sessioned Server's session token routes the request to its container, and authenticates it; an
        # unknown (404) or ended (410) one is refused as bad credentials are.
        session = proxy.slots.session_for(route.function_id, header_text(r.header(b"modal-authorization")))
        pinned = None if isinstance(session, tuple) else session
        denied: tuple[int, str] | None = None
        if isinstance(session, tuple):
            denied = session
        elif route.requires_auth and pinned is None:
            denied = check_proxy_auth(header_text(r.header(b"modal-key")), header_text(r.header(b"modal-secret")),
                                      proxy.token_lookup, route.app_name)
        refusal = proxy.admission.decide(denied, self.client_ip, time.monotonic())
        if refusal is not None:
            extra = [("retry-after", str(refusal.retry_after))] if refusal.retry_after is not None else []
            self.write(simple_response(refusal.status, refusal.body, extra))
            return self.skip_body(r)
        if _RESULT_PARAM in query:
            return await self.serve_result(r, route, query)
        try:
            pool = await proxy.pool_for(route, query)
        except LookupError as exc:
            self.write(simple_response(404, f"shoal: {exc}"))
            return self.skip_body(r)
        except Exception as exc:  # noqa: BLE001 - bad class parameters in the query string
            self.write(simple_response(400, f"shoal: {exc}"))
            return self.skip_body(r)
        t0 = time.monotonic()
        # Web functions: REQUEST_TIMEOUT_S from now, waiting for a container included, then the 303.
        # Servers have no Modal-level request timeout.
        deadline = None if pool.server is not None else t0 + REQUEST_TIMEOUT_S
        inp = await self.take_slot(r, pool, deadline, pinned)
        if inp is None:
            proxy.log_request(pool.function_id, r, t0, None)
            return self.skip_body(r)
        if not inp.waiter.done():  # type: ignore[union-attr]  # still waiting at the deadline
            return self.redirect(r, route, inp)
        c = inp.container  # (cleared if the container ends under the request: it is still the one that had it)
        try:
            return await self.forward(r, route, c, deadline)  # type: ignore[arg-type]
        finally:
            proxy.log_request(pool.function_id, r, t0, c)
            if r.done is not None and not r.done.done():  # redirected, or its upstream is still closing
                r.done.add_done_callback(lambda _f: proxy.slots.web_release(inp))
            else:
                proxy.slots.web_release(inp)

    async def take_slot(self, r: Request, pool: Pool, deadline: float | None, pinned: Container | None = None
                        ) -> Input | None:
        """A slot in a container of the pool, or None once the client has been answered (503/429). Web functions
        wait in the pool's bounded queue while containers start: at the deadline a complete request is returned
        still waiting (the caller redirects it), another gets 503. Servers have no queue: 503 when none is
        ready (one is started), 429 when all are at `max_concurrency`."""
        slots = self.proxy.slots
        if pool.server is not None:
            got = slots.server_acquire(pool, header_text(r.header(b"modal-session-id")), pinned)
            if got == "none":
                # Starts failing (e.g. nothing listened on 0.0.0.0 within startup_timeout): say why, not "starting".
                failing = pool.start_failures or pool.autoscaler.backoff_until > time.monotonic()
                why = f"its last container start failed: {pool.last_start_error}" if (
                    failing and pool.last_start_error) else "one is starting"
                self.respond(r, 503, f"shoal: no container of this Server is ready; {why}; retry shortly",
                             [("retry-after", "1")])
                return None
            if got == "full":
                self.respond(r, 429, "shoal: every container of this Server is at its max_concurrency")
                return None
            return got  # type: ignore[return-value]
        if len(pool.queue) >= MAX_QUEUED:
            self.respond(r, 503, "shoal: too many requests waiting for this endpoint's containers",
                         [("retry-after", "1")])
            return None
        inp = slots.web_enqueue(pool)
        waiter = inp.waiter
        assert waiter is not None
        try:
            if not await until(waiter, deadline):
                if r.complete and not r.upgrade:
                    return inp
                self.respond(r, 503, "shoal: no container became free in time", [("retry-after", "1")])
            elif waiter.exception() is None:
                return inp
            else:
                self.respond(r, 503, f"shoal: the web endpoint's container could not start: {waiter.exception()}")
        except BaseException:
            slots.web_release(inp)
            raise
        slots.web_release(inp)
        return None

    def respond(self, r: Request, status: int, body: str, extra: list[tuple[str, str]] = ()) -> None:
        r.status = status
        self.write(simple_response(status, body, extra))

    def skip_body(self, r: Request) -> bool:
        """An answered request whose body was not wanted: keep the connection only if it was all read."""
        return r.complete and not r.upgrade

    async def forward(self, r: Request, route: Route, c: Container, deadline: float | None) -> bool:
        """Send the request to the container and its response back. A web function's response not started by
        the deadline becomes a 303 to its result URL."""
        try:
            u = await self.send(r, route, c, self)
        except OSError as exc:
            self.respond(r, 502, f"shoal: {exc}")
            return self.skip_body(r)
        self.resume()
        assert r.done is not None
        if not await until(r.done, deadline) and not r.response_started and not r.upgrade:
            return self.redirect(r, route, None, u)
        await until(r.done, None)  # a response on its way (or a WebSocket) runs as long as it runs
        return bool(r.done.result()) and not r.upgrade  # a refused upgrade leaves the parser unusable

    async def send(self, r: Request, route: Route, c: Container, sink: Any) -> Upstream:
        """Connect to the container's port and send the request (head and the body received so far; the rest
        follows as it arrives); the response goes to `sink`. OSError (for a 502) if it cannot."""
        port = c.web_ports.get(route.method or "")
        if port is None:
            raise OSError("the container serves no web endpoint for this URL")
        try:
            u = await self.proxy.connect(c, port)
        except OSError as exc:
            raise OSError(f"cannot reach the web endpoint's container: {exc}") from exc
        r.done = asyncio.get_running_loop().create_future()
        r.upstream = u
        u.start(self, r, sink)
        u.write(self.request_head(r))
        for chunk in r.body:
            u.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if r.chunked else chunk)
        r.body.clear()
        if r.complete and r.chunked:
            u.write(b"0\r\n\r\n")
        return u

    def request_head(self, r: Request) -> bytes:
        host = r.header(b"host") or b""
        lines = [b"%s %s HTTP/%s" % (r.method, r.url, r.version.encode())]
        # `Connection` is hop-by-hop: a client's `close` must not close the pooled upstream connection (a race
        # with its next request), except for an upgrade, which the container must see.
        drop = _STRIP if r.upgrade else _STRIP_HOP
        lines += [k + b": " + v for k, v in r.headers if k.lower() not in drop]
        lines.append(b"x-forwarded-for: " + self.client_ip.encode())
        lines.append(b"x-forwarded-proto: http")
        if host:
            lines.append(b"x-forwarded-host: " + host)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    # -- requests past REQUEST_TIMEOUT_S: 303 to a result URL ------------------------------------------------
    def redirect(self, r: Request, route: Route, inp: Input | None, u: Upstream | None = None) -> bool:
        """Answer 303 to a result URL; the request goes on behind it: its response (`u`, not started yet) goes
        into memory, or, still waiting for a container (`inp`), it is sent once one is free."""
        rid = secrets.token_urlsafe(12)
        held = Redirected(route.label)
        self.proxy.results[rid] = held
        if u is not None:
            u.sink = held
        if inp is not None:
            self.proxy.spawn(self.send_behind(r, route, inp, held))
        path, _, query = r.url.partition(b"?")
        sep = b"&" if query else b""
        location = path + b"?" + query + sep + f"{RESULT_PARAM}={rid}".encode()
        self.write(simple_response(303, "shoal: the request is still running; follow the redirect for its result",
                                   [("location", location.decode("latin-1"))]))
        return r.complete

    async def send_behind(self, r: Request, route: Route, inp: Input, held: Redirected) -> None:
        """A redirected request that was still waiting for a container: sent when one is free, its response
        held for the result URL."""
        try:
            assert inp.waiter is not None
            if not await until(inp.waiter, time.monotonic() + RESULT_KEEP_S):
                raise TimeoutError(f"no container became free within {RESULT_KEEP_S:g}s")
            await self.send(r, route, inp.waiter.result(), held)
            assert r.done is not None
            await until(r.done, None)
        except Exception as exc:  # noqa: BLE001 - the result URL says what happened
            held.data = [simple_response(503, f"shoal: the web endpoint could not run this request: {exc}")]
        finally:
            held.end(keep_alive=True)
            self.proxy.slots.web_release(inp)

    async def serve_result(self, r: Request, route: Route, query: bytes) -> bool:
        """A redirected call's response, at the endpoint it was made through (its auth already checked)."""
        rid = dict(urllib.parse.parse_qsl(query.decode("latin-1"))).get(RESULT_PARAM, "")
        held = self.proxy.results.get(rid)
        if held is None or held.label != route.label:
            self.write(simple_response(404, "shoal: no such call result (it expired or never existed)"))
            return r.complete
        if not await until(held.finished, time.monotonic() + REQUEST_TIMEOUT_S):
            self.write(simple_response(303, "shoal: the request is still running",
                                       [("location", r.url.decode("latin-1"))]))
            return r.complete
        if held.overflow:
            self.write(simple_response(502, "shoal: the response was too large to hold for its result URL"))
            return r.complete
        self.write(b"".join(held.data))
        return r.complete and held.keep_alive
