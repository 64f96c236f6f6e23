"""Several control planes (replicas) on one PostgreSQL schema behind one client address list.

Each test starts two replicas on a fresh schema sharing one state directory; the client lists both
(`SHOAL_SERVER_URL=urlA,urlB`). Killing a replica with SIGKILL must lose nothing acknowledged and return every
result once, through the other.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import PYTHON, TEST_DATABASE_URL, ControlPlane, drop_schema, wait_for

DATABASE_URL = TEST_DATABASE_URL or os.environ.get("SHOAL_REPLICAS_DATABASE_URL",
                                                   "postgresql://postgres@127.0.0.1:5432/test")
# Short leases keep the tests quick; SHOAL_TEST_LEASE_TTL_S=5 SHOAL_TEST_LEASE_RENEW_S=1 measures the defaults.
LEASE_TTL_S = float(os.environ.get("SHOAL_TEST_LEASE_TTL_S", "2"))
LEASE_RENEW_S = float(os.environ.get("SHOAL_TEST_LEASE_RENEW_S", "0.4"))


def _postgres_reachable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(DATABASE_URL, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means: skip
        return f"PostgreSQL at {DATABASE_URL} is unreachable: {str(exc).strip()[:200]}"


_why_not = _postgres_reachable()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[ControlPlane, ControlPlane]]:
    from shoal._client.transport import reset_client

    home = tmp_path / "home"
    schema = f"t_{secrets.token_hex(6)}"
    env = {"SHOAL_DATABASE_URL": DATABASE_URL, "SHOAL_DATABASE_SCHEMA": schema,
           "SHOAL_LEASE_TTL_S": str(LEASE_TTL_S), "SHOAL_LEASE_RENEW_S": str(LEASE_RENEW_S)}
    a = ControlPlane(home, env, replica_id="cp-a").start()
    b = ControlPlane(home, env, replica_id="cp-b").start()
    saved = {k: os.environ.get(k) for k in ("SHOAL_HOME", "SHOAL_SERVER_URL")}
    os.environ["SHOAL_HOME"] = str(home)
    os.environ["SHOAL_SERVER_URL"] = f"{a.url},{b.url}"
    reset_client()
    try:
        yield a, b
    finally:
        for r in (a, b):
            r.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_client()
        drop_schema(DATABASE_URL, schema)


def _use(*urls: str) -> None:
    from shoal._client.transport import reset_client

    os.environ["SHOAL_SERVER_URL"] = ",".join(urls)
    reset_client()


def test_second_single_node_control_plane_is_refused_beside_replicas(replicas: tuple[ControlPlane, ControlPlane],
                                                                     tmp_path: Path) -> None:
    a, _b = replicas
    other = subprocess.run(
        [PYTHON, "-m", "shoal.controlplane", "--port", "0", "--state-dir", str(tmp_path / "single")],
        env={**os.environ, **a.env, "SHOAL_SERVER_URL": ""}, capture_output=True, text=True, timeout=60)
    assert other.returncode == 1
    assert "--replica" in other.stderr


def test_remote_through_either_replica(replicas: tuple[ControlPlane, ControlPlane]) -> None:
    import replicas_app

    import shoal
    from shoal._client.transport import get_client

    a, b = replicas
    with replicas_app.app.run(quiet=True):
        assert replicas_app.square.remote(7) == 49  # the app was created through A: A owns it
        _use(b.url, a.url)
        assert replicas_app.square.remote(8) == 64  # B forwards to A
        assert sorted(replicas_app.square.map(range(20))) == [x * x for x in range(20)]
        # B lists A's containers too.
        listed = get_client().call("GET", "/v1/containers")["containers"]
        assert any(c["function"] == "square" for c in listed), listed
        apps = get_client().call("GET", "/v1/apps")["apps"]  # B lists the functions of A's app
        assert any("square" in a["functions"] for a in apps if a["state"] == "running"), apps
        _use(a.url, b.url)

    # A Queue getter blocked at A gets an item put through B.
    q = shoal.Queue.from_name("replicas-q", create_if_missing=True)
    got: list = []
    getter = threading.Thread(target=lambda: got.append(q.get(timeout=30)), daemon=True)
    getter.start()
    time.sleep(0.5)  # its request waits at A now
    _use(b.url, a.url)
    shoal.Queue.from_name("replicas-q").put("through B")
    getter.join(timeout=30)
    assert got == ["through B"]
    assert shoal.Queue.from_name("replicas-q").len() == 0  # handed out once


def test_sigkill_of_the_owner_mid_map_loses_nothing_and_returns_each_result_once(
        replicas: tuple[ControlPlane, ControlPlane], tmp_path: Path) -> None:
    import replicas_app

    a, b = replicas
    markers = tmp_path / "markers"
    markers.mkdir()
    n = 500
    results: list = []
    errors: list = []
    with replicas_app.app.run(quiet=True):
        assert replicas_app.square.remote(2) == 4  # warm: the app runs at A

        def run_map() -> None:
            try:
                results.extend(replicas_app.slow_square.map(range(n), kwargs={"marker_dir": str(markers)}))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        mapper = threading.Thread(target=run_map, daemon=True)
        mapper.start()
        assert wait_for(lambda: len(os.listdir(markers)) >= 60, timeout=60), "the map did not start"
        killed_at = time.time()
        a.kill()
        mapper.join(timeout=120)
        assert not mapper.is_alive(), "the map did not finish after its control plane was killed"
        assert not errors, errors
    assert results == [x * x for x in range(n)]  # each result exactly once, in order
    finished = []
    for f in os.listdir(markers):
        t, url = (markers / f).read_text().split(" ", 1)
        finished.append((float(t), url))
    # A's containers die with it (a few milliseconds later); everything after that ran at B.
    assert {url for t, url in finished if t > killed_at + 1.0} == {b.url}
    at_b = [t for t, url in finished if url == b.url]
    assert at_b, "nothing ran at B"
    failover = min(at_b) - killed_at
    (tmp_path.parent / "replicas-failover.txt").write_text(f"{failover:.2f}\n")
    print(f"\nfailover (SIGKILL of the owner -> first input finished at the other replica): {failover:.2f}s")


def test_spawn_through_the_other_replica_survives_the_owner_and_so_does_the_app(
        replicas: tuple[ControlPlane, ControlPlane]) -> None:
    import replicas_app

    import shoal

    a, b = replicas
    with replicas_app.app.run(quiet=True):
        assert replicas_app.square.remote(3) == 9  # the app runs at A
        _use(b.url, a.url)
        done = replicas_app.slow_echo.spawn("fast", 0.0)
        assert done.get(timeout=60) == "done fast"
        slow = replicas_app.slow_echo.spawn("slow", 2.0)
        time.sleep(0.5)  # running in a container of A now
        a.kill()
        assert shoal.FunctionCall.from_id(slow.object_id).get(timeout=60) == "done slow"
        assert shoal.FunctionCall.from_id(done.object_id).get(timeout=30) == "done fast"
        assert replicas_app.square.remote(5) == 25
        # The app's client session (its log long-poll) was at A: the client reconnected to B within the grace
        # period (3 s here), so B, now the owner, keeps the ephemeral app running past it.
        time.sleep(4)
        assert replicas_app.square.remote(6) == 36


def test_schedule_fires_at_one_replica_and_keeps_firing_after_it_dies(
        replicas: tuple[ControlPlane, ControlPlane]) -> None:
    import replicas_schedule_app

    import shoal

    a, b = replicas
    replicas_schedule_app.app.deploy()  # through A: A owns it
    fires = shoal.Dict.from_name("replicas-schedule-fires", create_if_missing=True)

    def runs() -> list[tuple[float, str]]:
        return sorted(tuple(v) for v in fires.values())

    assert wait_for(lambda: len(runs()) >= 2, timeout=60), "the schedule did not fire"
    start = runs()[0][0]
    time.sleep(4)
    before = [r for r in runs() if r[0] >= start]
    assert {url for _, url in before} == {a.url}  # only the owner fires: each tick once, not once per replica
    killed_at = time.time()
    a.kill()
    assert wait_for(lambda: sum(1 for t, _ in runs() if t > killed_at) >= 4, timeout=60), \
        "the schedule stopped firing after its replica died"
    time.sleep(2)
    later = [r for r in runs() if r[0] > killed_at]
    assert {url for _, url in later} == {b.url}  # the new owner alone fires
