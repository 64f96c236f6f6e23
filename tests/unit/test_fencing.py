"""Fencing in the dispatcher: a container the backend has reported gone (its Ray node died, say) may still be
running somewhere and still send frames; nothing it sends counts any more.

The dispatcher and its SQLite store are real; the test plays the container's runtime, speaking the frame protocol.
The backend has no room, so the dispatcher starts nothing by itself.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from shoal._spec import frames as _protocol
from shoal.controlplane.dispatch import Dispatcher
from shoal.controlplane.model import Container
from shoal.controlplane.store.sqlite import SQLiteStore


class NoRoom:
    """A backend whose cluster is full: the dispatcher queues inputs and starts no container."""

    name = "none"
    forward_ports: dict = {}

    def capacity(self) -> int:
        return 0


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the other side closed the stream (an EOF, or a reset where it closed with data unread)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def _scenario(tmp_path: Path) -> dict:
    store = SQLiteStore(tmp_path / "state.db")
    await store.open()
    d = Dispatcher(store, NoRoom(), tmp_path, "unix:/nonexistent")
    app = await d.create_app("fencing", "ephemeral", True)
    pool = d._add_pool("fu-fencing", app.id, {"tag": "f", "options": {}})
    call, _ = await d.create_call(pool, "fc-fencing", "remote", b"args")
    assert len(pool.queue) == 1

    # A container of the pool, as the dispatcher would have started it; its runtime connects and gets ready.
    c = Container(id="ta-fencing", pool=pool, token="secret", exited=asyncio.get_running_loop().create_future())
    pool.containers[c.id] = c
    d.containers[c.id] = c
    # What the dispatcher reads from the container: bytes it has received already, which closing the stream does
    # not take back (a frame written after the stream closed would never reach the dispatcher's loop at all).
    inbox = asyncio.StreamReader()
    ours, theirs = socket.socketpair()
    _, to_container = await asyncio.open_connection(sock=ours)
    server_side = asyncio.create_task(d.handle_runtime(inbox, to_container))
    reader, writer = await asyncio.open_connection(sock=theirs)
    inbox.feed_data(_protocol.encode({"t": "hello", "container_id": c.id, "token": "secret"}))
    assert (await _protocol.read_frame(reader))["t"] == "init"
    inbox.feed_data(_protocol.encode({"t": "ready"}))
    frame = await _protocol.read_frame(reader)
    assert frame["t"] == "inputs"
    key = frame["items"][0][0]
    assert not pool.queue and c.running

    # The backend reports the container gone (what the Ray backend's wait() returning does when its node dies),
    # while the process itself still runs: its input goes back to the queue for another container.
    d._on_container_exit(c, -9)
    assert c.state == "dead" and len(pool.queue) == 1

    # The old container finishes the input anyway and reports it: discarded, and the dispatcher stops reading its
    # stream (no end of stream follows: only the fence ends `handle_runtime` here) and closes it.
    inbox.feed_data(_protocol.encode({"t": "out", "items": [[key, "ok", b"stale", 0.01]]}))
    await asyncio.wait_for(server_side, 5)
    eof = await _closed(reader)
    result = {"queued": len(pool.queue), "results": dict(call.results), "done": call.done, "eof": eof}
    writer.close()
    await store.close()
    return result


def test_output_from_a_container_declared_dead_is_discarded(tmp_path: Path) -> None:
    r = asyncio.run(_scenario(tmp_path))
    assert r["results"] == {} and r["done"] == 0  # the stale output did not become the call's result
    assert r["queued"] == 1  # the input waits for a live container
    assert r["eof"]  # the dead container's stream was closed


async def _silent_peer(tmp_path: Path) -> bool:
    import shoal.controlplane.dispatch as dispatch

    store = SQLiteStore(tmp_path / "state.db")
    await store.open()
    d = Dispatcher(store, NoRoom(), tmp_path, "unix:/nonexistent")
    old, dispatch.HELLO_TIMEOUT_S = dispatch.HELLO_TIMEOUT_S, 0.2
    try:
        ours, theirs = socket.socketpair()
        server_side = asyncio.create_task(d.handle_runtime(*await asyncio.open_connection(sock=ours)))
        reader, writer = await asyncio.open_connection(sock=theirs)
        writer.write(b"\x00\x00\x00\x05garbage")  # not a frame of ours, then nothing
        await asyncio.wait_for(server_side, 5)
        closed = await _closed(reader)
        writer.close()
    finally:
        dispatch.HELLO_TIMEOUT_S = old
        await store.close()
    return closed


def test_a_peer_that_is_no_runtime_is_dropped(tmp_path: Path) -> None:
    assert asyncio.run(_silent_peer(tmp_path))
