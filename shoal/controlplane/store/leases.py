"""Leases (`leases`: key, owner, expiry): which replica owns each running app (controlplane/replicas.py).

PostgreSQL only. Every expiry is on the database's clock (`db_now`), the one clock all replicas share. Whatever
changes a lease runs in `PostgresStore.coordinate`, a transaction on a connection of its own, so a renewal never
waits behind a batch of writes; a lease row is locked (`FOR UPDATE`) before it is decided on, and writes fenced
by a lease (`Store.put_outputs`) share-lock it until they commit, so a takeover reads the store after them. The
rules (take, renew, defer) are pure: `policy.lease_decision`, applied here inside the transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .. import policy
from .base import Connection

if TYPE_CHECKING:
    from .postgres import PostgresStore


def db_now(c: Connection) -> float:
    """The database's clock (epoch seconds): the one clock every replica's leases are measured on."""
    return float(c.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])


class Renewal(NamedTuple):
    renewed: set[str]  # the keys renewed
    free_apps: list[str]  # running apps whose lease is free or expired: to take over


async def claim(store: PostgresStore, key: str, owner: str, ttl_s: float) -> None:
    """Hold `key` from now, whoever held it: for a lease nobody else can know of yet (a freshly created app)."""

    def run(c: Connection) -> None:
        c.execute("INSERT INTO leases (key, owner, expires_at) VALUES (?,?,?) ON CONFLICT (key) DO UPDATE SET "
                  "owner=excluded.owner, expires_at=excluded.expires_at", (key, owner, db_now(c) + ttl_s))

    await store.coordinate(run)


async def release(store: PostgresStore, key: str, owner: str) -> None:
    """Let go of `key` if `owner` still holds it."""
    await store.coordinate(lambda c: c.execute("DELETE FROM leases WHERE key=? AND owner=?", (key, owner)))


async def take(store: PostgresStore, app_id: str, key: str, me: str, ttl_s: float) -> policy.LeaseDecision | None:
    """One transaction: take `key`, the lease of app `app_id`, if the policy says so (free or expired), else
    say why not. None: the app is not running (nobody is to own it)."""

    def run(c: Connection) -> policy.LeaseDecision | None:
        state = c.execute("SELECT state FROM apps WHERE app_id=?", (app_id,)).fetchone()
        if state is None or state[0] != "running":
            return None
        now = db_now(c)
        row = c.execute("SELECT owner, expires_at FROM leases WHERE key=? FOR UPDATE", (key,)).fetchone()
        decision = policy.lease_decision(holder=row[0] if row else None, expires_at=row[1] if row else None,
                                         me=me, now=now, ttl_s=ttl_s)
        if decision.action != "take":
            return decision
        if row is not None:
            c.execute("UPDATE leases SET owner=?, expires_at=? WHERE key=?", (me, decision.expires_at, key))
        elif c.execute("INSERT INTO leases (key, owner, expires_at) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                       (key, me, decision.expires_at)).rowcount != 1:
            return policy.LeaseDecision("defer", None, None)  # another replica inserted it first
        return decision

    return await store.coordinate(run)


async def renew(store: PostgresStore, me: str, held: set[str], ttl_s: float, app_prefix: str) -> Renewal:
    """A replica's pass, in one transaction: its heartbeat (`replicas`), the renewal of the leases it holds
    (`held`, keys), and the running apps whose lease (`app_prefix` + app id) is free or expired."""

    def run(c: Connection) -> Renewal:
        now = db_now(c)
        c.execute("UPDATE replicas SET heartbeat_at=? WHERE replica_id=?", (now, me))
        rows = c.execute("SELECT key, owner, expires_at FROM leases WHERE owner=? FOR UPDATE", (me,)).fetchall()
        renewed = set()
        for key, owner, expires_at in rows:
            decision = policy.lease_decision(holder=owner, expires_at=expires_at, me=me, now=now, ttl_s=ttl_s)
            # Only what is held is renewed. A lease of this replica's that it does not hold (taken or claimed
            # after this pass began, or let go of) is left alone: it is renewed next time, or it expires.
            if key in held and decision.action == "renew":
                renewed.add(key)
        if renewed:
            c.executemany("UPDATE leases SET expires_at=? WHERE key=? AND owner=?",
                          [(now + ttl_s, key, me) for key in renewed])
        free = c.execute(
            "SELECT a.app_id FROM apps a LEFT JOIN leases l ON l.key = ? || a.app_id "
            "WHERE a.state='running' AND (l.key IS NULL OR l.expires_at <= ?)", (app_prefix, now)).fetchall()
        return Renewal(renewed, [r[0] for r in free])

    return await store.coordinate(run)


async def locate(store: PostgresStore, app_id: str, key: str, me: str, ttl_s: float) -> tuple[str, str | None]:
    """Where app `app_id` (lease `key`) runs, on a read connection (this is asked per request: the coordination
    connection is kept for leases): ("none", None) not running, ("remote", its owner's URL) held by another
    replica, ("free", None) nobody else holds it."""

    def look(c: Connection) -> tuple[str, str | None]:
        state = c.execute("SELECT state FROM apps WHERE app_id=?", (app_id,)).fetchone()
        if state is None or state[0] != "running":
            return "none", None
        row = c.execute("SELECT l.owner, l.expires_at, r.url FROM leases l LEFT JOIN replicas r "
                        "ON r.replica_id = l.owner WHERE l.key=?", (key,)).fetchone()
        decision = policy.lease_decision(holder=row[0] if row else None, expires_at=row[1] if row else None,
                                         me=me, now=db_now(c), ttl_s=ttl_s, want=False)
        if decision.action == "defer" and decision.owner not in (None, me):
            return "remote", row[2]
        return "free", None

    return await store.read_with(look)


async def holder_url(store: PostgresStore, key: str, me: str) -> str | None:
    """The URL of the replica holding `key`, when another one does."""
    rows = await store.read(
        "SELECT r.url FROM leases l JOIN replicas r ON r.replica_id = l.owner WHERE l.key=? AND l.owner<>?",
        (key, me))
    return str(rows[0][0]) if rows else None
