"""Tunnels of sandboxes (`Sandbox.tunnels()`): for each port a sandbox declares (`encrypted_ports`,
`unencrypted_ports`, `h2_ports`), the control plane listens on an address of its own and splices each connection
to that port inside the sandbox's network namespace (`ContainerHandle.web_connect`, as the ingress proxy reaches
containers). With the ingress proxy on loopback (SHOAL_WEB_HOST unset), the address is a loopback address of the
tunnel's own (127.64.0.0/10, as web URLs have) on the ingress proxy's port, which every container with a network
reaches too (its forwarded loopback); otherwise a free port on SHOAL_WEB_HOST. A tunnel carries TCP, so
HTTP, WebSockets and other protocols all work; it has no TLS here (the URL is `http://`). Connections past
MAX_CONNECTIONS per tunnel are refused. The listeners close when the sandbox ends."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from .web_routes import label_address

if TYPE_CHECKING:
    from .core.sandboxes import Sandbox

log = logging.getLogger("shoal.sandbox")
MAX_CONNECTIONS = 256
CHUNK = 65536


class Tunnels:
    def __init__(self, router: Any) -> None:
        self.host = os.environ.get("SHOAL_WEB_HOST", "127.0.0.1")
        self.router = router  # the ingress proxy's routes: its port (`router.port`)

    def opened(self, sb: Sandbox) -> None:
        """The sandbox runs: listen for each of its ports."""
        b = sb.body
        for port in sorted({*b.encrypted_ports, *b.unencrypted_ports, *b.h2_ports}):
            sock = self._listen(f"sandbox-{sb.id}-{port}")
            sock.setblocking(False)
            listener = _Listener(sb, port, sock)
            sb.ports[port] = listener
            listener.task = asyncio.get_running_loop().create_task(listener.serve())

    def _listen(self, label: str) -> socket.socket:
        web_port = getattr(self.router, "port", None)
        if self.host == "127.0.0.1" and web_port:
            for attempt in range(4):
                try:
                    return socket.create_server((label_address(label, attempt), web_port))
                except OSError:
                    continue  # taken (a web label's address, by chance): the next one
        return socket.create_server((self.host, 0), family=socket.AF_INET6 if ":" in self.host else socket.AF_INET)

    def closed(self, sb: Sandbox) -> None:
        for listener in sb.ports.values():
            listener.close()

    def describe(self, sb: Sandbox) -> dict[int, dict[str, Any]]:
        out = {}
        for port, listener in sb.ports.items():
            host, local = listener.sock.getsockname()[:2]
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
