"""Sandboxes (`sandboxes`): one row per `shoal.Sandbox` — its app, name, tags, command, image, state and how it
ended — so they survive a control-plane restart (controlplane/core/sandboxes.py). Output is on disk, not here."""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from .base import Store

_COLUMNS = "sandbox_id, app_id, name, tags, state, returncode, reason, created_at, ended_at, command, image_id, " \
           "container_id"


class SandboxRow(NamedTuple):
    sandbox_id: str
    app_id: str
    name: str | None
    tags: dict[str, str]
    state: str
    returncode: int | None
    reason: str | None
    created_at: float
    ended_at: float | None
    command: list[str]
    image_id: str | None
    container_id: str | None


def _row(r: tuple) -> SandboxRow:
    return SandboxRow(r[0], r[1], r[2], msgspec.msgpack.decode(r[3]), r[4], r[5], r[6], r[7], r[8],
                      msgspec.msgpack.decode(r[9]), r[10], r[11])


def insert(store: Store, row: SandboxRow) -> int:
    """A new sandbox; returns the write's ticket."""
    return store.write(f"INSERT INTO sandboxes ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                       (row.sandbox_id, row.app_id, row.name, msgspec.msgpack.encode(row.tags), row.state,
                        row.returncode, row.reason, row.created_at, row.ended_at,
                        msgspec.msgpack.encode(row.command), row.image_id, row.container_id))


def started(store: Store, sandbox_id: str, container_id: str) -> int:
    return store.write("UPDATE sandboxes SET state='running', container_id=? WHERE sandbox_id=?",
                       (container_id, sandbox_id))


def ended(store: Store, sandbox_id: str, returncode: int | None, reason: str, now: float) -> int:
    return store.write("UPDATE sandboxes SET state='terminated', returncode=?, reason=?, ended_at=? "
                       "WHERE sandbox_id=?", (returncode, reason, now, sandbox_id))


def set_tags(store: Store, sandbox_id: str, tags: dict[str, str]) -> int:
    return store.write("UPDATE sandboxes SET tags=? WHERE sandbox_id=?", (msgspec.msgpack.encode(tags), sandbox_id))


async def get(store: Store, sandbox_id: str) -> SandboxRow | None:
    rows = await store.read(f"SELECT {_COLUMNS} FROM sandboxes WHERE sandbox_id=?", (sandbox_id,))
    return _row(rows[0]) if rows else None


async def by_name(store: Store, app_id: str, name: str) -> SandboxRow | None:
    """The app's newest sandbox of that name."""
    rows = await store.read(f"SELECT {_COLUMNS} FROM sandboxes WHERE app_id=? AND name=? "
                            "ORDER BY created_at DESC LIMIT 1", (app_id, name))
    return _row(rows[0]) if rows else None


async def of_app(store: Store, app_id: str | None, limit: int = 1000) -> list[SandboxRow]:
    """Sandboxes of one app (every app's: None), newest first."""
    if app_id is None:
        rows = await store.read(f"SELECT {_COLUMNS} FROM sandboxes ORDER BY created_at DESC LIMIT ?", (limit,))
    else:
        rows = await store.read(f"SELECT {_COLUMNS} FROM sandboxes WHERE app_id=? ORDER BY created_at DESC "
                                "LIMIT ?", (app_id, limit))
    return [_row(r) for r in rows]


async def end_unfinished(store: Store, reason: str, now: float) -> int:
    """At start: sandboxes a previous control plane ran are gone with it. Returns how many were ended."""

    def run(c) -> int:  # noqa: ANN001 - a Connection
        return c.execute("UPDATE sandboxes SET state='terminated', reason=?, ended_at=? "
                         "WHERE state IN ('pending', 'running')", (reason, now)).rowcount

    return await store.transact(run)
