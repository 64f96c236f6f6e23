"""What both stores share: group-commit tickets, transactions, reads in a thread.

Writes are queued to one writer thread that commits everything queued so far in one transaction, then reports
the highest committed ticket back to the event loop. Callers that acknowledge something to a client first
`await flushed(ticket)`; everything else fires and forgets. Reads run on other connections in a thread.

SQL given to `write`, `read`, `read_now` and run by `transact` functions uses `?` placeholders and the subset of
SQL that SQLite (>= 3.24) and PostgreSQL both run: `INSERT ... ON CONFLICT (key) DO UPDATE SET c=excluded.c` or
`ON CONFLICT DO NOTHING`, not `INSERT OR REPLACE`/`OR IGNORE` (the PostgreSQL store rewrites those, but only as a
safety net); no PRAGMA, no GLOB. Rows come back as tuples, BLOB columns as bytes, REAL as float.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class StoreError(Exception):
    """The store cannot be opened (database unreachable, schema in use by another control plane...)."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> tuple | None: ...

    def fetchall(self) -> list[tuple]: ...


class Connection(Protocol):
    """What a `transact` function is handed: the part of `sqlite3.Connection` callers use."""

    def execute(self, sql: str, params: Any = ...) -> Cursor: ...

    def executemany(self, sql: str, params: Any) -> Cursor: ...


class _Txn:
    """A function run inside the writer's transaction whose result the caller awaits (read-modify-write)."""

    __slots__ = ("fn", "future", "result", "error")

    def __init__(self, fn: Callable[[Any], Any], future: asyncio.Future) -> None:
        self.fn = fn
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None

    def resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.result)


Write = tuple[str, Any, bool] | _Txn  # (sql, params, executemany) or a transaction function


class Store:
    """The interface callers use. Subclasses open connections (`open`), run the writer thread's loop (started
    with `_start_writer`) and read (`_read`)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._next_ticket = 0
        self._committed = 0
        self._waiters: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.on_commit: Callable[[float], None] | None = None  # told each group commit's duration, seconds
        self._batch_t0 = 0.0

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def open(self) -> None:
        raise NotImplementedError

    def _start_writer(self, loop_fn: Callable[..., None], *args: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=loop_fn, args=args, name="store-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread:
            await self.all_flushed()
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join, 5)
            self._thread = None

    # -- writes ----------------------------------------------------------------------------------------------
    def write(self, sql: str, params: Any = (), many: bool = False) -> int:
        """Queue a write; returns a ticket to pass to `flushed()`."""
        self._next_ticket += 1
        self._queue.put((sql, params, many))
        return self._next_ticket

    async def transact(self, fn: Callable[[Connection], Any]) -> Any:
        """Run `fn(connection)` in the writer thread, in order with every other write, and return its result
        once committed. For atomic read-modify-write (put-if-absent, queue pops). `fn` may run more than once
        (the PostgreSQL store replays a batch after a failed write or a lost connection): only the committed
        run's result is returned, so `fn` must not act outside the database."""
        txn = _Txn(fn, asyncio.get_running_loop().create_future())
        self._next_ticket += 1
        self._queue.put(txn)
        return await txn.future

    async def all_flushed(self) -> None:
        """Wait until every write queued so far is committed."""
        await self.flushed(self._next_ticket)

    async def flushed(self, ticket: int) -> None:
        """Wait until the write with this ticket (and all before it) is committed."""
        if ticket <= self._committed:
            return
        fut = asyncio.get_running_loop().create_future()
        self.after(ticket, lambda: fut.done() or fut.set_result(None))
        await fut

    def after(self, ticket: int, callback: Callable[[], None]) -> None:
        """Run `callback` on the event loop once `ticket` is committed (at once if it already is)."""
        if ticket <= self._committed:
            callback()
        else:
            self._waiters.append((ticket, callback))

    def _next_batch(self) -> tuple[list[Write], bool]:
        """Block for the next write, then take everything queued behind it: (writes, stop after them)."""
        batch = [self._queue.get()]
        self._batch_t0 = time.perf_counter()
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [w for w in batch if w is not None], None in batch

    def _committed_batch(self, done: int, batch: list[Write]) -> None:
        """From the writer thread: `batch` is committed, `done` writes in all."""
        assert self._loop is not None
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - self._batch_t0)  # metrics: the commit's duration
        for w in batch:
            if isinstance(w, _Txn):
                self._loop.call_soon_threadsafe(w.resolve)
        self._loop.call_soon_threadsafe(self._on_commit, done)

    def _on_commit(self, ticket: int) -> None:
        self._committed = ticket
        while self._waiters and self._waiters[0][0] <= ticket:
            self._waiters.popleft()[1]()

    # -- reads -----------------------------------------------------------------------------------------------
    def _read(self, fn: Callable[[Connection], Any]) -> Any:
        raise NotImplementedError

    async def read(self, sql: str, params: Any = ()) -> list[tuple]:
        return await asyncio.to_thread(self._read, lambda c: c.execute(sql, params).fetchall())

    async def read_with(self, fn: Callable[[Connection], Any]) -> Any:
        """Run `fn(connection)` on a read connection in a thread: for reads of several statements, or that ask
        the connection for more than rows (the database's clock), that must not wait behind the writer."""
        return await asyncio.to_thread(self._read, fn)

    def read_now(self, sql: str, params: Any = ()) -> list[tuple]:
        """Blocking read, for start-up only."""
        return self._read(lambda c: c.execute(sql, params).fetchall())
