"""A Queue's items (`queue_items`, ordered by `seq` within a partition) and its partitions (`queue_partitions`:
when each expires, `partition_ttl` after its last put).

Pops and puts are store transactions. With several control planes on one database (`shared`) every pop first
locks its partition's row, so two replicas popping at once never both get the same item.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from . import idempotency
from .base import Connection, Store
from .idempotency import Replay


class TooManyPartitionsError(Exception):
    """A put would add a partition to a queue that has `max_partitions` already."""


async def put(store: Store, queue_id: str, partition: str, values: list[bytes], *, ttl_s: float,
              max_items: int, max_partitions: int, hand_to: Sequence[tuple[int, str | None]] = (),
              key: str | None = None) -> list[list[bytes]] | None | Replay:
    """Append `values` to the partition and renew its expiry; None (nothing written) when the partition would
    hold more than `max_items`. In the same transaction, pop `n` items for each `(n, getter_key)` of `hand_to`
    (blocked getters, in the order they wait, with their idempotency keys): what is returned is theirs, so
    arriving items reach blocked getters in order and none is seen by a pop in between. With `key` (an
    idempotency key), a put done already is not done again: a Replay comes back. Raises TooManyPartitionsError."""

    def run(c: Connection) -> list[list[bytes]] | None | Replay:
        done = idempotency.previous(c, key)
        if done is not None:
            return done
        count = c.execute("SELECT COUNT(*) FROM queue_items WHERE queue_id=? AND partition=?",
                          (queue_id, partition)).fetchone()[0]
        if count + len(values) > max_items:
            return None
        known = c.execute("SELECT 1 FROM queue_partitions WHERE queue_id=? AND partition=?",
                          (queue_id, partition)).fetchone()
        if not known and c.execute("SELECT COUNT(*) FROM queue_partitions WHERE queue_id=?",
                                   (queue_id,)).fetchone()[0] >= max_partitions:
            raise TooManyPartitionsError(queue_id)
        c.execute("INSERT INTO queue_partitions (queue_id, partition, expires_at) VALUES (?,?,?) "
                  "ON CONFLICT (queue_id, partition) DO UPDATE SET expires_at=excluded.expires_at",
                  (queue_id, partition, time.time() + ttl_s))
        top = c.execute("SELECT COALESCE(MAX(seq), 0) FROM queue_items WHERE queue_id=? AND partition=?",
                        (queue_id, partition)).fetchone()[0]
        c.executemany("INSERT INTO queue_items (queue_id, partition, seq, value) VALUES (?,?,?,?)",
                      [(queue_id, partition, top + 1 + i, v) for i, v in enumerate(values)])
        idempotency.record(c, key, True)
        # A getter with a result under its key got items by a pop of its own (racing this put): none for it.
        return [[] if idempotency.previous(c, getter) is not None else _pop(c, queue_id, partition, n, key=getter)
                for n, getter in hand_to]

    return await store.transact(run)


async def pop(store: Store, queue_id: str, partition: str, n: int, *, shared: bool,
              key: str | None = None) -> list[bytes]:
    """Remove and return up to `n` items from the head of the partition. With `key` (an idempotency key) the
    items are kept under it: the same pop asked again returns them instead of taking more."""

    def run(c: Connection) -> list[bytes]:
        done = idempotency.previous(c, key)
        return done.result if done is not None else _pop(c, queue_id, partition, n, shared, key)

    return await store.transact(run)


async def give_back(store: Store, queue_id: str, partition: str, items: list[bytes], key: str | None = None) -> None:
    """Put items popped for a client that went away back at the head of the partition, in their order; the pop
    is undone, so its idempotency key `key` is released with it."""

    def run(c: Connection) -> None:
        low = c.execute("SELECT COALESCE(MIN(seq), 1) FROM queue_items WHERE queue_id=? AND partition=?",
                        (queue_id, partition)).fetchone()[0]
        c.executemany("INSERT INTO queue_items (queue_id, partition, seq, value) VALUES (?,?,?,?)",
                      [(queue_id, partition, low - len(items) + i, v) for i, v in enumerate(items)])
        idempotency.release(c, key)

    await store.transact(run)


async def length(store: Store, queue_id: str, partition: str | None) -> int:
    """Items in the partition, or (`partition` None) in every partition of the queue."""
    if partition is None:
        rows = await store.read("SELECT COUNT(*) FROM queue_items WHERE queue_id=?", (queue_id,))
    else:
        rows = await store.read("SELECT COUNT(*) FROM queue_items WHERE queue_id=? AND partition=?",
                                (queue_id, partition))
    return rows[0][0]


async def peek(store: Store, queue_id: str, partition: str, n: int) -> list[bytes]:
    rows = await store.read("SELECT value FROM queue_items WHERE queue_id=? AND partition=? ORDER BY seq LIMIT ?",
                            (queue_id, partition, n))
    return [r[0] for r in rows]


async def clear(store: Store, queue_id: str, partition: str | None, key: str | None = None) -> None:
    """Empty the partition, or (`partition` None) the whole queue; returns once committed. With `key` (an
    idempotency key) a clear asked again does not empty what was put since."""

    def run(c: Connection) -> None:
        if idempotency.previous(c, key) is None:
            where, params = ("queue_id=?", (queue_id,)) if partition is None else \
                ("queue_id=? AND partition=?", (queue_id, partition))
            c.execute(f"DELETE FROM queue_partitions WHERE {where}", params)
            c.execute(f"DELETE FROM queue_items WHERE {where}", params)
            idempotency.record(c, key, True)

    await store.transact(run)


def expire_partitions(store: Store, now: float) -> int:
    """Drop the partitions whose expiry has passed, with their items (a ticket; fire and forget)."""
    store.write("DELETE FROM queue_items WHERE (queue_id, partition) IN (SELECT queue_id, partition FROM "
                "queue_partitions WHERE expires_at < ?)", (now,))
    return store.write("DELETE FROM queue_partitions WHERE expires_at < ?", (now,))


def _pop(c: Connection, queue_id: str, partition: str, n: int, shared: bool = False,
         key: str | None = None) -> list[bytes]:
    """Take up to `n` items from the head, kept under the idempotency `key` when any were taken."""
    if shared:  # lock the partition first: a pop of another replica waits, then sees what this one took
        c.execute("UPDATE queue_partitions SET expires_at=expires_at WHERE queue_id=? AND partition=?",
                  (queue_id, partition))
    rows = c.execute("SELECT seq, value FROM queue_items WHERE queue_id=? AND partition=? ORDER BY seq LIMIT ?",
                     (queue_id, partition, n)).fetchall()
    if rows:
        c.execute("DELETE FROM queue_items WHERE queue_id=? AND partition=? AND seq <= ?",
                  (queue_id, partition, rows[-1][0]))
        return idempotency.record(c, key, [v for _, v in rows])
    return []
