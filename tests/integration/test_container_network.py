"""A container's network (docs/sandbox.md, "Network"): outbound traffic reaches a "remote host" (a network
namespace this test makes, with a veth pair and an address in 198.18.0.0/15), never the host's loopback, its own
addresses or private ranges; `block_network` reaches nothing; an allow-list lets only its CIDRs through.

Needs root (network namespaces), `ip` and pasta; skipped, saying which is missing, elsewhere. No traffic leaves
the machine."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from bench import remote_host as remote_host_mod
from bench.remote_host import RemoteHost

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces need Linux")

@pytest.fixture(scope="module")
def remote_host() -> Iterator[RemoteHost]:
    if not shutil.which("pasta"):
        pytest.skip("pasta (the passt package) is not installed: containers have no outbound network")
    try:
        remote = remote_host_mod.make()
    except remote_host_mod.UnavailableError as exc:
        pytest.skip(str(exc))
    try:
        yield remote
    finally:
        remote.remove()


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
    # The host's other addresses (pasta's sockets are the host's): refused by the container's rules. This one
    # appeared with the test's remote host, perhaps after the container started (a warm one): its rules get it
    # within about a second (LocalBackend._host_watch_loop), and keep it.
    deadline = time.monotonic() + 30
    while (seen := network_app.connect.remote(remote_host.host_side, listener)) != "PermissionError:13":
        assert seen == "connected:host-secret" and time.monotonic() < deadline, seen
        time.sleep(0.5)
    for _ in range(3):
        assert network_app.connect.remote(remote_host.host_side, listener) == "PermissionError:13"


def test_a_host_address_that_appears_later_is_blocked_in_running_containers(network_app, listener) -> None:
    """An interface brought up while containers run (a VPN, a bridge): its address reaches the host's services
    through pasta, so running containers' rules get it too."""
    assert network_app.connect.remote("127.0.0.1", listener) == "ConnectionRefusedError:111"  # a container runs
    link, address = f"stl{secrets.token_hex(3)}", "198.19.201.1"
    subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", link + "p"], check=True,
                   capture_output=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", link], check=True, capture_output=True)
        for dev in (link, link + "p"):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True, capture_output=True)
        assert _host_connect(address, listener) == "connected:host-secret"  # the host's, from the host
        deadline = time.monotonic() + 30
        while (seen := network_app.connect.remote(address, listener)) != "PermissionError:13":
            assert time.monotonic() < deadline, seen
            time.sleep(0.5)
    finally:
        subprocess.run(["ip", "link", "del", link], capture_output=True)


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
            backend.shutdown()  # (its pool of network namespaces)

    out = asyncio.run(run())
    assert f"{allowed} connected" in out, out
    assert f"{other} PermissionError" in out, out
    assert "1.1.1.1 PermissionError" in out, out
