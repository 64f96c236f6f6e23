"""Fencing in the control plane's core: a container the backend has reported gone (its Ray node died, say) may
still be running somewhere and still send frames; nothing it sends counts any more.

The core (controlplane/build.py) and its SQLite store are real; the test plays the container's runtime, speaking
the frame protocol, and the backend: it has no room, so the core starts nothing by itself, and the container the
test starts ends when the test says the backend saw it end.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from shoal._spec import frames as _protocol
from shoal._spec.definitions import FunctionDefinition
from shoal.backends.base import ContainerSpec, OutputSink
from shoal.controlplane.build import Core, build_core
from shoal.controlplane.core import runtime_link
from shoal.controlplane.core.containers import ControlPlaneAddress
from shoal.controlplane.store.sqlite import SQLiteStore


class Handle:
    """A started container whose process the backend can no longer reach: kill() does nothing, and wait()
    returns when the test says the backend reported it gone."""

    pid = 0
    sandboxed = False
    isolation = None
    node_id = None
    cgroup = None

    def __init__(self) -> None:
        self.gone: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait(self) -> int:
        return await self.gone

    def exit_reason(self) -> str | None:
        return None

    def kill(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    async def web_connect(self, port: int) -> socket.socket:
        raise OSError("no web server here")


class NoRoom:
    """A backend whose cluster is full: the core queues inputs and starts no container by itself."""

    name = "none"
    isolation = "process"
    availability = None
    volumes_unsupported = None
    control_ip = "127.0.0.1"

    def __init__(self) -> None:
        self.forward_ports: dict[int, tuple[str, int]] = {}
        self.started: asyncio.Queue[Handle] = asyncio.Queue()

    def capacity(self) -> int:
        return 0

    async def start(self, spec: ContainerSpec, on_output: OutputSink | None) -> Handle:
        handle = Handle()
        self.started.put_nowait(handle)
        return handle

    def shutdown(self) -> None:
        pass


async def _core(tmp_path: Path) -> tuple[Core, NoRoom, SQLiteStore]:
    store = SQLiteStore(tmp_path / "state.db")
    await store.open()
    backend = NoRoom()
    return build_core(store, backend, tmp_path, ControlPlaneAddress("unix:/nonexistent", "")), backend, store


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the other side closed the stream (an EOF, or a reset where it closed with data unread)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def _scenario(tmp_path: Path) -> dict:
    core, backend, store = await _core(tmp_path)
    app = await core.apps.create_app("fencing", "ephemeral", True)
    functions = await core.apps.register_functions(app, [FunctionDefinition(tag="f")])
    pool = core.registry.pools[functions["f"]]
    call, _ = await core.calls.create_call(pool, "fc-fencing", "remote", b"args")
    assert len(pool.queue) == 1

    # A container of the pool, as the autoscaler would start one had the backend room; its runtime connects
    # and gets ready.
    c = core.queues.start_container(pool)
    handle = await asyncio.wait_for(backend.started.get(), 5)
    # What the core reads from the container: bytes it has received already, which closing the stream does
    # not take back (a frame written after the stream closed would never reach the core's loop at all).
    inbox = asyncio.StreamReader()
    ours, theirs = socket.socketpair()
    _, to_container = await asyncio.open_connection(sock=ours)
    server_side = asyncio.create_task(core.runtime.handle_runtime(inbox, to_container))
    reader, writer = await asyncio.open_connection(sock=theirs)
    inbox.feed_data(_protocol.encode(_protocol.Hello(c.id, c.token)))
    assert isinstance(await _protocol.read_frame(reader, _protocol.to_runtime), _protocol.Init)
    inbox.feed_data(_protocol.encode(_protocol.Ready()))
    frame = await _protocol.read_frame(reader, _protocol.to_runtime)
    assert isinstance(frame, _protocol.Inputs)
    key = frame.items[0][0]
    assert not pool.queue and c.running

    # The backend reports the container gone (what the Ray backend's wait() returning does when its node dies),
    # while the process itself still runs: its input goes back to the queue for another container.
    handle.gone.set_result(-9)
    await asyncio.wait_for(c.exited, 5)  # type: ignore[arg-type]
    assert c.state == "dead" and len(pool.queue) == 1

    # The old container finishes the input anyway and reports it: discarded, and the core stops reading its
    # stream (no end of stream follows: only the fence ends `handle_runtime` here) and closes it.
    inbox.feed_data(_protocol.encode(_protocol.Out([(key, "ok", b"stale", 0.01)])))
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
    core, _backend, store = await _core(tmp_path)
    old, runtime_link.HELLO_TIMEOUT_S = runtime_link.HELLO_TIMEOUT_S, 0.2
    try:
        ours, theirs = socket.socketpair()
        server_side = asyncio.create_task(core.runtime.handle_runtime(*await asyncio.open_connection(sock=ours)))
        reader, writer = await asyncio.open_connection(sock=theirs)
        writer.write(b"\x00\x00\x00\x05garbage")  # not a frame of ours, then nothing
        await asyncio.wait_for(server_side, 5)
        closed = await _closed(reader)
        writer.close()
    finally:
        runtime_link.HELLO_TIMEOUT_S = old
        await store.close()
    return closed


def test_a_peer_that_is_no_runtime_is_dropped(tmp_path: Path) -> None:
    assert asyncio.run(_silent_peer(tmp_path))
