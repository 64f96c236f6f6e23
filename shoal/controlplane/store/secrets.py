"""Named secrets (`secrets`): each one's environment sealed by the caller (controlplane/secrets.py encrypts it
with a key that is not in the database), so nothing here ever sees a value."""

from __future__ import annotations

from typing import NamedTuple

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


async def create(store: Store, name: str, data: bytes, now: float, *, overwrite: bool) -> bool:
    """Store a new secret, or replace an existing one's data when `overwrite`; False when it exists and was
    kept. One transaction, so two creations of one name never both succeed."""

    def run(c: Connection) -> bool:
        if c.execute("SELECT 1 FROM secrets WHERE name=?", (name,)).fetchone():
            if not overwrite:
                return False
            c.execute("UPDATE secrets SET data=?, updated_at=? WHERE name=?", (data, now, name))
            return True
        c.execute("INSERT INTO secrets (name, data, created_at, updated_at) VALUES (?,?,?,?)", (name, data, now, now))
        return True

    return await store.transact(run)


async def replace(store: Store, name: str, data: bytes, now: float) -> None:
    """Replace the data of an existing secret; returns once committed."""
    await store.flushed(store.write("UPDATE secrets SET data=?, updated_at=? WHERE name=?", (data, now, name)))


async def delete(store: Store, name: str) -> bool:
    """False when there was no such secret."""
    return bool(await store.transact(lambda c: c.execute("DELETE FROM secrets WHERE name=?", (name,)).rowcount))
