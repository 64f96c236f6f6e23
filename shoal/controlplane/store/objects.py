"""The `objects` table: Dicts, Queues and Volumes, by id and (when named) by kind and name.

A Dict's entries and a Queue's items are in `dicts.py` and `queues.py`; a Volume's files are on disk
(controlplane/volumes.py). Deleting an object here drops its entries and items in the same transaction.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from . import idempotency
from .base import Connection, Store


class NamedObject(NamedTuple):
    object_id: str
    name: str
    created_at: float


async def find_or_create(store: Store, kind: str, name: str | None, *, create: bool, new_id: str,
                         app_id: str | None, idem: str | None = None) -> tuple[str, bool]:
    """(object_id, created): the object of that kind and name, else, when `create`, a new one with id `new_id`
    (an unnamed object is always new). ("", False) when it does not exist and is not to be created. One
    transaction, so two lookups of one name never create two objects. With `idem` (an idempotency key) a
    creation is kept under it: asked again, the first answer comes back (no second unnamed object; `created`
    still true)."""

    def run(c: Connection) -> tuple[str, bool]:
        done = idempotency.previous(c, idem)
        if done is not None:
            return done.result[0], done.result[1]
        if name is not None:
            row = c.execute("SELECT object_id FROM objects WHERE kind=? AND name=?", (kind, name)).fetchone()
            if row:
                return row[0], False
        if not create:
            return "", False
        c.execute("INSERT INTO objects (object_id, kind, name, created_at, app_id) VALUES (?,?,?,?,?)",
                  (new_id, kind, name, time.time(), app_id))
        idempotency.record(c, idem, [new_id, True])
        return new_id, True

    return await store.transact(run)


async def list_named(store: Store, kind: str) -> list[NamedObject]:
    """The named objects of a kind, by name (unnamed, ephemeral ones are not listed)."""
    rows = await store.read(
        "SELECT object_id, name, created_at FROM objects WHERE kind=? AND name IS NOT NULL ORDER BY name", (kind,))
    return [NamedObject(*r) for r in rows]


async def ids(store: Store, kind: str) -> set[str]:
    return {r[0] for r in await store.read("SELECT object_id FROM objects WHERE kind=?", (kind,))}


async def exists(store: Store, object_id: str, kind: str) -> bool:
    return bool(await store.read("SELECT 1 FROM objects WHERE object_id=? AND kind=?", (object_id, kind)))


async def name_of(store: Store, object_id: str, kind: str) -> tuple[bool, str | None]:
    """(exists, its name): the name is None for an unnamed object."""
    rows = await store.read("SELECT name FROM objects WHERE object_id=? AND kind=?", (object_id, kind))
    return (True, rows[0][0]) if rows else (False, None)


async def rename(store: Store, kind: str, old: str, new: str, idem: str | None = None) -> str:
    """Give the object of `kind` named `old` the name `new`: "ok", else "exists" (another object of the kind
    has that name) or "missing" (none is named `old`). With `idem` (an idempotency key) a rename done is kept
    under it: asked again, "ok" again."""

    def run(c: Connection) -> str:
        if idempotency.previous(c, idem) is not None:
            return "ok"
        if c.execute("SELECT 1 FROM objects WHERE kind=? AND name=?", (kind, new)).fetchone():
            return "exists"
        n = c.execute("UPDATE objects SET name=? WHERE kind=? AND name=?", (new, kind, old)).rowcount
        return idempotency.record(c, idem, "ok") if n else "missing"

    return await store.transact(run)


async def delete(store: Store, object_id: str) -> bool:
    """Delete the object with its Dict entries and Queue items; False when there was none."""

    def run(c: Connection) -> int:
        n = c.execute("DELETE FROM objects WHERE object_id=?", (object_id,)).rowcount
        c.execute("DELETE FROM dict_entries WHERE dict_id=?", (object_id,))
        c.execute("DELETE FROM queue_items WHERE queue_id=?", (object_id,))
        c.execute("DELETE FROM queue_partitions WHERE queue_id=?", (object_id,))
        return n

    return bool(await store.transact(run))
