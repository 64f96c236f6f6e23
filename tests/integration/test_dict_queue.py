"""Dict and Queue semantics against a real control plane, from the caller and from containers."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from pathlib import Path

import pytest

import shoal
from shoal.exception import InvalidError, NotFoundError

from ..conftest import ControlPlane, _use_home


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def d(control_plane) -> shoal.Dict:
    return shoal.Dict.from_name(unique("d"), create_if_missing=True)


@pytest.fixture
def q(control_plane) -> shoal.Queue:
    return shoal.Queue.from_name(unique("q"), create_if_missing=True)


@pytest.fixture(scope="module")
def storage(control_plane):
    import storage_app

    with storage_app.app.run(quiet=True):
        yield storage_app


# -- Dict ------------------------------------------------------------------------------------------------------
def test_dict_basic_operations(d: shoal.Dict) -> None:
    d["a"] = 1
    d[("tuple", 2)] = {"nested": [1, 2]}
    assert d["a"] == 1 and d[("tuple", 2)] == {"nested": [1, 2]}
    assert "a" in d and "zz" not in d and d.contains("a")
    assert d.get("zz") is None and d.get("zz", 5) == 5
    with pytest.raises(KeyError):
        d["zz"]
    assert d.put("a", 2, skip_if_exists=True) is False and d["a"] == 1
    assert d.put("b", 2, skip_if_exists=True) is True
    d.update({"c": 3}, e=5)
    assert d.len() == len(d) == 5
    assert d.pop("c") == 3 and d.pop("c", None) is None
    with pytest.raises(KeyError):
        d.pop("c")
    del d["e"]
    assert sorted(d.keys(), key=str) == sorted(["a", ("tuple", 2), "b"], key=str)
    assert sorted(d.values(), key=str) == sorted([1, {"nested": [1, 2]}, 2], key=str)
    assert dict(d.items())["b"] == 2
    d.clear()
    assert d.len() == 0


def test_dict_iterates_past_one_page(d: shoal.Dict) -> None:
    d.update({i: i * i for i in range(2500)})
    assert sorted(d.keys()) == list(range(2500))


def test_dict_aio_forms(d: shoal.Dict) -> None:
    async def main() -> list:
        await d.put.aio("k", "v")
        got = await d.get.aio("k")
        keys = [k async for k in d.keys.aio()]
        return [got, keys, await d.len.aio()]

    assert asyncio.run(main()) == ["v", ["k"], 1]


def test_named_dicts_are_shared_and_managed(control_plane) -> None:
    name = unique("shared")
    with pytest.raises(NotFoundError):
        shoal.Dict.from_name(name).get("x")
    shoal.Dict.objects.create(name)
    with pytest.raises(shoal.exception.AlreadyExistsError):
        shoal.Dict.objects.create(name)
    shoal.Dict.from_name(name)["x"] = 1
    assert shoal.Dict.from_name(name)["x"] == 1
    assert name in [o.name for o in shoal.Dict.objects.list()]
    shoal.Dict.objects.delete(name)
    with pytest.raises(NotFoundError):
        shoal.Dict.from_name(name).get("x")
    shoal.Dict.objects.delete(name, allow_missing=True)


def test_ephemeral_dict_is_deleted_on_exit(control_plane) -> None:
    with shoal.Dict.ephemeral() as e:
        e["x"] = 1
        assert e["x"] == 1
        object_id = e.object_id
    with pytest.raises(NotFoundError):
        shoal.Dict.from_id(object_id).get("x")


def test_dict_passed_to_and_returned_from_a_function(storage, d: shoal.Dict) -> None:
    returned = storage.dict_writer.remote(d, "from-container", 42)
    assert isinstance(returned, shoal.Dict)
    assert d["from-container"] == 42 and returned["from-container"] == 42


# -- Queue -----------------------------------------------------------------------------------------------------
def test_queue_fifo_and_nonblocking(q: shoal.Queue) -> None:
    q.put(1)
    q.put_many([2, 3, 4])
    assert q.len() == 4
    assert q.get() == 1
    assert q.get_many(2) == [2, 3]
    assert q.get_many(10) == [4]
    assert q.get(block=False) is None
    assert q.get_many(3, block=False) == []
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)


def test_queue_partitions_are_separate(q: shoal.Queue) -> None:
    q.put("a", partition="p1")
    q.put("b", partition="p2")
    q.put("c")
    assert q.len(partition="p1") == 1 and q.len() == 1 and q.len(total=True) == 3
    assert q.get(partition="p2") == "b"
    q.clear(partition="p1")
    assert q.len(total=True) == 1
    q.clear(all=True)
    assert q.len(total=True) == 0
    with pytest.raises(InvalidError):
        q.put(1, partition="x" * 65)


def test_queue_full_partition(q: shoal.Queue) -> None:
    q.put_many(list(range(5000)), partition="big")
    with pytest.raises(queue.Full):
        q.put(1, partition="big", block=False)
    with pytest.raises(queue.Full):
        q.put(1, partition="big", timeout=0.3)
    q.get(partition="big")
    q.put(1, partition="big", block=False)


def test_queue_iterate_stops_when_idle(q: shoal.Queue) -> None:
    q.put_many([1, 2, 3])
    assert list(q.iterate(item_poll_timeout=0.2)) == [1, 2, 3]


def test_twenty_blocked_getters_are_served_in_arrival_order(q: shoal.Queue) -> None:
    served: dict[int, object] = {}

    def getter(i: int) -> None:
        served[i] = q.get(timeout=30)

    threads = []
    for i in range(20):
        t = threading.Thread(target=getter, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(0.03)  # getters arrive one after another
    for i in range(20):
        q.put(f"item-{i}")
    for t in threads:
        t.join(timeout=30)
    assert served == {i: f"item-{i}" for i in range(20)}


def test_blocking_gets_from_several_containers(storage, q: shoal.Queue) -> None:
    calls = [storage.queue_taker.spawn(q, 60) for _ in range(3)]
    time.sleep(1.0)  # let them block
    storage.queue_feeder.remote(q, [7, 8, 9])
    assert sorted(c.get(timeout=60) for c in calls) == [7, 8, 9]


def test_queue_aio_forms(q: shoal.Queue) -> None:
    async def main() -> list:
        await q.put.aio("x")
        return [await q.len.aio(), await q.get.aio(), [i async for i in q.iterate.aio()]]

    assert asyncio.run(main()) == [1, "x", []]


# -- durability ------------------------------------------------------------------------------------------------
def test_dicts_queues_and_secrets_survive_a_control_plane_sigkill(tmp_path: Path) -> None:
    import os

    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home").start()
    _use_home(cp.home)
    try:
        d = shoal.Dict.from_name("durable", create_if_missing=True)
        q = shoal.Queue.from_name("durable", create_if_missing=True)
        d["k"] = "v"
        q.put_many([1, 2], partition="p")
        shoal.Secret.objects.create("durable-secret", {"K": "v"})
        cp.kill()
        cp.start()
        assert shoal.Dict.from_name("durable")["k"] == "v"
        assert shoal.Queue.from_name("durable").get_many(5, partition="p") == [1, 2]
        assert "durable-secret" in [s.name for s in shoal.Secret.objects.list()]
    finally:
        cp.stop()
        if previous:
            _use_home(Path(previous))


# -- CLI -------------------------------------------------------------------------------------------------------
def test_dict_and_queue_cli(control_plane) -> None:
    from ..conftest import run_cli

    dname, qname = unique("cli-d"), unique("cli-q")
    assert run_cli("dict", "create", dname).returncode == 0
    shoal.Dict.from_name(dname).update({"alpha": 1, "beta": [2, 3]})
    out = run_cli("dict", "get", dname, "beta")
    assert out.returncode == 0 and out.stdout.strip() == "[2, 3]", out.stderr
    assert run_cli("dict", "get", dname, "nope").returncode == 1
    items = run_cli("dict", "items", dname).stdout.splitlines()
    assert sorted(items) == ['"alpha": 1', '"beta": [2, 3]']  # stored in key-bytes order
    assert dname in run_cli("dict", "list", "--json").stdout
    assert run_cli("queue", "create", qname).returncode == 0
    shoal.Queue.from_name(qname).put_many(["x", "y"])
    assert run_cli("queue", "len", qname).stdout.strip() == "2"
    assert run_cli("queue", "peek", qname, "2").stdout.splitlines() == ['"x"', '"y"']
    assert run_cli("queue", "clear", qname, "-y").returncode == 0
    assert shoal.Queue.from_name(qname).len() == 0
    assert run_cli("dict", "delete", dname, "-y").returncode == 0
    assert dname not in run_cli("dict", "list", "--json").stdout
