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
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from .. import _container_context
from .._container_context import StopImport
from .._serialization import dumps, loads
from .._spec import frames
from .._spec.definitions import FunctionDefinition
from .._spec.errors import dumps_exception
from ..exception import InputCancellation, InvalidError

T_PROCESS_START = time.time()
FLUSH_INTERVAL_S = 0.002


def report_failure(exc: BaseException, input_id: str) -> None:
    """A failed input's traceback goes to the app's log as well as to its caller, as on Modal: a spawned call
    that fails is seen without anyone calling `.get()`. One write, so concurrent inputs' reports stay whole."""
    aio = sys.modules.get("asyncio")  # imported on first async use only
    if isinstance(exc, InputCancellation) or (aio is not None and isinstance(exc, aio.CancelledError)):
        return
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:  # from the user's code on
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    sys.stderr.write(f"shoal: input {input_id} failed:\n{text}")
    sys.stderr.flush()


def _die_with_parent() -> None:
    """If the control plane dies, so does this container (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def load_function(init: frames.Init) -> tuple[Callable, dict[str, float]]:
    """Import (or unpickle) the user's function and hydrate its app so nested calls work."""
    from ..app import App

    definition = init.definition
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if definition.serialized_fn is not None:
        fn = loads(definition.serialized_fn, "serialized function")
        timings["imports_s"] = time.perf_counter() - t0
        App._hydrate_all(init.app_functions, definition.app_name)
        return fn, timings
    _container_context.importing_user_module = True
    try:
        try:
            importlib.import_module(definition.module or "")
        except StopImport:
            pass  # top-level `with app.run():` reached: everything above it is defined
    finally:
        _container_context.importing_user_module = False
    timings["imports_s"] = time.perf_counter() - t0
    app = App._hydrate_all(init.app_functions, definition.app_name, tag=definition.tag)
    fn_obj = app.registered_functions.get(definition.tag) if app else None
    if fn_obj is None:
        raise RuntimeError(f"function {definition.tag!r} not found after importing module {definition.module!r}")
    return fn_obj.get_raw_f(), timings


