"""SQLite store (WAL) with group commit.

Writes are queued to one writer thread that commits everything queued so far in one transaction, then reports
the highest committed ticket back to the event loop. Callers that acknowledge something to a client first
`await flushed(ticket)`; everything else fires and forgets. Reads run on a second connection in a thread.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    app_id TEXT PRIMARY KEY, name TEXT, mode TEXT NOT NULL, state TEXT NOT NULL,
    detach INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, stopped_at REAL
);
CREATE TABLE IF NOT EXISTS functions (
    function_id TEXT PRIMARY KEY, app_id TEXT NOT NULL, tag TEXT NOT NULL, definition BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY, function_id TEXT NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL,
    num_inputs INTEGER, state TEXT NOT NULL DEFAULT 'running', completed_at REAL, method TEXT
);
CREATE TABLE IF NOT EXISTS inputs (
    call_id TEXT NOT NULL, idx INTEGER NOT NULL, args BLOB NOT NULL, PRIMARY KEY (call_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outputs (
    call_id TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL, status TEXT NOT NULL, data BLOB,
    final INTEGER NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (call_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outputs_final ON outputs (call_id, idx) WHERE final = 1;
CREATE INDEX IF NOT EXISTS calls_state ON calls (state);
CREATE TABLE IF NOT EXISTS schedules (
    function_id TEXT PRIMARY KEY, anchor REAL NOT NULL, last_fire REAL
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY, data BLOB NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    object_id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, created_at REAL NOT NULL, app_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS objects_name ON objects (kind, name) WHERE name IS NOT NULL;
CREATE TABLE IF NOT EXISTS dict_entries (
    dict_id TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, touched_at REAL NOT NULL,
    PRIMARY KEY (dict_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_items (
    queue_id TEXT NOT NULL, partition TEXT NOT NULL, seq INTEGER NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (queue_id, partition, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_partitions (
    queue_id TEXT NOT NULL, partition TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (queue_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS proxy_tokens (
    token_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, scope BLOB NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS app_versions (
    app_id TEXT NOT NULL, version INTEGER NOT NULL, created_at REAL NOT NULL, definitions BLOB NOT NULL,
    strategy TEXT NOT NULL, tag TEXT, rollback_of INTEGER, PRIMARY KEY (app_id, version)
);
"""

# Columns added after a table first shipped: (table, column, declaration). Applied at open when missing, so a
# state directory from an older shoal keeps working. Append here; never edit a shipped CREATE TABLE's meaning.
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("calls", "method", "TEXT"),
]


def migrate(conn: sqlite3.Connection) -> None:
    for table, column, decl in ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


