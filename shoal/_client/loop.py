"""shoal's background event loop: one daemon thread per process where async I/O runs when blocking code asks for
it, and where the aiohttp session lives (so repeated `asyncio.run()`s never leave it bound to a dead loop).

Public: `background_loop()`, `in_running_loop()`, `run_sync(awaitable)`, `iter_sync(async_iterator)`.
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

_loop: asyncio.AbstractEventLoop | None = None
_DONE = object()
MAX_BUFFERED = 4096
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    import asyncio

    global _loop
    if _loop is None:
        with _loop_lock:
            if _loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="shoal-loop", daemon=True).start()
                _loop = loop
    return _loop


def in_running_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def run_sync(awaitable: Awaitable[Any]) -> Any:
    """Run an awaitable on the background loop and wait for it (from any thread, inside an event loop or not);
    Ctrl-C cancels it."""
    import asyncio

    coro = awaitable if inspect.iscoroutine(awaitable) else _await(awaitable)
    fut = asyncio.run_coroutine_threadsafe(coro, background_loop())
    try:
        return fut.result()
    except KeyboardInterrupt:
        fut.cancel()
        raise


def iter_sync(agen: AsyncIterator[Any]) -> Iterator[Any]:
    """Iterate an async iterator from blocking code.

    The iterator runs on the background loop and hands items over through a queue: about 1 µs an item instead
    of a ~90 µs thread hop per item. At most MAX_BUFFERED items wait, so a slow consumer slows the producer.
    """
    import asyncio

    loop = background_loop()
    q: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

    async def pump() -> None:
        try:
            async for item in agen:
                q.put((True, item))
                while q.qsize() > MAX_BUFFERED:
                    await asyncio.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            q.put((False, exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        q.put((False, _DONE))

    fut = asyncio.run_coroutine_threadsafe(pump(), loop)
    try:
        while True:
            ok, item = q.get()
            if ok:
                yield item
            elif item is _DONE:
                return
            else:
                raise item
    finally:
        if not fut.done():
            fut.cancel()
