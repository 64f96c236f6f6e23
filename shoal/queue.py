"""`Queue`: a durable FIFO shared by functions, one FIFO per partition. Items are cloudpickled.

Blocking gets that time out raise `queue.Empty`; a full partition raises `queue.Full` (the stdlib classes).
"""

from __future__ import annotations

import queue as _stdlib_queue
import time
from typing import Any

from ._client.aio import Emit, Plan, rpc, rpc_iter
from ._object import StorageObject
from ._serialization import dumps, loads
from ._spec.limits import MAX_WAIT_S
from .exception import InvalidError

POLL_S = MAX_WAIT_S  # longest a single server-side wait lasts; longer waits are several requests


def _check_partition(partition: str | None) -> None:
    if partition is not None and (not isinstance(partition, str) or not 1 <= len(partition.encode()) <= 64):
        raise InvalidError("Queue partition key must be a string of 1 to 64 bytes")


class Queue(StorageObject):
    _kind = "queue"

    @staticmethod
    def validate_partition_key(partition: str | None) -> bytes:
        _check_partition(partition)
        return (partition or "").encode()

    def _path(self, object_id: str, op: str) -> str:
        return f"/v1/queues/{object_id}/{op}"

    def _put_plan(self, values: list[Any], block: bool, timeout: float | None, partition: str | None,
                  partition_ttl: int) -> Plan:
        _check_partition(partition)
        object_id = yield from self._resolve()
        body = {"values": [dumps(v, "queue item") for v in values], "partition": partition,
                "partition_ttl": partition_ttl}
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.0 if not block else POLL_S if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                yield ("POST", self._path(object_id, "put"), {**body, "timeout": min(wait, POLL_S)})
                return None
            except _stdlib_queue.Full:
                if not block or (deadline is not None and time.monotonic() >= deadline):
                    raise

    @rpc
    def put(self, v: Any, block: bool = True, timeout: float | None = None, *, partition: str | None = None,
            partition_ttl: int = 86400) -> Plan:
        """Add an item; with block, wait up to `timeout` for room (queue.Full after)."""
        return (yield from self._put_plan([v], block, timeout, partition, partition_ttl))

    @rpc
    def put_many(self, vs: list[Any], block: bool = True, timeout: float | None = None, *,
                 partition: str | None = None, partition_ttl: int = 86400) -> Plan:
        return (yield from self._put_plan(list(vs), block, timeout, partition, partition_ttl))

    def _get_plan(self, n: int, block: bool, timeout: float | None, partition: str | None) -> Plan:
        _check_partition(partition)
        if timeout is not None and timeout < 0:
            raise InvalidError("timeout must be non-negative")
        object_id = yield from self._resolve()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.0 if not block else POLL_S if deadline is None else max(0.0, deadline - time.monotonic())
            resp = yield ("POST", self._path(object_id, "get"),
                          {"n": n, "partition": partition, "timeout": min(wait, POLL_S)})
            if resp["values"] or not block:
                return [loads(v, "queue item") for v in resp["values"]]
            if deadline is not None and time.monotonic() >= deadline:
                raise _stdlib_queue.Empty()

    @rpc
    def get(self, block: bool = True, timeout: float | None = None, *, partition: str | None = None) -> Plan:
        """Remove and return the oldest item. Non-blocking on an empty queue: None; blocking past `timeout`:
        queue.Empty."""
        items = yield from self._get_plan(1, block, timeout, partition)
        return items[0] if items else None

    @rpc
    def get_many(self, n_values: int, block: bool = True, timeout: float | None = None, *,
                 partition: str | None = None) -> Plan:
        """Up to `n_values` items, waiting (if block) for at least one."""
        if n_values < 1:
            raise InvalidError("n_values must be at least 1")
        return (yield from self._get_plan(n_values, block, timeout, partition))

    @rpc
    def len(self, *, partition: str | None = None, total: bool = False) -> Plan:
        _check_partition(partition)
        object_id = yield from self._resolve()
        resp = yield ("POST", self._path(object_id, "len"), {"partition": partition, "total": total})
        return resp["len"]

    @rpc
    def clear(self, *, partition: str | None = None, all: bool = False) -> Plan:  # noqa: A002 - Modal's name
        _check_partition(partition)
        object_id = yield from self._resolve()
        yield ("POST", self._path(object_id, "clear"), {"partition": partition, "all": all})

    @rpc
    def peek(self, n: int = 1, *, partition: str | None = None) -> Plan:
        """The oldest `n` items without removing them (used by `shoal queue peek`)."""
        object_id = yield from self._resolve()
        resp = yield ("POST", self._path(object_id, "peek"), {"n": n, "partition": partition})
        return [loads(v, "queue item") for v in resp["values"]]

    @rpc_iter
    def iterate(self, *, partition: str | None = None, item_poll_timeout: float = 0.0) -> Plan:
        """Yield items until none arrives within `item_poll_timeout` seconds."""
        while True:
            try:
                items = yield from self._get_plan(100, item_poll_timeout > 0, item_poll_timeout or None, partition)
            except _stdlib_queue.Empty:
                return
            if not items:
                return
            yield Emit(items)
