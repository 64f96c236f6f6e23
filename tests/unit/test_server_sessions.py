"""Strict Server sessions (controlplane/core/server_sessions.py): pinning, keeping, ending, 404 vs 410."""

from __future__ import annotations

from shoal._spec.definitions import FunctionDefinition, ServerConfig
from shoal.controlplane.core.model import Container, Pool
from shoal.controlplane.core.server_sessions import ServerSessions, session_container


def _pool(n: int) -> Pool:
    pool = Pool("fu-1", "ap-1", FunctionDefinition(tag="Chat", server=ServerConfig(sessioned=True)))
    for i in range(n):
        c = Container(f"ta-{i}", pool, "tok", state="ready", web_ports={"": 8000})
        pool.containers[c.id] = c
    return pool


def test_a_new_session_goes_to_the_container_with_fewest_sessions_then_fewest_requests() -> None:
    pool = _pool(3)
    a, b, c = pool.containers.values()
    assert session_container([a, b, c], {"ta-0": 2, "ta-1": 1, "ta-2": 1}) is b
    c.running[1] = None  # type: ignore[assignment]
    assert session_container([a, b, c], {"ta-0": 1, "ta-1": 1, "ta-2": 0}) is c  # sessions count first
    assert session_container([], {}) is None


def test_sessions_spread_route_to_their_container_and_keep_it() -> None:
    pool, sessions = _pool(2), ServerSessions()
    (s1, t1), (s2, t2) = sessions.start(pool, 60, now=0.0), sessions.start(pool, 60, now=0.0)
    assert s1.container is not s2.container and t1 != t2
    assert sessions.route("fu-1", t1, now=30.0) is s1.container
    assert s1.container.session_until == 90.0  # kept until idle_timeout after its last request


def test_404_for_a_token_never_issued_410_once_ended() -> None:
    pool, sessions = _pool(1), ServerSessions()
    _, token = sessions.start(pool, 60, now=0.0)
    assert sessions.route("fu-1", "st-unknown", now=1.0) == 404
    assert sessions.route("fu-2", token, now=1.0) == 404  # another Server's session
    assert sessions.terminate("fu-1", token) is True
    assert sessions.route("fu-1", token, now=2.0) == 410
    assert sessions.terminate("fu-1", token) is False
    assert next(iter(pool.containers.values())).session_until == 0.0  # no longer kept


def test_idle_sessions_and_sessions_of_ended_containers_end() -> None:
    pool, sessions = _pool(1), ServerSessions()
    _, idle = sessions.start(pool, 5, now=0.0)
    assert sessions.route("fu-1", idle, now=4.0) is not None
    assert sessions.route("fu-1", idle, now=9.5) == 410  # 5.5 s since its last request
    s, token = sessions.start(pool, 60, now=10.0)
    s.container.state = "dead"
    assert sessions.route("fu-1", token, now=11.0) == 410


def test_no_ready_container_no_session() -> None:
    pool = _pool(1)
    next(iter(pool.containers.values())).state = "starting"
    assert ServerSessions().start(pool, 60, now=0.0) is None
