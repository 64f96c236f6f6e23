"""The ingress proxy's HTTP plumbing shared by its client and upstream sides: canned responses, one request's
state, waiting on a future until a deadline, listening sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .proxy_upstream import Upstream

_REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 408: "Request Timeout", 413: "Payload Too Large", 414: "URI Too Long",
            429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def simple_response(status: int, body: str, extra: list[tuple[str, str]] = (), close: bool = False) -> bytes:
    data = body.encode()
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "content-type: text/plain; charset=utf-8",
            f"content-length: {len(data)}", *(f"{k}: {v}" for k, v in extra)]
    if close:
        head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose accepted connections have TCP_NODELAY (Linux copies it to them): without
    it a response written in two pieces waits for the client's delayed ACK, 40 ms, whatever the event loop
    sets (uvloop leaves sockets of `create_server(sock=...)` as they are)."""
    sock = socket.create_server((host, port), backlog=4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class Request:
    """One request of a client connection, from its head to the end of its response."""

    __slots__ = ("method", "url", "version", "headers", "keep_alive", "upgrade", "chunked", "body", "body_bytes",
                 "complete", "upstream", "done", "response_started", "status")

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.upgrade = False
        self.chunked = False
        self.body: list[bytes] = []  # received before the upstream was connected
        self.body_bytes = 0
        self.complete = False  # the whole request (its body too) was received
        self.upstream: Upstream | None = None
        self.done: asyncio.Future | None = None
        self.response_started = False
        self.status = 0  # the response's, once known (for the request log)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


async def until(fut: asyncio.Future, deadline: float | None) -> bool:
    """Wait for `fut` until `deadline` (monotonic; None: no limit); True if it is done. Unlike
    `wait_for(shield(fut))` this makes no task: one timer and one callback (the proxy does it per request)."""
    if fut.done():
        return True
    loop = asyncio.get_running_loop()
    wake = loop.create_future()  # cancelling the waiting task cancels this one, never `fut`

    def fire(_f: object = None) -> None:
        if not wake.done():
            wake.set_result(None)

    fut.add_done_callback(fire)
    timer = loop.call_later(max(0.0, deadline - time.monotonic()), fire) if deadline is not None else None
    try:
        await wake
    finally:
        if timer is not None:
            timer.cancel()
        fut.remove_done_callback(fire)
    return fut.done()


def header_text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
