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
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from aiohttp import web

from .._spec import requests as req
from .._spec.limits import BODY_MAX, DATA_BODY_MAX, MAX_WAIT_S
from .core.model import new_id
from .idempotency import is_retry, request_key
from .rest import ApiError, body_of, query_of, reply
from .store import Store, dicts, idempotency, objects, queues

KINDS = {"dict": "di", "queue": "qu", "volume": "vo"}  # volumes' files: controlplane/volumes.py
DICT_TTL_S = 7 * 24 * 3600  # entries untouched this long expire
MAX_VALUE = 100 * 1024 * 1024  # Dict: per object
MAX_UPDATE = 10_000  # Dict: entries per update
MAX_ITEM = 1024 * 1024  # Queue: per item
MAX_PARTITION_ITEMS = 5_000
MAX_PARTITIONS = 100_000
SHARED_POLL_S = 0.1  # how often a blocked getter of a replica looks for items put through another replica


T = TypeVar("T")
Q = TypeVar("Q", req.QueuePut, req.QueueGet, req.QueueLen, req.QueueClear, req.QueuePeek)


class _Getter:
    __slots__ = ("n", "key", "future", "taken")

    def __init__(self, n: int, key: str | None) -> None:
        self.n = n
        self.key = key  # the idempotency key of its request: what a put hands it is kept under it
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.taken = False  # chosen by a put to receive items; it must take them


