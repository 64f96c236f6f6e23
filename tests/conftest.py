"""Test fixtures: a real control plane per test session (or per test, for restart tests), real containers.

Test apps live in tests/apps/ and are imported as top-level modules, so their source ships as one file.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

APPS_DIR = Path(__file__).parent / "apps"
sys.path.insert(0, str(APPS_DIR))
PYTHON = sys.executable
# With SHOAL_TEST_DATABASE_URL=postgresql://… every control plane of the suite keeps its state in PostgreSQL, each
# in a schema of its own (dropped when it stops); otherwise in SQLite under its state directory.
TEST_DATABASE_URL = os.environ.get("SHOAL_TEST_DATABASE_URL", "").strip()


def drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class ControlPlane:
    """A `python -m shoal.controlplane` process with its own state directory (and database schema, on PostgreSQL).
    With `replica_id`, a `--replica` one: its own files under `home/replicas/<id>/` (controlplane/replicas.py)."""

    def __init__(self, home: Path, env: dict[str, str] | None = None, database_url: str | None = None,
                 replica_id: str | None = None) -> None:
        self.home = home
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.id = replica_id
        self.run_dir = home / "replicas" / replica_id if replica_id else home
        self.log_path = home / (f"server-{replica_id}.log" if replica_id else "server.log")
        self.schema: str | None = None  # the PostgreSQL schema holding its state, when on PostgreSQL
        url = database_url or TEST_DATABASE_URL
        if url and "SHOAL_DATABASE_URL" not in self.env:
            self.schema = f"t_{secrets.token_hex(6)}"
            self.env.update(SHOAL_DATABASE_URL=url, SHOAL_DATABASE_SCHEMA=self.schema)

    def start(self) -> ControlPlane:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "server.json").unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        replica = ["--replica"] if self.id else []
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "shoal.controlplane", *replica, "--port", "0", "--state-dir", str(self.home)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # Tests hand containers directories under the session's temporary root to leave side effects in:
            # shared into sandboxed containers (the control plane's own state dir stays hidden).
            env={**os.environ, "SHOAL_SESSION_GRACE_S": "3", "SHOAL_WEB_PORT": "0",
                 "SHOAL_SANDBOX_SHARE": str(self.home.parent), **self.env,
                 **({"SHOAL_REPLICA_ID": self.id} if self.id else {})},
        )
        deadline = time.monotonic() + 30
        while not (self.run_dir / "server.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"control plane failed to start: {self.log_path.read_text()}")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        return json.loads((self.run_dir / "server.json").read_text())["url"]

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean-up runs."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, keep_state: bool = False) -> None:
        """Stop it (SIGTERM) and drop its database schema, unless `keep_state` (a later `stop()` drops it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.schema is not None and not keep_state:
            drop_schema(self.env["SHOAL_DATABASE_URL"], self.schema)
            self.schema = None

    def store(self):  # -> shoal.controlplane.store.Store
        """A store opened on its state (call `open()`), for tests that look at it while it is stopped."""
        if self.schema is None:
            from shoal.controlplane.store import SQLiteStore

            return SQLiteStore(self.home / "state.db")
        from shoal.controlplane.store.postgres import PostgresStore

        return PostgresStore(self.env["SHOAL_DATABASE_URL"], schema=self.schema)

    def state_bytes(self) -> bytes:
        """Everything its store holds, as bytes: the SQLite files, or a dump of its PostgreSQL schema's rows."""
        if self.schema is None:
            return b"".join(p.read_bytes() for p in sorted(self.home.glob("state.db*")))
        import psycopg
        from psycopg import sql

        out = []
        with psycopg.connect(self.env["SHOAL_DATABASE_URL"], autocommit=True) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (self.schema,))]
            for table in tables:
                for row in conn.execute(sql.SQL("SELECT * FROM {}.{}").format(
                        sql.Identifier(self.schema), sql.Identifier(table))):
                    out.extend(v if isinstance(v, bytes) else str(v).encode() for v in row)
        return b"".join(out)


def _use_home(home: Path) -> None:
    from shoal._client.transport import reset_client

    os.environ["SHOAL_HOME"] = str(home)
    os.environ.pop("SHOAL_SERVER_URL", None)
    reset_client()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Where `Image.debian_slim()` is a root filesystem (controlplane/oci_images.py, debian_slim_mode), the Debian
    bases of the Pythons the tests use are built before the tests start (by xdist's controller, outside every
    test's time limit; once per machine: shoal.oci.base keeps them in SHOAL_BASE_CACHE)."""
    from shoal.backends.sandbox import layer_id_shift
    from shoal.controlplane.oci_images import debian_slim_mode
    from shoal.oci.base import BaseImageError, cache_base, default_cache

    if hasattr(session.config, "workerinput") or debian_slim_mode() != "rootfs":
        return
    for version in (f"{sys.version_info[0]}.{sys.version_info[1]}", "3.12"):  # 3.12: tests/apps/images_app.py
        try:
            cache_base(version, default_cache(), layer_id_shift())
        except BaseImageError as exc:
            if "cannot be provided on this machine" not in str(exc):
                raise  # (a missing interpreter fails the tests that use it, saying so)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One control plane shared by the tests of this session (or xdist worker)."""
    cp = ControlPlane(tmp_path_factory.mktemp("shoal-home")).start()
    _use_home(cp.home)
    yield cp
    cp.stop()


def own_control_plane(home: Path, env: dict[str, str] | None = None) -> Iterator[ControlPlane]:
    """A control plane of its own (with `env`), the SDK's while it runs; the one before is the SDK's again after."""
    from shoal._client.transport import reset_client

    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(home, env=env).start()
    _use_home(cp.home)
    yield cp
    cp.stop()
    if previous:
        _use_home(Path(previous))
    else:
        os.environ.pop("SHOAL_HOME", None)
        reset_client()


def venv_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane that builds `Image.debian_slim()` as a virtual environment (SHOAL_DEBIAN_SLIM=venv), for a
    module's `control_plane` fixture where its tests are about venv images."""
    yield from own_control_plane(tmp_path_factory.mktemp("venv-home"), {"SHOAL_DEBIAN_SLIM": "venv"})


@pytest.fixture
def private_control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane of this test alone, for tests that kill or restart it."""
    yield from own_control_plane(tmp_path / "home")


def run_script(path: Path | str, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a Python script against the current control plane, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([PYTHON, str(path), *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=cwd)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002 - subprocess.run's name
    """Run the `shoal` CLI (as `python -m shoal.cli`) against the current control plane."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([PYTHON, "-m", "shoal.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=cwd, input=input)


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.1) -> bool:
    """Poll until `predicate()` is true (True) or `timeout` passes (False): a generous deadline, not a timing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
