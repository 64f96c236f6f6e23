"""Sockets inside a container's network namespace, made from the control plane's side.

A sandboxed container has its own network namespace (with its own loopback, and pasta's interface or none:
backends/egress.py), so the ingress proxy cannot reach its HTTP server by address. Instead the proxy's thread
briefly enters the container's namespace (`setns`), creates a socket there and returns: the socket stays in the
namespace it was created in, so connecting it to 127.0.0.1:PORT reaches the container's own loopback. Two
syscalls per new connection; no process runs inside the container for this and nothing is installed
(connections are then kept alive by the proxy).
"""

from __future__ import annotations

import ctypes
import os
import socket

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_host_ns: int | None = None


def open_netns(pid: int) -> int:
    """A descriptor of process `pid`'s network namespace (kept open: the namespace outlives pid reuse)."""
    return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(ns_fd: int) -> socket.socket:
    """An unconnected, non-blocking TCP socket in the namespace `ns_fd`; the calling thread is back in its own
    namespace when this returns."""
    global _host_ns
    if _host_ns is None:
        _host_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    _setns(ns_fd)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        _setns(_host_ns)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
