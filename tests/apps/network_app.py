"""Functions for tests/integration/test_container_network.py: what a container's network reaches."""

import os
import socket
import urllib.request

import shoal as modal

app = modal.App("network")
# Loopback URLs in a function's environment (as a secret): none of them may lead to the host's services.
HOST_URLS = modal.Secret.from_dict({
    "LISTENER_URL": os.environ.get("SHOAL_TEST_LISTENER_URL", "http://127.0.0.1:9"),
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
})


def _connect(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.settimeout(3)
            return "connected:" + s.recv(64).decode(errors="replace")
    except OSError as exc:
        return f"{type(exc).__name__}:{exc.errno}"


@app.function(secrets=[HOST_URLS])
def connect(host: str, port: int) -> str:
    """'connected:<greeting>' or the error's name and errno."""
    return _connect(host, port)


@app.function()
def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()
    except OSError as exc:
        return f"{type(exc).__name__}:{getattr(exc, 'errno', None) or getattr(exc, 'reason', '')}"


@app.function(block_network=True)
def connect_blocked(host: str, port: int) -> dict:
    return {"connect": _connect(host, port), "interfaces": sorted(os.listdir("/sys/class/net")),
            "server_url": _connect("127.0.0.1", int(os.environ["SHOAL_SERVER_URL"].rsplit(":", 1)[1]))}
