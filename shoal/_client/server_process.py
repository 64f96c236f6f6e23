"""Find the control plane for this state directory, starting one in the background if none answers.

Like `ray.init()`: the first SDK call or CLI command needs no set-up. A lock file makes concurrent first
calls start one server, not several.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from .._spec.config import home, server_file, server_url_override
from ..exception import ConnectionError as ShoalConnectionError

START_TIMEOUT_S = 30.0


@dataclass
class ServerInfo:
    url: str  # the one in use
    token: str
    pid: int | None = None
    # Every address of the control plane: several replicas behind `SHOAL_SERVER_URL=urlA,urlB` (tried in
    # order; a connection error moves to the next one).
    urls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.urls and self.url:
            self.urls = [self.url]

    def next_url(self) -> ServerInfo:
        """The same control plane at its next address (the first one after the last)."""
        if len(self.urls) < 2:
            return self
        i = self.urls.index(self.url) if self.url in self.urls else -1
        return ServerInfo(self.urls[(i + 1) % len(self.urls)], self.token, None, list(self.urls))


def parse_urls(value: str) -> list[str]:
    """`SHOAL_SERVER_URL`: one URL, or several separated by commas (replicas of one control plane)."""
    return [u.strip().rstrip("/") for u in value.split(",") if u.strip()]


def _healthy(url: str, timeout: float = 1.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v1/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def read_server_info() -> ServerInfo | None:
    """The running control plane as recorded in the state directory, without checking it answers."""
    override = server_url_override()
    token_path = home() / "token"
    token = os.environ.get("SHOAL_TOKEN") or (token_path.read_text().strip() if token_path.exists() else "")
    if override:
        urls = parse_urls(override)
        return ServerInfo(urls[0] if urls else override, token, urls=urls)
    try:
        info = json.loads(server_file().read_text())
    except (OSError, ValueError):
        return None
    return ServerInfo(info["url"], token, info.get("pid"))


def find_server() -> ServerInfo | None:
    """The control plane if it answers (at the first of its addresses that does)."""
    info = read_server_info()
    for _ in info.urls if info is not None else ():
        if _healthy(info.url):
            return info
        info = info.next_url()
    return None


def start_server_background(port: int = 0, wait: bool = True, host: str = "127.0.0.1") -> ServerInfo:
    """Start `python -m shoal.controlplane` detached, logging to SHOAL_HOME/server.log, and wait until it answers."""
    state = home()
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = find_server()
        if info is not None:
            return info
        server_file().unlink(missing_ok=True)
        with open(state / "server.log", "ab") as logf:
            subprocess.Popen(
                [sys.executable, "-m", "shoal.controlplane", "--host", host, "--port", str(port),
                 "--state-dir", str(state)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                close_fds=True,
            )
        if not wait:
            return ServerInfo("", "")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            info = find_server()
            if info is not None:
                return info
            time.sleep(0.02)
    raise ShoalConnectionError(
        f"the shoal control plane did not start within {START_TIMEOUT_S:.0f}s; see {state / 'server.log'}"
    )


def ensure_server() -> ServerInfo:
    """The control plane's address: the configured one, the running one, or a freshly started one."""
    if server_url_override():
        info = read_server_info()
        assert info is not None
        return info
    return find_server() or start_server_background()
