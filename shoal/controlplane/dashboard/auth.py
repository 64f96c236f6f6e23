"""Who may see the dashboard: a login link carrying a one-time token (as Jupyter's), exchanged for a session
cookie. Plain decisions over an injected clock, so they are unit-tested without a server
(tests/unit/test_dashboard_auth.py).

Why this shape: the dashboard is served by the control plane on its API's address, never open to anyone who can
reach it. The API token stays with the CLI (`shoal dashboard` asks for a login token with it); the link it prints
works once and for LOGIN_TTL_S; the cookie it becomes is HttpOnly (page scripts cannot read it) and
SameSite=Strict (another site's page cannot make the browser send it, so no cross-site request can act with it).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

LOGIN_TTL_S = 300.0  # a login link works once, within this
SESSION_TTL_S = 12 * 3600.0  # a browser session lasts this long after its login
COOKIE = "shoal_dashboard"
MAX_PENDING = 64  # unredeemed login tokens kept; the oldest go first


@dataclass
class DashboardAuth:
    logins: dict[str, float] = field(default_factory=dict)  # one-time token -> expires at
    sessions: dict[str, float] = field(default_factory=dict)  # session id -> expires at

    def issue_login(self, now: float) -> str:
        """A one-time login token (asked for with the API token)."""
        self._expire(now)
        while len(self.logins) >= MAX_PENDING:
            self.logins.pop(next(iter(self.logins)))
        token = secrets.token_urlsafe(32)
        self.logins[token] = now + LOGIN_TTL_S
        return token

    def redeem(self, token: str, now: float) -> str | None:
        """A session id for a valid, unused, unexpired login token (which is spent); None otherwise."""
        self._expire(now)
        for known in list(self.logins):
            if hmac.compare_digest(known.encode(), token.encode()):
                del self.logins[known]
                session = secrets.token_urlsafe(32)
                self.sessions[session] = now + SESSION_TTL_S
                return session
        return None

    def allows(self, session: str | None, now: float) -> bool:
        """The cookie names a live session."""
        if not session:
            return False
        expires = self.sessions.get(session)
        if expires is None:
            return False
        if expires <= now:
            del self.sessions[session]
            return False
        return True

    def _expire(self, now: float) -> None:
        for table in (self.logins, self.sessions):
            for key in [k for k, t in table.items() if t <= now]:
                del table[key]


def cookie_header(session: str, max_age: float = SESSION_TTL_S) -> str:
    """The Set-Cookie value: scoped to the dashboard's paths, never readable by scripts, never sent cross-site."""
    return f"{COOKIE}={session}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={int(max_age)}"
