"""Idempotency keys (`idempotency_keys`): what a client write did, kept under the key the client sent with it, so
that the same write sent again (its reply was lost: the control plane died, the connection broke) returns the
first result instead of being applied twice.

A write that carries a key runs as one store transaction: look for the result stored under it (`previous`),
else do the write and `record` its result; `release` forgets it when the write is undone (items popped for a
client that went away go back). The key row commits with the write or not at all. Keys are dropped `KEY_TTL_S`
after their write (`expire`); a client resends for seconds to minutes, never that long.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from .base import Connection, Store

KEY_TTL_S = 3600.0
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class Replay:
    """The result recorded under a key: the write was done already."""

    __slots__ = ("result",)

    def __init__(self, result: Any) -> None:
        self.result = result


def previous(c: Connection, key: str | None) -> Replay | None:
    """A Replay of the first result when the write under `key` was done already, else None: do it (and
    `record` it). A read: a write that ends up writing nothing (a full queue, an empty pop) leaves no trace.
    (Two replicas doing the same keyed write at the same moment could both do it: a client sends again only
    after its first send failed, so that needs a replica that stays up but lost the connection.)"""
    if key is None:
        return None
    row = c.execute("SELECT result FROM idempotency_keys WHERE key=?", (key,)).fetchone()
    return Replay(_decode(row[0])) if row else None


async def replayed(store: Store, key: str | None) -> Replay | None:
    """`previous`, for a write whose work starts outside the store (an app made in memory, images built, a
    version built on disk): run by the writer, after every write queued before it, so a first send's write
    that was queued (not yet committed) when its resend came is seen."""
    if key is None:
        return None
    return await store.transact(lambda c: previous(c, key))


def record(c: Connection, key: str | None, result: Any) -> Any:
    """Keep the result of the write done under `key` in this transaction; returns `result`."""
    if key is not None:
        c.execute("INSERT INTO idempotency_keys (key, result, created_at) VALUES (?,?,?) "
                  "ON CONFLICT (key) DO UPDATE SET result=excluded.result", (key, _encode(result), time.time()))
    return result


def release(c: Connection, key: str | None) -> None:
    """The write under `key` was undone: the same write may be done again."""
    if key is not None:
        c.execute("DELETE FROM idempotency_keys WHERE key=?", (key,))


def expire(store: Store, before: float) -> int:
    """Drop the keys of writes done before `before` (a ticket; fire and forget)."""
    return store.write("DELETE FROM idempotency_keys WHERE created_at < ?", (before,))
