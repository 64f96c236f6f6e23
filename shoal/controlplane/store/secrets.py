"""Named secrets (`secrets`): each one's environment sealed by the caller (controlplane/secrets.py encrypts it
with a key that is not in the database), so nothing here ever sees a value."""

from __future__ import annotations

from typing import NamedTuple

from . import idempotency
from .base import Connection, Store


class SecretInfo(NamedTuple):
    """What listing shows: never the data."""

    name: str
    created_at: float
    updated_at: float


async def sealed(store: Store, name: str) -> bytes | None:
    """The secret's sealed data, or None when there is no such secret."""
    rows = await store.read("SELECT data FROM secrets WHERE name=?", (name,))
    return rows[0][0] if rows else None


async def list_all(store: Store) -> list[SecretInfo]:
    return [SecretInfo(*r) for r in await store.read("SELECT name, created_at, updated_at FROM secrets ORDER BY name")]


async def create(store: Store, name: str, data: bytes, now: float, *, overwrite: bool,
                 idem: str | None = None) -> bool:
    """Store a new secret, or replace an existing one's data when `overwrite`; False when it exists and was
    kept. One transaction, so two creations of one name never both succeed. With `idem` (an idempotency key) a
    write done is kept under it: asked again, True again, and nothing written (a later update stays)."""

    def run(c: Connection) -> bool:
        if idempotency.previous(c, idem) is not None:
            return True
        if c.execute("SELECT 1 FROM secrets WHERE name=?", (name,)).fetchone():
            if not overwrite:
                return False
            c.execute("UPDATE secrets SET data=?, updated_at=? WHERE name=?", (data, now, name))
        else:
            c.execute("INSERT INTO secrets (name, data, created_at, updated_at) VALUES (?,?,?,?)",
                      (name, data, now, now))
        return idempotency.record(c, idem, True)

    return await store.transact(run)


async def replace(store: Store, name: str, data: bytes, now: float, idem: str | None = None) -> None:
    """Replace the data of an existing secret; returns once committed. With `idem` (an idempotency key) a
    replace asked again writes nothing (an update made since stays)."""

    def run(c: Connection) -> None:
        if idempotency.previous(c, idem) is None:
            c.execute("UPDATE secrets SET data=?, updated_at=? WHERE name=?", (data, now, name))
            idempotency.record(c, idem, True)

    await store.transact(run)


async def delete(store: Store, name: str) -> bool:
    """False when there was no such secret."""
    return bool(await store.transact(lambda c: c.execute("DELETE FROM secrets WHERE name=?", (name,)).rowcount))
