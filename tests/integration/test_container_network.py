"""A container's network (docs/sandbox.md, "Network"): outbound traffic reaches a "remote host" (a network
namespace this test makes, with a veth pair and an address in 198.18.0.0/15), never the host's loopback, its own
addresses or private ranges; `block_network` reaches nothing; an allow-list lets only its CIDRs through.

Needs root (network namespaces), `ip` and pasta; skipped, saying which is missing, elsewhere. No traffic leaves
the machine."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ..conftest import wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces need Linux")

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


@dataclass
class RemoteHost:
    ns: str
    host_side: str  # the host's end of the veth pair (an address of the host: must be unreachable)
    addresses: list[str]  # the remote host's two addresses
    port: int = 8080


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def make_remote_host() -> tuple[RemoteHost, subprocess.Popen]:
    """A network namespace with two addresses on a veth pair routed from the host, serving HTTP on port 8080."""
    if os.geteuid() != 0:
        pytest.skip("making a network namespace for the remote host needs root")
    if not shutil.which("ip"):
        pytest.skip("`ip` (iproute2) is not installed")
    if not shutil.which("pasta"):
        pytest.skip("pasta (the passt package) is not installed: containers have no outbound network")
    tag = secrets.token_hex(3)
    ns, veth_h, veth_r = f"shoal-t{tag}", f"st{tag}h", f"st{tag}r"
    for _ in range(20):
        net = f"198.{random.choice((18, 19))}.{random.randint(1, 254)}"
        if not subprocess.run(["ip", "-4", "route", "show", f"{net}.0/24"], capture_output=True, text=True).stdout:
            break
    try:
        _ip("netns", "add", ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")
    try:
        _ip("link", "add", veth_h, "type", "veth", "peer", "name", veth_r)
        _ip("link", "set", veth_r, "netns", ns)
        _ip("addr", "add", f"{net}.1/24", "dev", veth_h)
        _ip("link", "set", veth_h, "up")
        for a in (f"{net}.2/24", f"{net}.3/24"):
            _ip("-n", ns, "addr", "add", a, "dev", veth_r)
        _ip("-n", ns, "link", "set", veth_r, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, "8080"])
    except BaseException:
        remove_remote_host(ns, veth_h, None)
        raise
    remote = RemoteHost(ns, f"{net}.1", [f"{net}.2", f"{net}.3"])

    def up() -> bool:
        try:
            socket.create_connection((remote.addresses[0], 8080), timeout=1).close()
            return True
        except OSError:
            return False

    assert wait_for(up, timeout=30), "the remote host's server did not start"
    return remote, server


def remove_remote_host(ns: str, veth_h: str, server: subprocess.Popen | None) -> None:
    if server is not None:
        server.kill()
        server.wait()
    subprocess.run(["ip", "link", "del", veth_h], capture_output=True)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def remote_host() -> Iterator[RemoteHost]:
    remote, server = make_remote_host()
    try:
        yield remote
    finally:
        remove_remote_host(remote.ns, f"st{remote.ns.removeprefix('shoal-t')}h", server)


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """A TCP service of the host on all its addresses (loopback included) that greets whoever connects."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"host-secret")

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


@pytest.fixture(scope="module")
def network_app(control_plane, remote_host, listener) -> Iterator:
    log = (control_plane.home / "server.log").read_text()
    if "isolation=process" in log:
        pytest.skip("containers are not sandboxed here: " + log.split("isolation=process", 1)[1].splitlines()[0])
    os.environ["SHOAL_TEST_LISTENER_URL"] = f"http://127.0.0.1:{listener}"  # in the function's environment
    import network_app

    with network_app.app.run(quiet=True):
        yield network_app


def _host_connect(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=3) as s:
        return "connected:" + s.recv(64).decode()


def test_a_container_reaches_a_remote_host(network_app, remote_host) -> None:
    for address in remote_host.addresses:
        assert network_app.fetch.remote(f"http://{address}:8080/hello") == "hello from the remote host"


def test_the_hosts_loopback_and_addresses_are_unreachable(network_app, remote_host, listener) -> None:
    assert _host_connect("127.0.0.1", listener) == "connected:host-secret"  # there, seen from the host
    assert _host_connect(remote_host.host_side, listener) == "connected:host-secret"
    # Inside, 127.0.0.1 is the container's own loopback, though LISTENER_URL names the host's port.
    assert network_app.connect.remote("127.0.0.1", listener) == "ConnectionRefusedError:111"
    assert network_app.connect.remote("127.0.0.1", 5432) == "ConnectionRefusedError:111"  # DATABASE_URL's
    # The host's other addresses (pasta's sockets are the host's): refused by the container's rules.
    assert network_app.connect.remote(remote_host.host_side, listener) == "PermissionError:13"


def test_private_ranges_are_unreachable(network_app) -> None:
    for host in ("10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1"):
        assert network_app.connect.remote(host, 80) == "PermissionError:13", host


def test_block_network_reaches_nothing(network_app, remote_host) -> None:
    out = network_app.connect_blocked.remote(remote_host.addresses[0], 8080)
    assert out["interfaces"] == ["lo"]
    assert out["connect"] == "OSError:101"  # ENETUNREACH: no route at all
    assert out["server_url"] == "ConnectionRefusedError:111"  # not even the control plane's URL
    # (the same function without block_network reaches both)
    assert network_app.fetch.remote(f"http://{remote_host.addresses[0]}:8080/hello").startswith("hello")


PROBE = r"""
import socket, sys
for host in sys.argv[1:]:
    try:
        socket.create_connection((host, 8080), timeout=3).close(); print(host, "connected")
    except OSError as exc:
        print(host, type(exc).__name__)
"""


def test_an_allow_list_lets_only_its_cidrs_through(remote_host, tmp_path) -> None:
    """The backend's knob (the Sandbox API's `outbound_cidr_allowlist`), on a real sandbox of the local backend:
    an idle container, and a command run inside it as `shoal container exec` does."""
    from shoal._spec.definitions import FunctionDefinition
    from shoal.backends.base import ContainerSpec
    from shoal.backends.local import LocalBackend
    from shoal.backends.local_exec import sandbox_runtime

    backend = LocalBackend(state_dir=tmp_path / "state")
    if backend.isolation != "sandbox":
        pytest.skip(f"containers are not sandboxed here: {backend.availability.reason}")
    allowed, other = remote_host.addresses

    async def run() -> str:
        spec = ContainerSpec(container_id=f"ta-net{secrets.token_hex(4)}", function_id="fu-net", app_id="ap-net",
                             definition=FunctionDefinition(tag="probe"), env={}, idle=True,
                             outbound_cidr_allowlist=[f"{allowed}/32"])
        handle = await backend.start(spec, None)
        try:
            deadline = time.monotonic() + 30
            while (runtime := sandbox_runtime(handle.pid)) is None:
                assert time.monotonic() < deadline, "the sandbox did not come up"
                await asyncio.sleep(0.05)
            cmd = ["nsenter", f"--target={runtime}", "--user", "--mount", "--pid", "--net", "--root", "--wd", "--",
                   backend.python, "-I", "-c", PROBE, allowed, other, "1.1.1.1"]
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            return out.decode()
        finally:
            handle.kill()
            await handle.wait()

    out = asyncio.run(run())
    assert f"{allowed} connected" in out, out
    assert f"{other} PermissionError" in out, out
    assert "1.1.1.1 PermissionError" in out, out
