"""`Dict`: a durable key-value store shared by functions. Keys and values are cloudpickled; entries expire
after 7 days without reads or writes. Operators (`d[k]`, `k in d`, …) block; use the `.aio` methods in async
code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from ._client.aio import aio_method
from ._object import Plan, StorageObject, _drive_async, _drive_sync, rpc
from ._serialization import dumps, loads

_MISSING = object()


class Dict(StorageObject):
    _kind = "dict"

    def _path(self, object_id: str, op: str) -> str:
        return f"/v1/dicts/{object_id}/{op}"

    @rpc
    def get(self, key: Any, default: Any = None) -> Plan:
        """The value for `key`, or `default`."""
        object_id = yield from self._resolve()
        resp = yield ("POST", self._path(object_id, "get"), {"key": dumps(key, "key")})
        return loads(resp["value"], "value") if resp["found"] else default

    @rpc
    def contains(self, key: Any) -> Plan:
        object_id = yield from self._resolve()
        resp = yield ("POST", self._path(object_id, "contains"), {"key": dumps(key, "key")})
        return resp["found"]

    @rpc
    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> Plan:
        """Set `key`; with skip_if_exists, only if absent. Returns whether the value was written."""
        object_id = yield from self._resolve()
        resp = yield ("POST", self._path(object_id, "put"),
                      {"key": dumps(key, "key"), "value": dumps(value, "value"), "skip_if_exists": skip_if_exists})
        return resp["created"]

    @rpc
    def update(self, mapping: Mapping[Any, Any] | None = None, /, **kwargs: Any) -> Plan:
        object_id = yield from self._resolve()
        items = {**dict(mapping or {}), **kwargs}
        yield ("POST", self._path(object_id, "update"),
               {"items": [[dumps(k, "key"), dumps(v, "value")] for k, v in items.items()]})

    @rpc
    def pop(self, key: Any, default: Any = _MISSING) -> Plan:
        """Remove `key` and return its value; KeyError if absent and no default is given."""
        object_id = yield from self._resolve()
        resp = yield ("POST", self._path(object_id, "pop"), {"key": dumps(key, "key")})
        if resp["found"]:
            return loads(resp["value"], "value")
        if default is _MISSING:
            raise KeyError(key)
        return default

    @rpc
    def clear(self) -> Plan:
        object_id = yield from self._resolve()
        yield ("POST", self._path(object_id, "clear"), {})

    @rpc
    def len(self) -> Plan:
        object_id = yield from self._resolve()
        resp = yield ("POST", self._path(object_id, "len"), {})
        return resp["len"]

    # -- iteration: pages of 1,000 entries in key order ------------------------------------------------------
    def _page(self, after: bytes | None) -> Plan:
        object_id = yield from self._resolve()
        resp = yield ("POST", self._path(object_id, "items"), {"after": after, "limit": 1000})
        return resp["items"], resp["more"]

    def _iter_raw(self) -> Iterator[tuple[bytes, bytes]]:
        after = None
        while True:
            items, more = _drive_sync(self._page(after))
            yield from ((k, v) for k, v in items)
            if not more or not items:
                return
            after = items[-1][0]

    async def _aiter_raw(self) -> AsyncIterator[tuple[bytes, bytes]]:
        after = None
        while True:
            items, more = await _drive_async(self._page(after))
            for k, v in items:
                yield k, v
            if not more or not items:
                return
            after = items[-1][0]

    def _keys_sync(self) -> Iterator[Any]:
        return (loads(k, "key") for k, _ in self._iter_raw())

    async def _keys(self) -> AsyncIterator[Any]:
        async for k, _ in self._aiter_raw():
            yield loads(k, "key")

    def _values_sync(self) -> Iterator[Any]:
        return (loads(v, "value") for _, v in self._iter_raw())

    async def _values(self) -> AsyncIterator[Any]:
        async for _, v in self._aiter_raw():
            yield loads(v, "value")

    def _items_sync(self) -> Iterator[tuple[Any, Any]]:
        return ((loads(k, "key"), loads(v, "value")) for k, v in self._iter_raw())

    async def _items(self) -> AsyncIterator[tuple[Any, Any]]:
        async for k, v in self._aiter_raw():
            yield loads(k, "key"), loads(v, "value")

    keys = aio_method(_keys, sync=_keys_sync)
    values = aio_method(_values, sync=_values_sync)
    items = aio_method(_items, sync=_items_sync)

    # -- operators (blocking, as in Modal) --------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Any) -> None:
        self.pop(key)

    def __contains__(self, key: Any) -> bool:
        return self.contains(key)

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def __len__(self) -> int:
        return self.len()
