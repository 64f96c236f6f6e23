"""Tunnels of sandboxes (`Sandbox.tunnels()`): for each port a sandbox declares (`encrypted_ports`,
`unencrypted_ports`, `h2_ports`), the control plane listens on a port of its own, on the ingress proxy's host
(SHOAL_WEB_HOST, default 127.0.0.1), and splices each connection to that port inside the sandbox's network
namespace (`ContainerHandle.web_connect`, as the ingress proxy reaches containers). A tunnel carries TCP, so
HTTP, WebSockets and other protocols all work; it has no TLS here (the URL is `http://`). Connections past
MAX_CONNECTIONS per tunnel are refused. The listeners close when the sandbox ends."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.sandboxes import Sandbox

log = logging.getLogger("shoal.sandbox")
MAX_CONNECTIONS = 256
CHUNK = 65536


class Tunnels:
    def __init__(self) -> None:
        self.host = os.environ.get("SHOAL_WEB_HOST", "127.0.0.1")

    def opened(self, sb: Sandbox) -> None:
        """The sandbox runs: listen for each of its ports."""
        b = sb.body
        for port in sorted({*b.encrypted_ports, *b.unencrypted_ports, *b.h2_ports}):
            sock = socket.create_server((self.host, 0), family=socket.AF_INET6 if ":" in self.host else
                                        socket.AF_INET)
            sock.setblocking(False)
            listener = _Listener(sb, port, sock)
            sb.ports[port] = listener
            listener.task = asyncio.get_running_loop().create_task(listener.serve())

    def closed(self, sb: Sandbox) -> None:
        for listener in sb.ports.values():
            listener.close()

    def describe(self, sb: Sandbox) -> dict[int, dict[str, Any]]:
        out = {}
        for port, listener in sb.ports.items():
            host, local = self.host, listener.sock.getsockname()[1]
            shown = f"[{host}]" if ":" in host else host
            out[port] = {"url": f"http://{shown}:{local}", "host": host, "port": local,
                         "unencrypted_host": host if port in sb.body.unencrypted_ports else None,
                         "unencrypted_port": local if port in sb.body.unencrypted_ports else None}
        return out


class _Listener:
    def __init__(self, sb: Sandbox, port: int, sock: socket.socket) -> None:
        self.sb = sb
        self.port = port
        self.sock = sock
        self.task: asyncio.Task | None = None
        self.conns: set[asyncio.Task] = set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(self.sock)
            if len(self.conns) >= MAX_CONNECTIONS or self.sb.handle is None:
                client.close()
                continue
            task = loop.create_task(self._splice(client))
            self.conns.add(task)
            task.add_done_callback(self.conns.discard)

    async def _splice(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        client.setblocking(False)
        try:
            assert self.sb.handle is not None
            upstream = await self.sb.handle.web_connect(self.port)
        except OSError:
            client.close()
            return
        try:
            await asyncio.gather(_pipe(loop, client, upstream), _pipe(loop, upstream, client))
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for t in list(self.conns):
            t.cancel()
        self.sock.close()


async def _pipe(loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = await loop.sock_recv(src, CHUNK)
            if not data:
                break
            await loop.sock_sendall(dst, data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