def _partition(p: str | None) -> str:
    if p is None:
        return ""
    if len(p.encode()) > 64:
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
        body = await body_of(request, req.ObjectLookup)
        kind, name = body.kind, body.name
        create = body.create_if_missing or name is None
        object_id, created = await objects.find_or_create(self.store, kind, name, create=create,
                                                          new_id=new_id(KINDS[kind]), app_id=body.app_id,
                                                          idem=request_key(request))
        if not object_id:
            raise ApiError(404, f"{kind.capitalize()} {name!r} not found", "NotFoundError")
        if not created and body.must_create and not body.allow_existing:
            raise ApiError(409, f"{kind.capitalize()} {name!r} already exists", "AlreadyExistsError")
        return reply({"object_id": object_id, "created": created})

    async def list(self, request: web.Request) -> web.Response:
        named = await objects.list_named(self.store, query_of(request, req.ObjectsQuery).kind)
        return reply({"objects": [{"object_id": i, "name": n, "created_at": t} for i, n, t in named]})

    async def delete(self, request: web.Request) -> web.Response:
        object_id = request.match_info["object_id"]
        if not await objects.delete(self.store, object_id):
            if is_retry(request):  # a resend: its first send deleted it
                return reply({"ok": True})
            raise ApiError(404, f"object {object_id} not found", "NotFoundError")
        for hook in self.on_delete:
            hook(object_id)
        return reply({"ok": True})

    async def _exists(self, object_id: str, kind: str) -> None:
        if not await objects.exists(self.store, object_id, kind):
            raise ApiError(404, f"{kind.capitalize()} {object_id} not found (deleted?)", "NotFoundError")

    # -- dicts -----------------------------------------------------------------------------------------------
    async def _dict_body(self, request: web.Request, kind: type[T], limit: int = BODY_MAX) -> tuple[str, T]:
        object_id = request.match_info["object_id"]
        body = await body_of(request, kind, limit)
        await self._exists(object_id, "dict")
        return object_id, body

    async def dict_get(self, request: web.Request) -> web.Response:
        object_id, body = await self._dict_body(request, req.DictKey)
        value = await dicts.get(self.store, object_id, body.key)
        return reply({"found": value is not None, "value": value})

    async def dict_contains(self, request: web.Request) -> web.Response:
        object_id, body = await self._dict_body(request, req.DictKey)
        return reply({"found": await dicts.contains(self.store, object_id, body.key)})

    async def dict_put(self, request: web.Request) -> web.Response:
        object_id, body = await self._dict_body(request, req.DictPut, DATA_BODY_MAX)
        _check_values([body.value])
        created = await dicts.put(self.store, object_id, body.key, body.value, skip_if_exists=body.skip_if_exists,
                                  idem=request_key(request))
        return reply({"created": created})

    async def dict_update(self, request: web.Request) -> web.Response:
        object_id, body = await self._dict_body(request, req.DictUpdate, DATA_BODY_MAX)
        items = body.items
        if len(items) > MAX_UPDATE:
            raise ApiError(413, f"at most {MAX_UPDATE} entries per update", "RequestSizeError")
        _check_values(v for _, v in items)
        await dicts.update(self.store, object_id, items, request_key(request))
        return reply({"ok": True})

    async def dict_pop(self, request: web.Request) -> web.Response:
        object_id, body = await self._dict_body(request, req.DictKey)
        value = await dicts.pop(self.store, object_id, body.key, request_key(request))
        return reply({"found": value is not None, "value": value})

    async def dict_clear(self, request: web.Request) -> web.Response:
        object_id, _ = await self._dict_body(request, req.Empty)
        await dicts.clear(self.store, object_id, request_key(request))
        return reply({"ok": True})

    async def dict_len(self, request: web.Request) -> web.Response:
        object_id, _ = await self._dict_body(request, req.Empty)
        return reply({"len": await dicts.length(self.store, object_id)})

    async def dict_items(self, request: web.Request) -> web.Response:
        """A page of entries in key order, after `after` (exclusive)."""
        object_id, body = await self._dict_body(request, req.DictItems)
        limit = body.limit or 1000
        rows = await dicts.page(self.store, object_id, body.after, limit)
        return reply({"items": [[k, v] for k, v in rows], "more": len(rows) == limit})

    def expire_dicts(self) -> None:
        dicts.expire(self.store, untouched_since=time.time() - DICT_TTL_S)

    # -- queues ----------------------------------------------------------------------------------------------
    async def _queue_body(self, request: web.Request, kind: type[Q],
                          limit: int = BODY_MAX) -> tuple[str, str, Q]:
        object_id = request.match_info["object_id"]
        body = await body_of(request, kind, limit)
        await self._exists(object_id, "queue")
        return object_id, _partition(body.partition), body

    async def queue_put(self, request: web.Request) -> web.Response:
        """Append items; with `timeout`, wait up to that long for room in a full partition."""
        object_id, partition, body = await self._queue_body(request, req.QueuePut, DATA_BODY_MAX)
        values = body.values
        if any(len(v) > MAX_ITEM for v in values):
            raise ApiError(413, "a queue item may be at most 1 MiB", "RequestSizeError")
        if len(values) > MAX_PARTITION_ITEMS:
            raise ApiError(413, f"at most {MAX_PARTITION_ITEMS} items fit in a partition", "RequestSizeError")
        ttl = body.partition_ttl or 86400.0
        deadline = time.monotonic() + min(body.timeout or 0.0, MAX_WAIT_S)
        key = request_key(request)
        while True:
            served = await self._try_put(object_id, partition, values, ttl, key)
            if served is not None:
                return reply({"ok": True})
            if time.monotonic() >= deadline:
                raise ApiError(409, f"queue partition is full ({MAX_PARTITION_ITEMS} items)", "QueueFull")
            await asyncio.sleep(0.05)

    async def _try_put(self, object_id: str, partition: str, values: list[bytes], ttl: float,
                       idem: str | None) -> bool | None:
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
        try:
            handed = await asyncio.shield(queues.put(
                self.store, object_id, partition, values, ttl_s=ttl, max_items=MAX_PARTITION_ITEMS,
                max_partitions=MAX_PARTITIONS, hand_to=[(g.n, g.key) for g in takers], key=idem))
        except BaseException as exc:
            for g in reversed(takers):  # nothing was popped for them: let them wait again
                g.taken = False
                self.getters[key].appendleft(g)
            if isinstance(exc, queues.TooManyPartitionsError):
                raise ApiError(409, f"a queue may have at most {MAX_PARTITIONS} partitions", "QueueFull") from exc
            raise
        if handed is None or isinstance(handed, idempotency.Replay):  # full, or put already (a resend)
            for g in reversed(takers):
                g.taken = False
                self.getters[key].appendleft(g)
            return None if handed is None else True
        for g, items in zip(takers, handed, strict=True):
            g.future.set_result(items)
        return True

    async def queue_get(self, request: web.Request) -> web.Response:
        """Remove and return up to `n` items; with `timeout` > 0, wait that long for the first one."""
        object_id, partition, body = await self._queue_body(request, req.QueueGet)
        n = min(body.n or 1, MAX_PARTITION_ITEMS)  # a partition never holds more
        idem = request_key(request)
        items = await queues.pop(self.store, object_id, partition, n, shared=self.shared, key=idem)
        timeout = min(body.timeout or 0.0, MAX_WAIT_S)
        if items or timeout <= 0:
            return reply({"values": items})
        getter = _Getter(n, idem)
        key = (object_id, partition)
        self.getters[key].append(getter)
        try:
            # A put that chose its takers between the pop above and this registration stores its items instead
            # of handing them over: look again, now that every later put sees this getter. (Such a put queues
            # its transaction on its next step: sleep(0) lets it, so this pop runs after it.)
            await asyncio.sleep(0)
            items = await queues.pop(self.store, object_id, partition, n, shared=self.shared, key=idem)
            if items:
                if idem is not None and getter.taken:
                    # Under one key a getter gets items once: from a put that handed it some first (the pop
                    # found them), or from this pop (the put then handed it none).
                    return reply({"values": await asyncio.shield(getter.future) or items})
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
                    look = asyncio.ensure_future(queues.pop(self.store, object_id, partition, n, shared=True,
                                                            key=idem))
                    try:
                        items = await asyncio.shield(look)
                    except asyncio.CancelledError:
                        await self._give_back(key, await look, idem)
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
        await self._give_back(key, await asyncio.shield(getter.future), getter.key)

    async def _give_back(self, key: tuple[str, str], items: list[bytes], idem: str | None) -> None:
        """Items popped for a client that went away go back to the head of the queue (and the pop's idempotency
        key is released: the client's resend, if any, pops again)."""
        if items:
            object_id, partition = key
            await queues.give_back(self.store, object_id, partition, items, idem)

    async def queue_len(self, request: web.Request) -> web.Response:
        object_id, partition, body = await self._queue_body(request, req.QueueLen)
        count = await queues.length(self.store, object_id, None if body.total else partition)
        return reply({"len": count})

    async def queue_clear(self, request: web.Request) -> web.Response:
        object_id, partition, body = await self._queue_body(request, req.QueueClear)
        await queues.clear(self.store, object_id, None if body.all else partition, request_key(request))
        return reply({"ok": True})

    async def queue_peek(self, request: web.Request) -> web.Response:
        object_id, partition, body = await self._queue_body(request, req.QueuePeek)
        n = min(query_of(request, req.PeekQuery).n or body.n or 1, 1000)
        return reply({"values": await queues.peek(self.store, object_id, partition, n)})

    async def housekeeping(self) -> None:
        """Expire queue partitions every few seconds, idempotency keys every minute and idle Dict entries every
        hour."""
        last_dicts = last_keys = 0.0
        while True:
            self.expire_partitions()
            if time.time() - last_keys > 60:
                last_keys = time.time()
                idempotency.expire(self.store, time.time() - idempotency.KEY_TTL_S)
            if time.time() - last_dicts > 3600:
                last_dicts = time.time()
                self.expire_dicts()
            await asyncio.sleep(5.0)

    def expire_partitions(self) -> None:
        """Partitions are cleared `partition_ttl` seconds after their last put."""
        queues.expire_partitions(self.store, time.time())


def _check_values(values: Iterable[bytes]) -> None:
    if any(len(v) > MAX_VALUE for v in values):
        raise ApiError(413, "a Dict value may be at most 100 MiB", "RequestSizeError")