class Channel:
    """Blocking frame I/O on the control-plane socket; sends are thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb", buffering=1 << 16)
        self._send_lock = threading.Lock()

    def send(self, msg: msgspec.Struct) -> None:
        data = frames.encode(msg)
        with self._send_lock:
            self.sock.sendall(data)

    def recv(self) -> frames.ToRuntime | None:
        header = self.rfile.read(frames.HEADER.size)
        if len(header) < frames.HEADER.size:
            return None
        (length,) = frames.HEADER.unpack(header)
        body = self.rfile.read(length)
        if len(body) < length:
            return None
        return frames.to_runtime.decode(body)


class Terminated(BaseException):
    """SIGTERM while a class with @exit hooks runs: unwind to run the hooks, then exit."""


class Worker:
    """Runs inputs one at a time on the main thread, or with `@modal.concurrent` up to `max_inputs` at once:
    sync functions on a thread pool, async ones as tasks on one event loop thread; or, for `@modal.batched`,
    in batches (one call with lists).

    For a class (`@app.cls()`), `enter()` builds the object with its parameter values and runs its @enter
    hooks; each input names the method it calls; `exit()` runs the @exit hooks."""

    def __init__(self, channel: Channel, fn: Callable, definition: FunctionDefinition) -> None:
        self.channel = channel
        self.fn = fn
        self.definition = definition
        self.is_gen = definition.is_generator
        self.is_async = definition.is_async
        options = definition.options
        self.max_inputs = options.max_inputs
        self.batch_max_size = options.batch_max_size or 0
        self.batch_wait_s = (options.batch_wait_ms or 0) / 1000.0
        self.cls_info = definition.cls
        self.instance: Any = None
        self._targets: dict[str | None, tuple[Callable, bool, bool]] = {}
        if self.cls_info is not None:
            self.is_async = any(m.is_async for m in self.cls_info.methods.values())
        self.loop: Any = None  # asyncio loop, created on first async use
        self.loop_thread: threading.Thread | None = None  # set once the loop runs on its own thread

    # -- classes ---------------------------------------------------------------------------------------------
    def enter(self) -> None:
        """Build the object (parameters set as attributes, `__init__` not run) and run its @enter hooks:
        `snap=True` ones first, then the others, base classes first. An exception fails the container start."""
        if self.cls_info is None:
            return
        from .._spec.params import unpack_params
        from ..cls import construct_instance

        self.instance = construct_instance(self.fn, self.cls_info, unpack_params(self.definition.params))
        for name in self.cls_info.enter:
            result = getattr(self.instance, name)()
            if inspect.isawaitable(result):
                self.run_coro(result)

    def exit(self) -> None:
        """Run the @exit hooks (the control plane allows 30 s before it kills the container)."""
        if self.instance is None or self.cls_info is None or not self.cls_info.exit:
            return
        for name in self.cls_info.exit:
            try:
                result = getattr(self.instance, name)()
                if inspect.isawaitable(result):
                    self.run_coro(result)
            except BaseException:  # noqa: BLE001 - one failing hook must not skip the others
                import traceback

                print(f"shoal: @exit hook {name} failed:", file=sys.stderr)
                traceback.print_exc()

    def target(self, method: str | None) -> tuple[Callable, bool, bool]:
        """What an input runs: (callable, is generator, is async)."""
        if self.instance is None:
            return self.fn, self.is_gen, self.is_async
        t = self._targets.get(method)
        if t is None:
            assert self.cls_info is not None
            info = self.cls_info.methods.get(method or "")
            if info is None:
                raise AttributeError(f"class {self.cls_info.name} has no method {method!r}")
            t = (getattr(self.instance, method or ""), info.is_generator, info.is_async)
            self._targets[method] = t
        return t

    # -- one input -------------------------------------------------------------------------------------------
    def run_coro(self, awaitable: Any) -> Any:
        import asyncio

        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        if self.loop_thread is not None:  # the loop runs concurrent inputs on its own thread
            return asyncio.run_coroutine_threadsafe(_as_coro(awaitable), self.loop).result()
        return self.loop.run_until_complete(awaitable)

    def call(self, key: int, input_id: str, call_id: str, args: bytes, method: str | None = None) -> list[Any]:
        """Run one input on this thread; returns its output row."""
        tokens = _container_context.set_current(input_id, call_id)
        t0 = time.perf_counter()
        try:
            a, kw = loads(args, "arguments")
            fn, is_gen, _ = self.target(method)
            if is_gen:
                self.stream(key, fn(*a, **kw))
                result = None
            else:
                result = fn(*a, **kw)
                if inspect.isawaitable(result):
                    result = self.run_coro(result)
            out = [key, "ok", dumps(result, "return value")]
        except BaseException as exc:  # noqa: BLE001 - every failure, SystemExit included, goes to the caller
            if isinstance(exc, (KeyboardInterrupt, Terminated)):
                raise
            report_failure(exc, input_id)
            out = [key, "err", dumps_exception(exc)]
        finally:
            _container_context._input_id.reset(tokens[0])
            _container_context._call_id.reset(tokens[1])
        out.append(time.perf_counter() - t0)
        return out

    async def acall(self, key: int, input_id: str, call_id: str, args: bytes, method: str | None = None) -> None:
        """Run one input as a task on the container's event loop and send its output."""
        _container_context.set_current(input_id, call_id)  # each task has its own context
        t0 = time.perf_counter()
        try:
            a, kw = loads(args, "arguments")
            fn, is_gen, _ = self.target(method)
            if is_gen:
                async for item in fn(*a, **kw):
                    self.channel.send(frames.Item(key, dumps(item, "yielded value")))
                result = None
            else:
                result = await fn(*a, **kw)
            out = [key, "ok", dumps(result, "return value")]
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the caller
            report_failure(exc, input_id)
            out = [key, "err", dumps_exception(exc)]
        self.channel.send(frames.Out([(*out, time.perf_counter() - t0)]))

    def stream(self, key: int, gen: Any) -> None:
        if inspect.isasyncgen(gen):
            while True:
                try:
                    item = self.run_coro(gen.__anext__())
                except StopAsyncIteration:
                    return
                self.channel.send(frames.Item(key, dumps(item, "yielded value")))
        for item in gen:
            self.channel.send(frames.Item(key, dumps(item, "yielded value")))

    # -- the input loop --------------------------------------------------------------------------------------
    def input_batches(self) -> Iterator[list[frames.InputItem]]:
        """The items of each `inputs` frame, until the control plane says stop (or goes away)."""
        while True:
            msg = self.channel.recv()
            if msg is None or type(msg) is frames.Stop:
                return
            if type(msg) is frames.Inputs:
                yield msg.items

    def serve(self) -> None:
        if self.batch_max_size:
            return self.serve_batched()
        if self.max_inputs > 1:
            return self.serve_concurrently()
        for items in self.input_batches():
            pending: list[list[Any]] = []
            last_flush = time.perf_counter()
            for i, item in enumerate(items):
                pending.append(self.call(*item))
                if i == len(items) - 1 or time.perf_counter() - last_flush > FLUSH_INTERVAL_S:
                    self.channel.send(frames.Out(pending))
                    pending = []
                    last_flush = time.perf_counter()

    def serve_concurrently(self) -> None:
        """Inputs may arrive ahead of time (prefetch); at most `max_inputs` run at once either way. Async
        targets run as tasks on one event loop thread (the one @enter hooks ran on), sync ones on threads."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(self.max_inputs, thread_name_prefix="shoal-input")
        slots: asyncio.Semaphore | None = None

        async def guarded(item: list[Any]) -> None:
            assert slots is not None
            async with slots:
                await self.acall(*item)

        def run_one(item: list[Any]) -> None:
            self.channel.send(frames.Out([self.call(*item)]))

        def is_async(item: list[Any]) -> bool:
            try:
                return self.target(item[4] if len(item) > 4 else None)[2]
            except Exception:  # noqa: BLE001 - the input itself reports the error
                return False

        for items in self.input_batches():
            for item in items:
                if not is_async(item):
                    pool.submit(run_one, item)
                    continue
                if self.loop_thread is None:
                    if self.loop is None:
                        self.loop = asyncio.new_event_loop()
                    slots = asyncio.Semaphore(self.max_inputs)
                    self.loop_thread = threading.Thread(target=self.loop.run_forever, name="shoal-inputs",
                                                        daemon=True)
                    self.loop_thread.start()
                asyncio.run_coroutine_threadsafe(guarded(item), self.loop)

    def serve_batched(self) -> None:
        """Collect inputs until `max_batch_size` have arrived or `wait_ms` passed since the first, then call the
        function once with lists. The control plane never sends more than `max_batch_size` at a time."""
        import queue

        incoming: queue.Queue[frames.ToRuntime | None] = queue.Queue()

        def read() -> None:
            while True:
                msg = self.channel.recv()
                incoming.put(msg)
                if msg is None or type(msg) is frames.Stop:
                    return

        threading.Thread(target=read, name="shoal-frames", daemon=True).start()
        buffer: list[frames.InputItem] = []
        deadline = 0.0
        while True:
            msg: frames.ToRuntime | None
            try:
                msg = incoming.get(timeout=max(0.0, deadline - time.monotonic()) if buffer else None)
            except queue.Empty:
                msg = frames.Inputs([])  # the wait is over: call with what is buffered
            if msg is None or type(msg) is frames.Stop:
                return  # inputs still buffered were handed back to the queue by the control plane
            if type(msg) is frames.Inputs:
                if not buffer and msg.items:
                    deadline = time.monotonic() + self.batch_wait_s
                buffer.extend(msg.items)
            while len(buffer) >= self.batch_max_size or (buffer and time.monotonic() >= deadline):
                batch, buffer = buffer[:self.batch_max_size], buffer[self.batch_max_size:]
                self.channel.send(frames.Out(self.call_batch(batch)))
                deadline = time.monotonic() + self.batch_wait_s

    def call_batch(self, items: list[frames.InputItem]) -> list[list[Any]]:
        """One call with a list per parameter; its list of results is split back into one output per input.
        Inputs whose arguments don't fit the signature fail alone; an exception fails the whole batch."""
        t0 = time.perf_counter()
        outs: dict[int, list[Any]] = {}
        accepted: list[tuple[int, inspect.BoundArguments]] = []
        fn: Callable | None = None
        try:
            fn, _, _ = self.target(items[0][4] if len(items[0]) > 4 else None)
            sig = inspect.signature(fn)
        except BaseException as exc:  # noqa: BLE001 - goes to every caller
            data = dumps_exception(exc)
            return [[item[0], "err", data, 0.0] for item in items]
        for key, _input_id, _call_id, args, *_ in items:
            try:
                a, kw = loads(args, "arguments")
                accepted.append((key, sig.bind(*a, **kw)))
            except BaseException as exc:  # noqa: BLE001 - this input's own mistake
                outs[key] = [key, "err", dumps_exception(exc)]
        if accepted:
            positional: list[list[Any]] = []
            keyword: dict[str, list[Any]] = {}
            for p in sig.parameters.values():
                column = [bound.arguments.get(p.name) for _, bound in accepted]
                if p.kind is p.KEYWORD_ONLY:
                    keyword[p.name] = column
                else:
                    positional.append(column)
            first = next(i for i in items if i[0] == accepted[0][0])
            tokens = _container_context.set_current(first[1], first[2])
            try:
                result = fn(*positional, **keyword)
                if inspect.isawaitable(result):
                    result = self.run_coro(result)
                if not isinstance(result, (list, tuple)) or len(result) != len(accepted):
                    got = f"{len(result)} outputs" if isinstance(result, (list, tuple)) else \
                        f"a {type(result).__name__}"
                    raise InvalidError(
                        f"Output of batched function {getattr(fn, '__qualname__', fn)} must be a list of equal "
                        f"length to its inputs: got {got} for {len(accepted)} inputs")
                for (key, _), value in zip(accepted, result, strict=True):
                    try:
                        outs[key] = [key, "ok", dumps(value, "return value")]
                    except BaseException as exc:  # noqa: BLE001 - one unpicklable result fails its input only
                        outs[key] = [key, "err", dumps_exception(exc)]
            except BaseException as exc:  # noqa: BLE001 - every input of the batch gets the failure
                if isinstance(exc, (KeyboardInterrupt, Terminated)):
                    raise
                data = dumps_exception(exc)
                for key, _ in accepted:
                    outs[key] = [key, "err", data]
            finally:
                _container_context._input_id.reset(tokens[0])
                _container_context._call_id.reset(tokens[1])
        share = (time.perf_counter() - t0) / len(items)
        return [[*outs[item[0]], share] for item in items]


