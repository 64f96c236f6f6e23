"""Idempotency keys (`idempotency_keys`): what a client write did, kept under the key the client sent with it, so
that the same write sent again (its reply was lost: the control plane died, the connection broke) returns the
first result instead of being applied twice.

A write that carries a key runs as one store transaction: `claim` the key (or find the result stored under it),
do the write, `record` its result, or `release` the key when nothing was written (a full queue: trying again
is right). The key row commits with the write or not at all. Keys are dropped `KEY_TTL_S` after their write
(`expire`); a client retries for seconds to minutes, never that long.
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


def claim(c: Connection, key: str | None) -> Replay | None:
    """Take `key` for the write this transaction does; a Replay of the first result when it was done already.
    On PostgreSQL a second replica claiming the same key at once waits for the first one's commit."""
    if key is None:
        return None
    if c.execute("INSERT INTO idempotency_keys (key, created_at) VALUES (?,?) ON CONFLICT DO NOTHING",
                 (key, time.time())).rowcount > 0:
        return None
    row = c.execute("SELECT result FROM idempotency_keys WHERE key=?", (key,)).fetchone()
    return Replay(_decode(row[0]) if row and row[0] is not None else None)


def record(c: Connection, key: str | None, result: Any) -> Any:
    """Keep the result of the write done under `key` in this transaction; returns `result`."""
    if key is not None:
        c.execute("INSERT INTO idempotency_keys (key, result, created_at) VALUES (?,?,?) "
                  "ON CONFLICT (key) DO UPDATE SET result=excluded.result", (key, _encode(result), time.time()))
    return result


def release(c: Connection, key: str | None) -> None:
    """Nothing was written under `key` (or it was undone): the same write may be tried again."""
    if key is not None:
        c.execute("DELETE FROM idempotency_keys WHERE key=?", (key,))


def expire(store: Store, before: float) -> int:
    """Drop the keys of writes done before `before` (a ticket; fire and forget)."""
    return store.write("DELETE FROM idempotency_keys WHERE created_at < ?", (before,))
