"""The replicas sharing one PostgreSQL schema (`replicas`: URL, heartbeat on the database's clock), and the
look-ups a replica makes to route a request to the app it is about (controlplane/replicas.py).

PostgreSQL only. A replica's leases are in `leases.py`; its heartbeat is renewed with them (`leases.renew`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Connection
from .leases import db_now

if TYPE_CHECKING:
    from .postgres import PostgresStore


async def register(store: PostgresStore, replica_id: str, url: str, web_url: str, pid: int) -> None:
    """Announce this replica (its URLs, for forwards). Leases held under its id by a previous run are dropped:
    that run's apps are taken over afresh."""

    def run(c: Connection) -> None:
        now = db_now(c)
        c.execute("INSERT INTO replicas (replica_id, url, web_url, pid, started_at, heartbeat_at) "
                  "VALUES (?,?,?,?,?,?) ON CONFLICT (replica_id) DO UPDATE SET url=excluded.url, "
                  "web_url=excluded.web_url, pid=excluded.pid, started_at=excluded.started_at, "
                  "heartbeat_at=excluded.heartbeat_at", (replica_id, url, web_url, pid, now, now))
        c.execute("DELETE FROM leases WHERE owner=?", (replica_id,))  # a previous run under this id held them

    await store.coordinate(run)


async def leave(store: PostgresStore, replica_id: str) -> None:
    """A clean stop: drop this replica and every lease it holds, so others take its apps at once."""

    def run(c: Connection) -> None:
        c.execute("DELETE FROM leases WHERE owner=?", (replica_id,))
        c.execute("DELETE FROM replicas WHERE replica_id=?", (replica_id,))

    await store.coordinate(run)


async def others_alive(store: PostgresStore, me: str, ttl_s: float) -> bool:
    """Another replica sent a heartbeat within `ttl_s`."""

    def check(c: Connection) -> bool:
        now = db_now(c)
        return c.execute("SELECT COUNT(*) FROM replicas WHERE replica_id<>? AND heartbeat_at > ?",
                         (me, now - ttl_s)).fetchone()[0] > 0

    return bool(await store.coordinate(check))


async def peers(store: PostgresStore, me: str, ttl_s: float) -> list[str]:
    """The URLs of the other live replicas, oldest first (on a read connection: the coordination one is kept for
    leases, which must not wait behind requests)."""

    def run(c: Connection) -> list[str]:
        rows = c.execute("SELECT url FROM replicas WHERE replica_id<>? AND heartbeat_at > ? ORDER BY started_at",
                         (me, db_now(c) - ttl_s)).fetchall()
        return [r[0] for r in rows]

    return await store.read_with(run)


# -- which app a request is about --------------------------------------------------------------------------------
async def app_of_function(store: PostgresStore, function_id: str) -> str | None:
    rows = await store.read("SELECT app_id FROM functions WHERE function_id=?", (function_id,))
    return rows[0][0] if rows else None


async def app_of_call(store: PostgresStore, call_id: str) -> str | None:
    rows = await store.read(
        "SELECT f.app_id FROM calls c JOIN functions f ON f.function_id = c.function_id WHERE c.call_id=?",
        (call_id,))
    return rows[0][0] if rows else None


async def running_apps_named(store: PostgresStore, name: str) -> list[tuple[str, str]]:
    """(app_id, mode) of the running apps of that name, newest first."""
    rows = await store.read(
        "SELECT app_id, mode FROM apps WHERE name=? AND state='running' ORDER BY created_at DESC", (name,))
    return [(app_id, mode) for app_id, mode in rows]


async def app_state(store: PostgresStore, app_id: str) -> str | None:
    """The app's state ("running", "stopped"), None when there is no such app."""
    rows = await store.read("SELECT state FROM apps WHERE app_id=?", (app_id,))
    return rows[0][0] if rows else None
