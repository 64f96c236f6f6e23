"""Idempotent writes in the store (real SQLite): a write sent again under its idempotency key returns the first
result and changes nothing; another key is another write; keys expire. And the key a request carries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from shoal.controlplane.idempotency import is_retry, request_key
from shoal.controlplane.rest import ApiError
from shoal.controlplane.store import dicts, idempotency, queues
from shoal.controlplane.store.sqlite import SQLiteStore


def in_store(tmp_path: Path, body: Callable[[SQLiteStore], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        store = SQLiteStore(tmp_path / "state.db")
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def put(store: SQLiteStore, values: list[bytes], key: str | None, **kw: Any) -> Awaitable[Any]:
    return queues.put(store, "qu-1", "", values, ttl_s=60, max_items=kw.get("max_items", 100), max_partitions=10,
                      key=key, hand_to=kw.get("hand_to", ()))


def test_queue_put_and_pop_resent_under_their_key_are_done_once(tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> None:
        assert await put(store, [b"a", b"b", b"c"], "put-1") == []
        assert isinstance(await put(store, [b"a", b"b", b"c"], "put-1"), idempotency.Replay)
        assert await queues.length(store, "qu-1", "") == 3
        assert await queues.pop(store, "qu-1", "", 2, shared=False, key="pop-1") == [b"a", b"b"]
        assert await queues.pop(store, "qu-1", "", 2, shared=False, key="pop-1") == [b"a", b"b"]
        assert await queues.length(store, "qu-1", "") == 1
        assert await queues.pop(store, "qu-1", "", 2, shared=False, key="pop-2") == [b"c"]
        await put(store, [b"d"], "put-2")  # another key: another write
        assert await queues.peek(store, "qu-1", "", 10) == [b"d"]

    in_store(tmp_path, body)


def test_a_put_that_wrote_nothing_or_a_pop_given_back_can_be_done_again(tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> None:
        assert await put(store, [b"x"] * 3, "full", max_items=2) is None  # full: nothing written, no trace
        assert await put(store, [b"x"] * 3, "full", max_items=5) == []
        assert await queues.pop(store, "qu-1", "", 1, shared=False, key="gone") == [b"x"]
        await queues.give_back(store, "qu-1", "", [b"x"], key="gone")  # its client went away
        assert await queues.length(store, "qu-1", "") == 3
        assert await queues.pop(store, "qu-1", "", 3, shared=False, key="gone") == [b"x"] * 3

    in_store(tmp_path, body)


def test_items_handed_to_a_blocked_getter_are_kept_under_its_key(tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> None:
        handed = await put(store, [b"1", b"2", b"3"], "put", hand_to=[(2, "getter")])
        assert handed == [[b"1", b"2"]]
        assert await queues.pop(store, "qu-1", "", 2, shared=False, key="getter") == [b"1", b"2"]  # its resend
        # A getter whose own pop took items already is handed none.
        assert await queues.pop(store, "qu-1", "", 1, shared=False, key="raced") == [b"3"]
        assert await put(store, [b"4"], "put-2", hand_to=[(1, "raced")]) == [[]]
        assert await queues.peek(store, "qu-1", "", 10) == [b"4"]

    in_store(tmp_path, body)


def test_dict_writes_resent_under_their_key_are_done_once(tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> None:
        assert await dicts.put(store, "di-1", b"k", b"1", skip_if_exists=True, idem="p1") is True
        assert await dicts.put(store, "di-1", b"k", b"1", skip_if_exists=True, idem="p1") is True  # same answer
        await dicts.put(store, "di-1", b"k", b"2", skip_if_exists=False, idem="p2")
        await dicts.update(store, "di-1", [(b"k", b"old")], idem="u1")
        await dicts.put(store, "di-1", b"k", b"3", skip_if_exists=False, idem="p3")
        await dicts.update(store, "di-1", [(b"k", b"old")], idem="u1")  # a resend does not undo the later put
        assert await dicts.get(store, "di-1", b"k") == b"3"
        assert await dicts.pop(store, "di-1", b"k", idem="pop") == b"3"
        assert await dicts.pop(store, "di-1", b"k", idem="pop") == b"3"  # the value it removed, again
        assert await dicts.pop(store, "di-1", b"k", idem="pop-2") is None
        await dicts.put(store, "di-1", b"k", b"4", skip_if_exists=False, idem="p4")
        await dicts.clear(store, "di-1", idem="c1")
        await dicts.put(store, "di-1", b"k", b"5", skip_if_exists=False, idem="p5")
        await dicts.clear(store, "di-1", idem="c1")  # a resent clear keeps what was put since
        assert await dicts.length(store, "di-1") == 1

    in_store(tmp_path, body)


def test_keys_expire(tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> None:
        await put(store, [b"a"], "old")
        await store.flushed(idempotency.expire(store, time.time() + 1))
        assert await put(store, [b"a"], "old") == []  # forgotten: a new write
        assert await queues.length(store, "qu-1", "") == 2

    in_store(tmp_path, body)


def test_request_key_is_scoped_to_its_route_and_checked() -> None:
    a = make_mocked_request("POST", "/v1/queues/qu-1/put", headers={"Idempotency-Key": "abc"})
    b = make_mocked_request("POST", "/v1/queues/qu-2/put", headers={"Idempotency-Key": "abc"})
    assert request_key(a) != request_key(b)
    assert request_key(make_mocked_request("POST", "/v1/queues/qu-1/put")) is None
    for bad in ("", "x" * 65, "a b", "ключ"):
        with pytest.raises(ApiError, match="Idempotency-Key") as err:
            request_key(make_mocked_request("POST", "/x", headers={"Idempotency-Key": bad}))
        assert err.value.status == 400
    assert is_retry(make_mocked_request("POST", "/x", headers={"Shoal-Retry": "1"}))
    assert not is_retry(a)
