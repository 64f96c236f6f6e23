"""A "remote host" on this machine: a network namespace on a veth pair with two addresses in 198.18.0.0/15,
serving HTTP on port 8080 (`/hello`, `/bytes/N`). For the container network's test and bench; needs root and
`ip`. No traffic leaves the machine."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/bytes/"):
            n = int(self.path.rsplit("/", 1)[1]); self.send_response(200)
            self.send_header("Content-Length", str(n)); self.end_headers()
            chunk = b"x" * (1 << 20)
            while n > 0:
                self.wfile.write(chunk[:n]); n -= len(chunk)
            return
        body = b"hello from the remote host"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""
PORT = 8080


class UnavailableError(Exception):
    """This machine cannot make one (not root, no `ip`, no network namespaces)."""


@dataclass
class RemoteHost:
    ns: str
    veth: str  # the host's end of the veth pair
    host_side: str  # its address: one of the host's own (containers must not reach it)
    addresses: list[str]  # the remote host's two addresses
    server: subprocess.Popen | None = field(default=None, repr=False)

    def url(self, path: str = "/hello", i: int = 0) -> str:
        return f"http://{self.addresses[i]}:{PORT}{path}"

    def remove(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def make() -> RemoteHost:
    if os.geteuid() != 0:
        raise UnavailableError("making a network namespace for the remote host needs root")
    if not shutil.which("ip"):
        raise UnavailableError("`ip` (iproute2) is not installed")
    tag = secrets.token_hex(3)
    for _ in range(20):  # a /24 no other run on this machine routes now
        net = f"198.{random.choice((18, 19))}.{random.randint(1, 254)}"
        if not subprocess.run(["ip", "-4", "route", "show", f"{net}.0/24"], capture_output=True, text=True).stdout:
            break
    remote = RemoteHost(f"shoal-t{tag}", f"st{tag}h", f"{net}.1", [f"{net}.2", f"{net}.3"])
    try:
        _ip("netns", "add", remote.ns)
    except subprocess.CalledProcessError as exc:
        raise UnavailableError(f"cannot make a network namespace here: {exc.stderr.decode().strip()}") from None
    try:
        _ip("link", "add", remote.veth, "type", "veth", "peer", "name", f"st{tag}r")
        _ip("link", "set", f"st{tag}r", "netns", remote.ns)
        _ip("addr", "add", f"{remote.host_side}/24", "dev", remote.veth)
        _ip("link", "set", remote.veth, "up")
        for a in remote.addresses:
            _ip("-n", remote.ns, "addr", "add", f"{a}/24", "dev", f"st{tag}r")
        _ip("-n", remote.ns, "link", "set", f"st{tag}r", "up")
        _ip("-n", remote.ns, "link", "set", "lo", "up")
        remote.server = subprocess.Popen(["ip", "netns", "exec", remote.ns, sys.executable, "-c", SERVER, str(PORT)])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((remote.addresses[0], PORT), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the remote host's server did not start") from None
                time.sleep(0.1)
    except BaseException:
        remote.remove()
        raise
    return remote