async def _as_coro(awaitable: Any) -> Any:
    return await awaitable


def connect(address: str) -> socket.socket:
    if address.startswith("fd:"):  # connected for us by the sandbox (shoal/runtime/sandbox_init.py)
        sock = socket.socket(fileno=int(address[3:]))
        sock.set_inheritable(False)  # inherited for the exec only; processes the user starts do not get it
        return sock
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address[5:])
    else:
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def wait_warm(channel: Channel, warm: frames.Warm) -> frames.ToRuntime | None:
    """A warm-pool container: import what this image's functions imported before, then wait to be given a
    function (the `init` frame) or to be stopped."""
    for name in warm.imports:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a hint only; the function imports what it needs itself
            pass
    channel.send(frames.WarmReady())
    return channel.recv()


def take_assignment(assign: frames.Assignment) -> None:
    """Become the container of the assigned function: its secrets as environment, its source at /root (the
    sandbox) or on sys.path (process isolation)."""
    os.environ.update(assign.env)
    source = assign.source
    if assign.sandboxed:
        for entry in os.listdir(source):
            target = os.path.join("/root", entry)
            if not os.path.lexists(target):
                os.symlink(os.path.join(source, entry), target)
        os.chdir("/root")
    else:
        sys.path.insert(0, source)
        os.chdir(source)
    importlib.invalidate_caches()