class _Txn:
    """A function run inside the writer's transaction whose result the caller awaits (read-modify-write)."""

    __slots__ = ("fn", "future", "result", "error")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future) -> None:
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


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._next_ticket = 0
        self._committed = 0
        self._waiters: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
        return conn

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = self._connect()
        writer.executescript(SCHEMA)
        migrate(writer)  # state directories made by an older shoal
        self._reader = self._connect()
        self._thread = threading.Thread(target=self._write_loop, args=(writer,), name="store-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread:
            await self.flushed(self._next_ticket)
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join, 5)
            self._thread = None

    # -- writes ----------------------------------------------------------------------------------------------
    def write(self, sql: str, params: Any = (), many: bool = False) -> int:
        """Queue a write; returns a ticket to pass to `flushed()`."""
        self._next_ticket += 1
        self._queue.put((sql, params, many))
        return self._next_ticket

    async def transact(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `fn(connection)` in the writer thread, in order with every other write, and return its result
        once committed. For atomic read-modify-write (put-if-absent, queue pops)."""
        txn = _Txn(fn, asyncio.get_running_loop().create_future())
        self._next_ticket += 1
        self._queue.put(txn)
        return await txn.future

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

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        done = 0
        while True:
            item = self._queue.get()
            batch = [item]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            conn.execute("BEGIN")
            txns = []
            for w in batch:
                if w is None:
                    continue
                if isinstance(w, _Txn):
                    txns.append(w)
                    conn.execute("SAVEPOINT txn")
                    try:
                        w.result = w.fn(conn)
                    except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller
                        w.error = exc
                        conn.execute("ROLLBACK TO txn")
                    conn.execute("RELEASE txn")
                    continue
                sql, params, many = w
                try:
                    (conn.executemany if many else conn.execute)(sql, params)
                except sqlite3.Error as exc:  # a bad write must not take the others down with it
                    print(f"shoal store: write failed: {exc}: {sql[:80]}", flush=True)
            conn.execute("COMMIT")
            done += sum(1 for w in batch if w is not None)
            assert self._loop is not None
            for txn in txns:
                self._loop.call_soon_threadsafe(txn.resolve)
            self._loop.call_soon_threadsafe(self._on_commit, done)
            if stop:
                conn.close()
                return

    def _on_commit(self, ticket: int) -> None:
        self._committed = ticket
        while self._waiters and self._waiters[0][0] <= ticket:
            self._waiters.popleft()[1]()

    # -- reads -----------------------------------------------------------------------------------------------
    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._read_lock:
            assert self._reader is not None
            return fn(self._reader)

    async def read(self, sql: str, params: Any = ()) -> list[tuple]:
        return await asyncio.to_thread(self._read, lambda c: c.execute(sql, params).fetchall())

    def read_now(self, sql: str, params: Any = ()) -> list[tuple]:
        """Blocking read, for start-up only."""
        return self._read(lambda c: c.execute(sql, params).fetchall())

    # -- domain writes ---------------------------------------------------------------------------------------
    def put_app(self, app_id: str, name: str | None, mode: str, detach: bool) -> int:
        return self.write(
            "INSERT OR IGNORE INTO apps (app_id, name, mode, state, detach, created_at) VALUES (?,?,?,?,?,?)",
            (app_id, name, mode, "running", int(detach), time.time()),
        )

    def set_app_stopped(self, app_id: str) -> int:
        return self.write("UPDATE apps SET state='stopped', stopped_at=? WHERE app_id=?", (time.time(), app_id))

    def put_function(self, function_id: str, app_id: str, tag: str, definition: bytes) -> int:
        return self.write(
            "INSERT OR REPLACE INTO functions (function_id, app_id, tag, definition) VALUES (?,?,?,?)",
            (function_id, app_id, tag, definition),
        )

    def put_call(self, call_id: str, function_id: str, kind: str, num_inputs: int | None,
                 method: str | None = None) -> int:
        """`method`: the method of a class a call runs (None for functions)."""
        return self.write(
            "INSERT OR IGNORE INTO calls (call_id, function_id, kind, created_at, num_inputs, method) "
            "VALUES (?,?,?,?,?,?)",
            (call_id, function_id, kind, time.time(), num_inputs, method),
        )

    def set_call_total(self, call_id: str, num_inputs: int) -> int:
        return self.write("UPDATE calls SET num_inputs=? WHERE call_id=?", (num_inputs, call_id))

    def set_call_state(self, call_id: str, state: str) -> int:
        return self.write(
            "UPDATE calls SET state=?, completed_at=? WHERE call_id=?", (state, time.time(), call_id)
        )

    def put_inputs(self, rows: list[tuple[str, int, bytes]]) -> int:
        return self.write("INSERT OR IGNORE INTO inputs (call_id, idx, args) VALUES (?,?,?)", rows, many=True)

    def put_outputs(self, rows: list[tuple[str, int, int, str, bytes | None, bool]]) -> int:
        """Rows of (call_id, seq, idx, status, data, final)."""
        now = time.time()
        return self.write(
            "INSERT OR IGNORE INTO outputs (call_id, seq, idx, status, data, final, created_at) "
            "VALUES (?,?,?,?,?,?,?)",
            [(c, s, i, st, d, int(f), now) for c, s, i, st, d, f in rows], many=True,
        )

    def expire(self, before: float) -> int:
        """Drop inputs and outputs of calls completed before `before`; keep the call row to say 'expired'."""
        self.write(
            "DELETE FROM outputs WHERE call_id IN (SELECT call_id FROM calls WHERE state!='running' "
            "AND completed_at < ?)", (before,),
        )
        self.write(
            "DELETE FROM inputs WHERE call_id IN (SELECT call_id FROM calls WHERE state!='running' "
            "AND completed_at < ?)", (before,),
        )
        return self.write(
            "UPDATE calls SET state='expired' WHERE state!='running' AND completed_at < ?", (before,)
        )
