"""Strict sessions of `@modal.sessioned()` Servers (`Server.sessions.start()`): a bearer token pinned to one
container. Requests carrying `Modal-Authorization: Bearer <token>` go to that container (and are authenticated by
the token: it was given to an authenticated client); the container is not scaled down while a session on it
lives (`Container.session_until`). A session ends when terminated, when idle for its `idle_timeout`, or when its
container ends; its token then gets 410, and a token never issued 404.

Tokens are kept as SHA-256 digests, in memory only: sessions do not outlive this control plane (nor do the
containers they pin)."""

from __future__ import annotations

import collections
import secrets
from dataclasses import dataclass

from ..ingress_policy import hash_secret as digest_of
from .model import Container, Pool, new_id

ENDED_KEPT = 10_000  # digests of ended sessions remembered, to answer 410 rather than 404


@dataclass
class Session:
    session_id: str
    digest: str
    pool_id: str
    container: Container
    idle_timeout: float
    last_used: float

    def live(self, now: float) -> bool:
        return self.container.state == "ready" and now - self.last_used < self.idle_timeout


def session_container(ready: list[Container], live_sessions: dict[str, int]) -> Container | None:
    """Where a new session goes: the ready container with the fewest live sessions, then the fewest requests
    in flight (None when none is ready)."""
    if not ready:
        return None
    return min(ready, key=lambda c: (live_sessions.get(c.id, 0), len(c.running)))


class ServerSessions:
    def __init__(self) -> None:
        self.by_digest: dict[str, Session] = {}
        self.ended: collections.OrderedDict[str, None] = collections.OrderedDict()

    def start(self, pool: Pool, idle_timeout: float, now: float) -> tuple[Session, str] | None:
        """A new session on a ready container of `pool` and its token; None when no container is ready."""
        self.sweep(now)
        counts: dict[str, int] = collections.Counter(
            s.container.id for s in self.by_digest.values() if s.pool_id == pool.function_id)
        container = session_container([c for c in pool.ready() if c.web_ports], counts)
        if container is None:
            return None
        token = f"st-{secrets.token_urlsafe(32)}"
        session = Session(new_id("ss"), digest_of(token), pool.function_id, container, idle_timeout, now)
        self.by_digest[session.digest] = session
        container.session_until = max(container.session_until, now + idle_timeout)
        return session, token

    def route(self, pool_id: str, token: str, now: float) -> Container | int:
        """The container a session's request goes to, or the status to answer: 404 (no such session of this
        Server), 410 (the session has ended)."""
        digest = digest_of(token)
        session = self.by_digest.get(digest)
        if session is None or session.pool_id != pool_id:
            return 410 if digest in self.ended and session is None else 404
        if not session.live(now):
            self._end(session)
            return 410
        session.last_used = now
        c = session.container
        c.session_until = max(c.session_until, now + session.idle_timeout)
        return c

    def terminate(self, pool_id: str, token: str) -> bool:
        """End the session of this token; False when this Server has no such live session."""
        session = self.by_digest.get(digest_of(token))
        if session is None or session.pool_id != pool_id:
            return False
        self._end(session)
        return True

    def sweep(self, now: float) -> None:
        """End the sessions idle past their timeout or whose container is gone."""
        for session in [s for s in self.by_digest.values() if not s.live(now)]:
            self._end(session)

    def _end(self, session: Session) -> None:
        self.by_digest.pop(session.digest, None)
        self.ended[session.digest] = None
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)
        c = session.container
        c.session_until = max((s.last_used + s.idle_timeout for s in self.by_digest.values() if s.container is c),
                              default=0.0)
