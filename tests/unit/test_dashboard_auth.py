"""The dashboard's login decisions: a login token works once and only for a while; a session for its lifetime."""

from __future__ import annotations

from shoal.controlplane.dashboard.auth import LOGIN_TTL_S, MAX_PENDING, SESSION_TTL_S, DashboardAuth, cookie_header


def test_a_login_token_works_once():
    auth = DashboardAuth()
    token = auth.issue_login(now=0.0)
    session = auth.redeem(token, now=1.0)
    assert session is not None and auth.allows(session, now=2.0)
    assert auth.redeem(token, now=2.0) is None


def test_a_login_token_expires():
    auth = DashboardAuth()
    token = auth.issue_login(now=0.0)
    assert auth.redeem(token, now=LOGIN_TTL_S + 1) is None


def test_unknown_tokens_and_sessions_are_refused():
    auth = DashboardAuth()
    auth.issue_login(now=0.0)
    assert auth.redeem("guess", now=1.0) is None
    assert not auth.allows("guess", now=1.0)
    assert not auth.allows(None, now=1.0)
    assert not auth.allows("", now=1.0)


def test_a_session_ends():
    auth = DashboardAuth()
    session = auth.redeem(auth.issue_login(now=0.0), now=0.0)
    assert auth.allows(session, now=SESSION_TTL_S - 1)
    assert not auth.allows(session, now=SESSION_TTL_S + 1)


def test_pending_logins_are_bounded():
    auth = DashboardAuth()
    first = auth.issue_login(now=0.0)
    for _ in range(MAX_PENDING):
        auth.issue_login(now=0.0)
    assert len(auth.logins) == MAX_PENDING
    assert auth.redeem(first, now=1.0) is None  # the oldest went first


def test_the_cookie_is_http_only_and_same_site_strict():
    header = cookie_header("abc")
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/dashboard" in header
