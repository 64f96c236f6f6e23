"""`Dict`: a durable key-value store shared by functions. Keys and values are cloudpickled; entries expire
after 7 days without reads or writes. Operators (`d[k]`, `k in d`, …) block; use the `.aio` methods in async
code."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ._client.aio import Emit, Plan, rpc, rpc_iter
from ._object import StorageObject
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

    # -- iteration: pages of 1,000 entries in key order, requested as the caller iterates --------------------
    def _entries(self, decode: Callable[[bytes, bytes], Any]) -> Plan:
        object_id = yield from self._resolve()
        after = None
        while True:
            resp = yield ("POST", self._path(object_id, "items"), {"after": after, "limit": 1000})
            items = resp["items"]
            yield Emit(decode(k, v) for k, v in items)  # decoded as the caller takes each
            if not resp["more"] or not items:
                return
            after = items[-1][0]

    @rpc_iter
    def keys(self) -> Plan:
        return self._entries(lambda k, _: loads(k, "key"))

    @rpc_iter
    def values(self) -> Plan:
        return self._entries(lambda _, v: loads(v, "value"))

    @rpc_iter
    def items(self) -> Plan:
        return self._entries(lambda k, v: (loads(k, "key"), loads(v, "value")))

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
