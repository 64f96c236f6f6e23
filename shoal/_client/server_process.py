"""Find the control plane for this state directory, starting one in the background if none answers.

Like `ray.init()`: the first SDK call or CLI command needs no set-up. A lock file makes concurrent first
calls start one server, not several. A control plane started this way is recorded (`auto_started`: its pid):
when it dies (its `server.json` stays behind, naming it), clients start it again (`restart_if_dead`). One
started otherwise (`shoal up` in a terminal, a supervisor) is left to whoever started it.

The control plane runs in the state directory, with the caller's shoal first on its import path: neither
depends on the caller's working directory (a `shoal/` folder there is not imported in its place).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .._spec.config import home, package_dir, server_file, server_url_override
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


def _auto_started_file() -> Path:
    return home() / "auto_started"


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # a child of this process (it started it): reaped just now
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped by the process that started it) is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def restart_if_dead(recorded: ServerInfo | None) -> ServerInfo | None:
    """The control plane `recorded` in server.json does not answer: if a client auto-started it and its process
    is gone (killed, crashed: a clean stop removes server.json), start it again and return where it listens."""
    if recorded is None or recorded.pid is None or server_url_override():
        return None
    try:
        auto_pid = int(_auto_started_file().read_text())
    except (OSError, ValueError):
        return None
    if auto_pid != recorded.pid or _alive(recorded.pid):
        return None
    return start_server_background()


def _command(host: str, port: int, state: Path) -> tuple[list[str], dict[str, str]]:
    """The control plane's command line and environment: the caller's shoal first on its import path, and not
    the working directory (`-P`, Python 3.11+; it runs in the state directory in any case)."""
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    root = str(package_dir().parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                 if p and p != root)])
    return ([sys.executable, *safe_path, "-m", "shoal.controlplane", "--host", host, "--port", str(port),
             "--state-dir", str(state)], env)


def start_server_background(port: int = 0, wait: bool = True, host: str = "127.0.0.1") -> ServerInfo:
    """Start `python -m shoal.controlplane` detached, logging to SHOAL_HOME/server.log, and wait until it answers."""
    state = home().resolve()
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = find_server()
        if info is not None:
            return info
        server_file().unlink(missing_ok=True)
        argv, env = _command(host, port, state)
        with open(state / "server.log", "ab") as logf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, cwd=state, env=env)
        _auto_started_file().write_text(str(proc.pid))
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