def imported_packages(baseline: set[str]) -> list[str]:
    """Top-level packages the function's module imported, from the image (not the app's own source): what a
    warm container of this image imports ahead."""
    names = set()
    for name in set(sys.modules) - baseline:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None) or ""
        if "." in name or name.startswith("_") or not path or path.startswith(("/root/", "/run/shoal-src")):
            continue
        if os.getcwd() and path.startswith(os.getcwd() + os.sep):
            continue
        names.add(name)
    return sorted(names)


def main() -> None:
    _die_with_parent()
    # One write per line, so a line never reaches the caller in pieces (PYTHONUNBUFFERED would make
    # `print(x)` two writes); child processes still inherit PYTHONUNBUFFERED and stream as they write.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=False)
    channel = Channel(connect(os.environ["SHOAL_CONTROL"]))
    channel.send(frames.Hello(os.environ["SHOAL_CONTAINER_ID"], os.environ.get("SHOAL_CONTAINER_TOKEN", ""),
                              os.getpid()))
    init = channel.recv()
    warm = isinstance(init, frames.Warm)
    if warm:
        init = wait_warm(channel, init)
    if type(init) is not frames.Init:
        os._exit(0 if init is not None else 1)
    t_connected = time.time()
    if init.app_id:  # the app `Sandbox.create()` without `app=` uses in this container (and its subprocesses)
        os.environ["SHOAL_APP_ID"] = init.app_id
    if init.assign is not None:
        take_assignment(init.assign)
    baseline = set(sys.modules)
    stage = "load function"
    web: Any = None  # runtime.web.WebServers of a web function's container
    web_ports: dict[str, int] = {}
    try:
        fn, timings = load_function(init)
        worker = Worker(channel, fn, init.definition)
        if worker.cls_info is not None:
            stage = "start class (@enter)"
            t_enter = time.perf_counter()
            worker.enter()
            timings["enter_s"] = time.perf_counter() - t_enter
        if init.definition.has_web():
            from .web import WebServers, start_web

            stage = "start its web server"
            web = WebServers()
            web_ports = start_web(fn, init.definition, worker.instance, web)
    except BaseException as exc:  # noqa: BLE001 - report import and @enter errors to the caller, then exit
        print(f"shoal: failed to {stage}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        channel.send(frames.InitFailed(dumps_exception(exc), f"{type(exc).__name__}: {exc}"))
        os._exit(1)
    if worker.cls_info is not None and worker.cls_info.exit:
        signal.signal(signal.SIGTERM, _on_sigterm)  # unwind to run the @exit hooks
    timings["connect_s"] = t_connected - T_PROCESS_START
    timings["t_main"] = T_PROCESS_START  # after the interpreter started and imported shoal
    timings["t_exec"] = float(os.environ.get("SHOAL_T_EXEC") or T_PROCESS_START)  # set by the launcher
    timings["t_ready"] = time.time()
    if warm:
        timings.update(warm=True, t_assigned=t_connected)
    channel.send(frames.Ready(timings, web_ports))
    channel.send(frames.Modules(imported_packages(baseline)))
    try:
        worker.serve()
    except (KeyboardInterrupt, Terminated, BrokenPipeError, ConnectionError):
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the hooks have their grace period; SIGKILL ends it
    if web is not None:
        web.stop()  # requests in flight finish, the ASGI lifespan shutdown runs
    worker.exit()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()
