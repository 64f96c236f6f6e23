"""Named and ephemeral Dicts and Queues: durable key-value and FIFO storage shared by functions.

Everything is in the store; reads use the read connection, read-modify-writes run as store transactions.
Blocked queue getters wait in memory, first come first served: a put hands its items straight to the waiting
getters in the same transaction, so arriving items reach blocked getters in order.

With several control planes (`shared`, controlplane/replicas.py) a put on one replica cannot hand items to getters
blocked on another: those look in the store every SHARED_POLL_S as well, and every pop first locks its
partition's row, so two replicas popping at once never both get the same item.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .model import new_id
from .rest import ApiError, body_of, query_int, reply
from .store import Store

KINDS = {"dict": "di", "queue": "qu", "volume": "vo"}  # volumes' files: controlplane/volumes.py
DICT_TTL_S = 7 * 24 * 3600  # entries untouched this long expire
MAX_VALUE = 100 * 1024 * 1024  # Dict: per object
MAX_UPDATE = 10_000  # Dict: entries per update
MAX_ITEM = 1024 * 1024  # Queue: per item
MAX_PARTITION_ITEMS = 5_000
MAX_PARTITIONS = 100_000
MAX_WAIT_S = 50.0
SHARED_POLL_S = 0.1  # how often a blocked getter of a replica looks for items put through another replica


class _Getter:
    __slots__ = ("n", "future", "taken")

    def __init__(self, n: int) -> None:
        self.n = n
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.taken = False  # chosen by a put to receive items; it must take them


def _partition(body: dict[str, Any]) -> str:
    p = body.get("partition")
    if p is None:
        return ""
    if not isinstance(p, str) or not 1 <= len(p.encode()) <= 64:
        raise ApiError(400, "a queue partition key must be 1 to 64 bytes")
    return p


class Objects:
    def __init__(self, store: Store, shared: bool = False) -> None:
        self.store = store
        self.shared = shared  # other control planes use the same store (replicas)
        self.getters: dict[tuple[str, str], collections.deque[_Getter]] = collections.defaultdict(collections.deque)
        self.on_delete: list[Callable[[str], None]] = []  # told each deleted object's id (volumes drop files)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v1/objects", self.lookup)
        r.add_get("/v1/objects", self.list)
        r.add_delete("/v1/objects/{object_id}", self.delete)
        for op in ("get", "put", "pop", "contains", "update", "clear", "len", "items"):
            r.add_post(f"/v1/dicts/{{object_id}}/{op}", getattr(self, f"dict_{op}"))
        for op in ("put", "get", "len", "clear", "peek"):
            r.add_post(f"/v1/queues/{{object_id}}/{op}", getattr(self, f"queue_{op}"))

    # -- objects ---------------------------------------------------------------------------------------------
    async def lookup(self, request: web.Request) -> web.Response:
        """Find a named object, or create it (named with create_if_missing, or unnamed = ephemeral)."""
        body = await body_of(request, "kind")
        kind, name = body["kind"], body.get("name")
        if kind not in KINDS:
            raise ApiError(400, f"kind must be one of {sorted(KINDS)}")
        if name is not None and (not isinstance(name, str) or not name or len(name) > 64
                                 or not all(ch.isalnum() or ch in "-_." for ch in name)):
            raise ApiError(400, f"invalid {kind} name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
        create = bool(body.get("create_if_missing")) or name is None
        allow_existing = body.get("allow_existing", True)

        def run(c: sqlite3.Connection) -> tuple[str, bool]:
            if name is not None:
                row = c.execute("SELECT object_id FROM objects WHERE kind=? AND name=?", (kind, name)).fetchone()
                if row:
                    return row[0], False
            if not create:
                return "", False
            object_id = new_id(KINDS[kind])
            c.execute("INSERT INTO objects (object_id, kind, name, created_at, app_id) VALUES (?,?,?,?,?)",
                      (object_id, kind, name, time.time(), body.get("app_id")))
            return object_id, True

        object_id, created = await self.store.transact(run)
        if not object_id:
            raise ApiError(404, f"{kind.capitalize()} {name!r} not found", "NotFoundError")
        if not created and body.get("must_create") and not allow_existing:
            raise ApiError(409, f"{kind.capitalize()} {name!r} already exists", "AlreadyExistsError")
        return reply({"object_id": object_id, "created": created})

    async def list(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind", "")
        rows = await self.store.read(
            "SELECT object_id, name, created_at FROM objects WHERE kind=? AND name IS NOT NULL ORDER BY name",
            (kind,))
        return reply({"objects": [{"object_id": i, "name": n, "created_at": t} for i, n, t in rows]})

    async def delete(self, request: web.Request) -> web.Response:
        object_id = request.match_info["object_id"]

        def run(c: sqlite3.Connection) -> int:
            n = c.execute("DELETE FROM objects WHERE object_id=?", (object_id,)).rowcount
            c.execute("DELETE FROM dict_entries WHERE dict_id=?", (object_id,))
            c.execute("DELETE FROM queue_items WHERE queue_id=?", (object_id,))
            c.execute("DELETE FROM queue_partitions WHERE queue_id=?", (object_id,))
            return n

        if not await self.store.transact(run):
            raise ApiError(404, f"object {object_id} not found", "NotFoundError")
        for hook in self.on_delete:
            hook(object_id)
        return reply({"ok": True})

    async def _exists(self, object_id: str, kind: str) -> None:
        rows = await self.store.read("SELECT 1 FROM objects WHERE object_id=? AND kind=?", (object_id, kind))
        if not rows:
            raise ApiError(404, f"{kind.capitalize()} {object_id} not found (deleted?)", "NotFoundError")

    # -- dicts -----------------------------------------------------------------------------------------------
    async def _dict_body(self, request: web.Request, *required: str) -> tuple[str, dict[str, Any]]:
        object_id = request.match_info["object_id"]
        body = await body_of(request, *required)
        await self._exists(object_id, "dict")
        for field in ("key", "value"):
            if field in body and not isinstance(body[field], bytes):
                raise ApiError(400, f"{field} must be bytes (a pickled object)")
        if len(body.get("value") or b"") > MAX_VALUE:
            raise ApiError(413, "a Dict value may be at most 100 MiB", "RequestSizeError")
        return object_id, body

    async def dict_get(self, request: web.Request) -> web.Response:
        object_id, body = await self._dict_body(request, "key")
        rows = await self.store.read("SELECT value FROM dict_entries WHERE dict_id=? AND key=?",
                                     (object_id, body["key"]))
        if rows:
            self.store.write("UPDATE dict_entries SET touched_at=? WHERE dict_id=? AND key=?",
                             (time.time(), object_id, body["key"]))
        return reply({"found": bool(rows), "value": rows[0][0] if rows else None})

    async def dict_contains(self, request: web.Request) -> web.Response:
        object_id, body = await self._dict_body(request, "key")
        rows = await self.store.read("SELECT 1 FROM dict_entries WHERE dict_id=? AND key=?", (object_id, body["key"]))
        return reply({"found": bool(rows)})

    async def dict_put(self, request: web.Request) -> web.Response:
        object_id, body = await self._dict_body(request, "key", "value")
        action = "DO NOTHING" if body.get("skip_if_exists") else \
            "(dict_id, key) DO UPDATE SET value=excluded.value, touched_at=excluded.touched_at"

        def run(c: sqlite3.Connection) -> bool:
            return c.execute(f"INSERT INTO dict_entries (dict_id, key, value, touched_at) VALUES (?,?,?,?) "
                             f"ON CONFLICT {action}",
                             (object_id, body["key"], body["value"], time.time())).rowcount > 0

        return reply({"created": await self.store.transact(run)})

    async def dict_update(self, request: web.Request) -> web.Response:
        object_id, body = await self._dict_body(request, "items")
        items = body["items"]
        if not isinstance(items, list) or not all(
                isinstance(i, list) and len(i) == 2 and all(isinstance(x, bytes) for x in i) for i in items):
            raise ApiError(400, "items must be a list of [key, value] byte pairs")
        if len(items) > MAX_UPDATE:
            raise ApiError(413, f"at most {MAX_UPDATE} entries per update", "RequestSizeError")
        now = time.time()
        await self.store.flushed(self.store.write(
            "INSERT INTO dict_entries (dict_id, key, value, touched_at) VALUES (?,?,?,?) ON CONFLICT (dict_id, key) "
            "DO UPDATE SET value=excluded.value, touched_at=excluded.touched_at",
            [(object_id, k, v, now) for k, v in items], many=True))
        return reply({"ok": True})

    async def dict_pop(self, request: web.Request) -> web.Response:
        object_id, body = await self._dict_body(request, "key")

        def run(c: sqlite3.Connection) -> bytes | None:
            row = c.execute("SELECT value FROM dict_entries WHERE dict_id=? AND key=?",
                            (object_id, body["key"])).fetchone()
            if row:
                c.execute("DELETE FROM dict_entries WHERE dict_id=? AND key=?", (object_id, body["key"]))
            return row[0] if row else None

        value = await self.store.transact(run)
        return reply({"found": value is not None, "value": value})

    async def dict_clear(self, request: web.Request) -> web.Response:
        object_id, _ = await self._dict_body(request)
        await self.store.flushed(self.store.write("DELETE FROM dict_entries WHERE dict_id=?", (object_id,)))
        return reply({"ok": True})

    async def dict_len(self, request: web.Request) -> web.Response:
        object_id, _ = await self._dict_body(request)
        rows = await self.store.read("SELECT COUNT(*) FROM dict_entries WHERE dict_id=?", (object_id,))
        return reply({"len": rows[0][0]})

    async def dict_items(self, request: web.Request) -> web.Response:
        """A page of entries in key order, after `after` (exclusive)."""
        object_id, body = await self._dict_body(request)
        limit = max(1, min(int(body.get("limit") or 1000), 1000))
        after = body.get("after")
        if after is None:
            rows = await self.store.read(
                "SELECT key, value FROM dict_entries WHERE dict_id=? ORDER BY key LIMIT ?", (object_id, limit))
        else:
            rows = await self.store.read(
                "SELECT key, value FROM dict_entries WHERE dict_id=? AND key > ? ORDER BY key LIMIT ?",
                (object_id, after, limit))
        return reply({"items": [[k, v] for k, v in rows], "more": len(rows) == limit})

    def expire_dicts(self) -> None:
        self.store.write("DELETE FROM dict_entries WHERE touched_at < ?", (time.time() - DICT_TTL_S,))

    # -- queues ----------------------------------------------------------------------------------------------
    async def _queue_body(self, request: web.Request, *required: str) -> tuple[str, str, dict[str, Any]]:
        object_id = request.match_info["object_id"]
        body = await body_of(request, *required)
        await self._exists(object_id, "queue")
        return object_id, _partition(body), body

    async def queue_put(self, request: web.Request) -> web.Response:
        """Append items; with `timeout`, wait up to that long for room in a full partition."""
        object_id, partition, body = await self._queue_body(request, "values")
        values = body["values"]
        if not isinstance(values, list) or not all(isinstance(v, bytes) for v in values):
            raise ApiError(400, "values must be a list of bytes")
        if any(len(v) > MAX_ITEM for v in values):
            raise ApiError(413, "a queue item may be at most 1 MiB", "RequestSizeError")
        if len(values) > MAX_PARTITION_ITEMS:
            raise ApiError(413, f"at most {MAX_PARTITION_ITEMS} items fit in a partition", "RequestSizeError")
        ttl = float(body.get("partition_ttl") or 86400)
        deadline = time.monotonic() + min(float(body.get("timeout") or 0), MAX_WAIT_S)
        while True:
            served = await self._try_put(object_id, partition, values, ttl)
            if served is not None:
                return reply({"ok": True})
            if time.monotonic() >= deadline:
                raise ApiError(409, f"queue partition is full ({MAX_PARTITION_ITEMS} items)", "QueueFull")
            await asyncio.sleep(0.05)

    async def _try_put(self, object_id: str, partition: str, values: list[bytes], ttl: float) -> bool | None:
        key = (object_id, partition)
        waiting = [g for g in self.getters.get(key, ()) if not g.future.done()]
        takers = []
        left = len(values)
        for g in waiting:
            if left <= 0:
                break
            takers.append(g)
            left -= g.n
        for g in takers:  # from here on these getters must receive what the transaction pops for them
            g.taken = True
            self.getters[key].remove(g)

        def run(c: sqlite3.Connection) -> list[list[bytes]] | None:
            count = c.execute("SELECT COUNT(*) FROM queue_items WHERE queue_id=? AND partition=?",
                              (object_id, partition)).fetchone()[0]
            if count + len(values) > MAX_PARTITION_ITEMS:
                return None
            known = c.execute("SELECT 1 FROM queue_partitions WHERE queue_id=? AND partition=?",
                              (object_id, partition)).fetchone()
            if not known and c.execute("SELECT COUNT(*) FROM queue_partitions WHERE queue_id=?",
                                       (object_id,)).fetchone()[0] >= MAX_PARTITIONS:
                raise ApiError(409, f"a queue may have at most {MAX_PARTITIONS} partitions", "QueueFull")
            c.execute("INSERT INTO queue_partitions (queue_id, partition, expires_at) VALUES (?,?,?) "
                      "ON CONFLICT (queue_id, partition) DO UPDATE SET expires_at=excluded.expires_at",
                      (object_id, partition, time.time() + ttl))
            top = c.execute("SELECT COALESCE(MAX(seq), 0) FROM queue_items WHERE queue_id=? AND partition=?",
                            (object_id, partition)).fetchone()[0]
            c.executemany("INSERT INTO queue_items (queue_id, partition, seq, value) VALUES (?,?,?,?)",
                          [(object_id, partition, top + 1 + i, v) for i, v in enumerate(values)])
            return [_pop(c, object_id, partition, g.n) for g in takers]

        try:
            handed = await asyncio.shield(self.store.transact(run))
        except BaseException:
            for g in reversed(takers):  # nothing was popped for them: let them wait again
                g.taken = False
                self.getters[key].appendleft(g)
            raise
        if handed is None:
            for g in reversed(takers):
                g.taken = False
                self.getters[key].appendleft(g)
            return None
        for g, items in zip(takers, handed, strict=True):
            g.future.set_result(items)
        return True

    async def queue_get(self, request: web.Request) -> web.Response:
        """Remove and return up to `n` items; with `timeout` > 0, wait that long for the first one."""
        object_id, partition, body = await self._queue_body(request)
        n = int(body.get("n") or 1)
        if n < 1:
            raise ApiError(400, "n must be at least 1")
        items = await self.store.transact(lambda c: _pop(c, object_id, partition, n, self.shared))
        timeout = min(float(body.get("timeout") or 0), MAX_WAIT_S)
        if items or timeout <= 0:
            return reply({"values": items})
        getter = _Getter(n)
        key = (object_id, partition)
        self.getters[key].append(getter)
        try:
            # A put that chose its takers between the pop above and this registration stores its items instead
            # of handing them over: look again, now that every later put sees this getter. (Such a put queues
            # its transaction on its next step: sleep(0) lets it, so this pop runs after it.)
            await asyncio.sleep(0)
            items = await self.store.transact(lambda c: _pop(c, object_id, partition, n, self.shared))
            if items:
                await self._abandon(key, getter)  # (items a put handed it meanwhile go back to the head)
                return reply({"values": items})
            if not self.shared:
                await asyncio.wait({getter.future}, timeout=timeout)
            else:
                deadline = time.monotonic() + timeout
                while not getter.future.done() and not getter.taken and time.monotonic() < deadline:
                    await asyncio.wait({getter.future}, timeout=min(SHARED_POLL_S, deadline - time.monotonic()))
                    if getter.future.done() or getter.taken:
                        break
                    waiting = self.getters[key]
                    place = waiting.index(getter)
                    del waiting[place]  # while it looks, no put of this replica hands it items
                    look = asyncio.ensure_future(self.store.transact(lambda c: _pop(c, object_id, partition, n, True)))
                    try:
                        items = await asyncio.shield(look)
                    except asyncio.CancelledError:
                        await self._give_back(key, await look)
                        raise
                    if items:
                        return reply({"values": items})
                    waiting.insert(min(place, len(waiting)), getter)
        except asyncio.CancelledError:
            await self._abandon(key, getter)
            raise
        if not getter.future.done() and not getter.taken:
            self.getters[key].remove(getter)
            return reply({"values": []})
        items = await asyncio.shield(getter.future)
        return reply({"values": items})

    async def _abandon(self, key: tuple[str, str], getter: _Getter) -> None:
        """A waiting client went away; items already popped for it go back to the head of the queue."""
        if not getter.taken:
            if getter in self.getters[key]:  # (a shared getter looking in the store is not listed meanwhile)
                self.getters[key].remove(getter)
            return
        await self._give_back(key, await asyncio.shield(getter.future))

    async def _give_back(self, key: tuple[str, str], items: list[bytes]) -> None:
        """Items popped for a client that went away go back to the head of the queue."""
        if items:
            object_id, partition = key

            def run(c: sqlite3.Connection) -> None:
                low = c.execute("SELECT COALESCE(MIN(seq), 1) FROM queue_items WHERE queue_id=? AND partition=?",
                                (object_id, partition)).fetchone()[0]
                c.executemany("INSERT INTO queue_items (queue_id, partition, seq, value) VALUES (?,?,?,?)",
                              [(object_id, partition, low - len(items) + i, v) for i, v in enumerate(items)])

            await self.store.transact(run)

    async def queue_len(self, request: web.Request) -> web.Response:
        object_id, partition, body = await self._queue_body(request)
        if body.get("total"):
            rows = await self.store.read("SELECT COUNT(*) FROM queue_items WHERE queue_id=?", (object_id,))
        else:
            rows = await self.store.read("SELECT COUNT(*) FROM queue_items WHERE queue_id=? AND partition=?",
                                         (object_id, partition))
        return reply({"len": rows[0][0]})

    async def queue_clear(self, request: web.Request) -> web.Response:
        object_id, partition, body = await self._queue_body(request)
        if body.get("all"):
            self.store.write("DELETE FROM queue_partitions WHERE queue_id=?", (object_id,))
            ticket = self.store.write("DELETE FROM queue_items WHERE queue_id=?", (object_id,))
        else:
            self.store.write("DELETE FROM queue_partitions WHERE queue_id=? AND partition=?", (object_id, partition))
            ticket = self.store.write("DELETE FROM queue_items WHERE queue_id=? AND partition=?",
                                      (object_id, partition))
        await self.store.flushed(ticket)
        return reply({"ok": True})

    async def queue_peek(self, request: web.Request) -> web.Response:
        object_id, partition, body = await self._queue_body(request)
        n = max(1, min(query_int(request, "n", int(body.get("n") or 1)), 1000))
        rows = await self.store.read(
            "SELECT value FROM queue_items WHERE queue_id=? AND partition=? ORDER BY seq LIMIT ?",
            (object_id, partition, n))
        return reply({"values": [r[0] for r in rows]})

    async def housekeeping(self) -> None:
        """Expire queue partitions every few seconds and idle Dict entries every hour."""
        last_dicts = 0.0
        while True:
            self.expire_partitions()
            if time.time() - last_dicts > 3600:
                last_dicts = time.time()
                self.expire_dicts()
            await asyncio.sleep(5.0)

    def expire_partitions(self) -> None:
        """Partitions are cleared `partition_ttl` seconds after their last put."""
        now = time.time()
        self.store.write("DELETE FROM queue_items WHERE (queue_id, partition) IN (SELECT queue_id, partition FROM "
                         "queue_partitions WHERE expires_at < ?)", (now,))
        self.store.write("DELETE FROM queue_partitions WHERE expires_at < ?", (now,))


def _pop(c: sqlite3.Connection, object_id: str, partition: str, n: int, shared: bool = False) -> list[bytes]:
    if shared:  # lock the partition first: a pop of another replica waits, then sees what this one took
        c.execute("UPDATE queue_partitions SET expires_at=expires_at WHERE queue_id=? AND partition=?",
                  (object_id, partition))
    rows = c.execute("SELECT seq, value FROM queue_items WHERE queue_id=? AND partition=? ORDER BY seq LIMIT ?",
                     (object_id, partition, n)).fetchall()
    if rows:
        c.execute("DELETE FROM queue_items WHERE queue_id=? AND partition=? AND seq <= ?",
                  (object_id, partition, rows[-1][0]))
    return [v for _, v in rows]
