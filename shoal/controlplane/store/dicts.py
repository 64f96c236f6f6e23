"""A Dict's entries (`dict_entries`): pickled keys and values, each with when it was last read or written, so
that entries nobody touches expire (`expire`)."""

from __future__ import annotations

import time

from . import idempotency
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


async def put(store: Store, dict_id: str, key: bytes, value: bytes, *, skip_if_exists: bool,
              idem: str | None = None) -> bool:
    """Set one entry (keep an existing one with `skip_if_exists`); True when it was written. With `idem` (an
    idempotency key) a put asked again returns the first answer and does not overwrite a later put."""
    action = "DO NOTHING" if skip_if_exists else \
        "(dict_id, key) DO UPDATE SET value=excluded.value, touched_at=excluded.touched_at"

    def run(c: Connection) -> bool:
        done = idempotency.previous(c, idem)
        if done is not None:
            return bool(done.result)
        return idempotency.record(c, idem, c.execute(
            f"INSERT INTO dict_entries (dict_id, key, value, touched_at) VALUES (?,?,?,?) ON CONFLICT {action}",
            (dict_id, key, value, time.time())).rowcount > 0)

    return await store.transact(run)


_UPSERT = ("INSERT INTO dict_entries (dict_id, key, value, touched_at) VALUES (?,?,?,?) ON CONFLICT (dict_id, key) "
           "DO UPDATE SET value=excluded.value, touched_at=excluded.touched_at")


async def update(store: Store, dict_id: str, items: list[tuple[bytes, bytes]], idem: str | None = None) -> None:
    """Set many entries; returns once committed. With `idem` (an idempotency key) an update asked again does
    not overwrite later puts."""
    now = time.time()
    rows = [(dict_id, k, v, now) for k, v in items]
    if idem is None:
        await store.flushed(store.write(_UPSERT, rows, many=True))
        return

    def run(c: Connection) -> None:
        if idempotency.previous(c, idem) is None:
            c.executemany(_UPSERT, rows)
            idempotency.record(c, idem, True)

    await store.transact(run)


async def pop(store: Store, dict_id: str, key: bytes, idem: str | None = None) -> bytes | None:
    """Remove an entry and return its value (None when there was none), in one transaction. With `idem` (an
    idempotency key) a pop asked again returns the value the first one removed."""

    def run(c: Connection) -> bytes | None:
        done = idempotency.previous(c, idem)
        if done is not None:
            return done.result
        row = c.execute("SELECT value FROM dict_entries WHERE dict_id=? AND key=?", (dict_id, key)).fetchone()
        if row:
            c.execute("DELETE FROM dict_entries WHERE dict_id=? AND key=?", (dict_id, key))
        return idempotency.record(c, idem, row[0] if row else None)

    return await store.transact(run)


async def clear(store: Store, dict_id: str, idem: str | None = None) -> None:
    """Remove every entry; returns once committed. With `idem` (an idempotency key) a clear asked again does
    not remove what was put since."""
    if idem is None:
        await store.flushed(store.write("DELETE FROM dict_entries WHERE dict_id=?", (dict_id,)))
        return

    def run(c: Connection) -> None:
        if idempotency.previous(c, idem) is None:
            c.execute("DELETE FROM dict_entries WHERE dict_id=?", (dict_id,))
            idempotency.record(c, idem, True)

    await store.transact(run)


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
