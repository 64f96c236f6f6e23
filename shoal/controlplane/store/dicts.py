"""A Dict's entries (`dict_entries`): pickled keys and values, each with when it was last read or written, so
that entries nobody touches expire (`expire`)."""

from __future__ import annotations

import time

from .base import Connection, Store


async def get(store: Store, dict_id: str, key: bytes) -> bytes | None:
    """The value, or None. A hit marks the entry touched (fire and forget: a read is not held up by a write)."""
    rows = await store.read("SELECT value FROM dict_entries WHERE dict_id=? AND key=?", (dict_id, key))
    if not rows:
        return None
    store.write("UPDATE dict_entries SET touched_at=? WHERE dict_id=? AND key=?", (time.time(), dict_id, key))
    return rows[0][0]


async def contains(store: Store, dict_id: str, key: bytes) -> bool:
    return bool(await store.read("SELECT 1 FROM dict_entries WHERE dict_id=? AND key=?", (dict_id, key)))


async def put(store: Store, dict_id: str, key: bytes, value: bytes, *, skip_if_exists: bool) -> bool:
    """Set one entry (keep an existing one with `skip_if_exists`); True when it was written."""
    action = "DO NOTHING" if skip_if_exists else \
        "(dict_id, key) DO UPDATE SET value=excluded.value, touched_at=excluded.touched_at"

    def run(c: Connection) -> bool:
        return c.execute(f"INSERT INTO dict_entries (dict_id, key, value, touched_at) VALUES (?,?,?,?) "
                         f"ON CONFLICT {action}", (dict_id, key, value, time.time())).rowcount > 0

    return await store.transact(run)


async def update(store: Store, dict_id: str, items: list[tuple[bytes, bytes]]) -> None:
    """Set many entries; returns once committed."""
    now = time.time()
    await store.flushed(store.write(
        "INSERT INTO dict_entries (dict_id, key, value, touched_at) VALUES (?,?,?,?) ON CONFLICT (dict_id, key) "
        "DO UPDATE SET value=excluded.value, touched_at=excluded.touched_at",
        [(dict_id, k, v, now) for k, v in items], many=True))


async def pop(store: Store, dict_id: str, key: bytes) -> bytes | None:
    """Remove an entry and return its value (None when there was none), in one transaction."""

    def run(c: Connection) -> bytes | None:
        row = c.execute("SELECT value FROM dict_entries WHERE dict_id=? AND key=?", (dict_id, key)).fetchone()
        if row:
            c.execute("DELETE FROM dict_entries WHERE dict_id=? AND key=?", (dict_id, key))
        return row[0] if row else None

    return await store.transact(run)


async def clear(store: Store, dict_id: str) -> None:
    """Remove every entry; returns once committed."""
    await store.flushed(store.write("DELETE FROM dict_entries WHERE dict_id=?", (dict_id,)))


async def length(store: Store, dict_id: str) -> int:
    return (await store.read("SELECT COUNT(*) FROM dict_entries WHERE dict_id=?", (dict_id,)))[0][0]


async def page(store: Store, dict_id: str, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
    """Up to `limit` (key, value) pairs in key order, after the key `after` (exclusive) when given."""
    if after is None:
        rows = await store.read(
            "SELECT key, value FROM dict_entries WHERE dict_id=? ORDER BY key LIMIT ?", (dict_id, limit))
    else:
        rows = await store.read(
            "SELECT key, value FROM dict_entries WHERE dict_id=? AND key > ? ORDER BY key LIMIT ?",
            (dict_id, after, limit))
    return [(k, v) for k, v in rows]


def expire(store: Store, untouched_since: float) -> int:
    """Drop the entries of every Dict not read or written since `untouched_since` (a ticket; fire and forget)."""
    return store.write("DELETE FROM dict_entries WHERE touched_at < ?", (untouched_since,))
