"""Runs user code inside a container: connect to the control plane, import the function, take inputs in,
send outputs back.

The main thread does blocking socket I/O and runs user code itself: no event loop is running there, so user
code may call `asyncio.run()` or shoal's blocking API, and a trivial input costs no thread hand-off. Output
frames are batched while more inputs of the same batch wait, so fast functions cost one frame per batch.
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack

from .. import _container_context, _protocol
from .._serialization import dumps, dumps_exception, loads

T_PROCESS_START = time.time()
FLUSH_INTERVAL_S = 0.002


class StopImport(BaseException):
    """Raised by `App.run()` when the runtime imports a module that calls it at top level."""


def _die_with_parent() -> None:
    """If the control plane dies, so does this container (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def load_function(init: dict[str, Any]) -> tuple[Callable, dict[str, float]]:
    """Import (or unpickle) the user's function and hydrate its app so nested calls work."""
    from ..app import App

    definition = init["definition"]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if definition.get("serialized_fn") is not None:
        fn = loads(definition["serialized_fn"], "serialized function")
        timings["imports_s"] = time.perf_counter() - t0
        App._hydrate_all(init["app_functions"], definition.get("app_name"))
        return fn, timings
    _container_context.importing_user_module = True
    try:
        try:
            importlib.import_module(definition["module"])
        except StopImport:
            pass  # top-level `with app.run():` reached: everything above it is defined
    finally:
        _container_context.importing_user_module = False
    timings["imports_s"] = time.perf_counter() - t0
    app = App._hydrate_all(init["app_functions"], definition.get("app_name"), tag=definition["tag"])
    fn_obj = app.registered_functions.get(definition["tag"]) if app else None
    if fn_obj is None:
        raise RuntimeError(
            f"function {definition['tag']!r} not found after importing module {definition['module']!r}"
        )
    return fn_obj.get_raw_f(), timings


class Channel:
    """Blocking frame I/O on the control-plane socket; sends are thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb", buffering=1 << 16)
        self._send_lock = threading.Lock()

    def send(self, msg: dict[str, Any]) -> None:
        data = _protocol.encode(msg)
        with self._send_lock:
            self.sock.sendall(data)

    def recv(self) -> dict[str, Any] | None:
        header = self.rfile.read(_protocol.HEADER.size)
        if len(header) < _protocol.HEADER.size:
            return None
        (length,) = _protocol.HEADER.unpack(header)
        body = self.rfile.read(length)
        if len(body) < length:
            return None
        return msgpack.unpackb(body, raw=False)


class Worker:
    """Runs inputs one at a time on the main thread, or with `@modal.concurrent` up to `max_inputs` at once:
    sync functions on a thread pool, async ones as tasks on one event loop thread."""

    def __init__(self, channel: Channel, fn: Callable, definition: dict[str, Any]) -> None:
        self.channel = channel
        self.fn = fn
        self.is_gen = bool(definition.get("is_generator"))
        self.is_async = bool(definition.get("is_async"))
        self.max_inputs = int(definition.get("options", {}).get("max_inputs") or 1)
        self.loop: Any = None  # asyncio loop, created on first async input

    # -- one input -------------------------------------------------------------------------------------------
    def run_coro(self, awaitable: Any) -> Any:
        import asyncio

        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop.run_until_complete(awaitable)

    def call(self, key: int, input_id: str, call_id: str, args: bytes) -> list[Any]:
        """Run one input on this thread; returns its output row."""
        tokens = _container_context.set_current(input_id, call_id)
        t0 = time.perf_counter()
        try:
            a, kw = loads(args, "arguments")
            if self.is_gen:
                self.stream(key, self.fn(*a, **kw))
                result = None
            else:
                result = self.fn(*a, **kw)
                if inspect.isawaitable(result):
                    result = self.run_coro(result)
            out = [key, "ok", dumps(result, "return value")]
        except BaseException as exc:  # noqa: BLE001 - every failure, SystemExit included, goes to the caller
            if isinstance(exc, KeyboardInterrupt):
                raise
            out = [key, "err", dumps_exception(exc)]
        finally:
            _container_context._input_id.reset(tokens[0])
            _container_context._call_id.reset(tokens[1])
        out.append(time.perf_counter() - t0)
        return out

    async def acall(self, key: int, input_id: str, call_id: str, args: bytes) -> None:
        """Run one input as a task on the container's event loop and send its output."""
        _container_context.set_current(input_id, call_id)  # each task has its own context
        t0 = time.perf_counter()
        try:
            a, kw = loads(args, "arguments")
            if self.is_gen:
                async for item in self.fn(*a, **kw):
                    self.channel.send({"t": "item", "key": key, "data": dumps(item, "yielded value")})
                result = None
            else:
                result = await self.fn(*a, **kw)
            out = [key, "ok", dumps(result, "return value")]
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the caller
            out = [key, "err", dumps_exception(exc)]
        self.channel.send({"t": "out", "items": [[*out, time.perf_counter() - t0]]})

    def stream(self, key: int, gen: Any) -> None:
        if inspect.isasyncgen(gen):
            while True:
                try:
                    item = self.run_coro(gen.__anext__())
                except StopAsyncIteration:
                    return
                self.channel.send({"t": "item", "key": key, "data": dumps(item, "yielded value")})
        for item in gen:
            self.channel.send({"t": "item", "key": key, "data": dumps(item, "yielded value")})

    # -- the input loop --------------------------------------------------------------------------------------
    def serve(self) -> None:
        if self.max_inputs > 1:
            return self.serve_concurrently()
        while True:
            msg = self.channel.recv()
            if msg is None or msg["t"] == "stop":
                return
            if msg["t"] != "inputs":
                continue
            pending: list[list[Any]] = []
            last_flush = time.perf_counter()
            items = msg["items"]
            for i, item in enumerate(items):
                pending.append(self.call(*item))
                if i == len(items) - 1 or time.perf_counter() - last_flush > FLUSH_INTERVAL_S:
                    self.channel.send({"t": "out", "items": pending})
                    pending = []
                    last_flush = time.perf_counter()

    def serve_concurrently(self) -> None:
        """Inputs may arrive ahead of time (prefetch); at most `max_inputs` run at once either way."""
        if self.is_async:
            import asyncio

            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="shoal-inputs", daemon=True).start()
            slots = asyncio.Semaphore(self.max_inputs)

            async def guarded(item: list[Any]) -> None:
                async with slots:
                    await self.acall(*item)

            def submit(item: list[Any]) -> None:
                asyncio.run_coroutine_threadsafe(guarded(item), loop)
        else:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(self.max_inputs, thread_name_prefix="shoal-input")

            def run_one(item: list[Any]) -> None:
                self.channel.send({"t": "out", "items": [self.call(*item)]})

            def submit(item: list[Any]) -> None:
                pool.submit(run_one, item)

        while True:
            msg = self.channel.recv()
            if msg is None or msg["t"] == "stop":
                return
            if msg["t"] == "inputs":
                for item in msg["items"]:
                    submit(item)


def connect(address: str) -> socket.socket:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address[5:])
    else:
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def main() -> None:
    _die_with_parent()
    # One write per line, so a line never reaches the caller in pieces (PYTHONUNBUFFERED would make
    # `print(x)` two writes); child processes still inherit PYTHONUNBUFFERED and stream as they write.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=False)
    channel = Channel(connect(os.environ["SHOAL_CONTROL"]))
    channel.send({
        "t": "hello", "container_id": os.environ["SHOAL_CONTAINER_ID"],
        "token": os.environ.get("SHOAL_CONTAINER_TOKEN", ""), "pid": os.getpid(),
    })
    init = channel.recv()
    if init is None:
        os._exit(1)
    t_connected = time.time()
    try:
        fn, timings = load_function(init)
    except BaseException as exc:  # noqa: BLE001 - report import errors to the caller, then exit
        print(f"shoal: failed to load function: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        channel.send({"t": "init_failed", "exc": dumps_exception(exc), "summary": f"{type(exc).__name__}: {exc}"})
        os._exit(1)
    timings["connect_s"] = t_connected - T_PROCESS_START
    timings["init_s"] = time.time() - T_PROCESS_START
    channel.send({"t": "ready", "timings": timings})
    try:
        Worker(channel, fn, init["definition"]).serve()
    except (KeyboardInterrupt, BrokenPipeError, ConnectionError):
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
