"""SQLite store (WAL) with group commit: the embedded default, a file under the state directory.

The writer thread commits whatever is queued in one transaction; reads run on a second connection in a thread
(see `base.py` for the interface both stores share).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Store, Write, _Txn
from .schema import ADDED_COLUMNS, SCHEMA

__all__ = ["ADDED_COLUMNS", "SCHEMA", "SQLiteStore", "migrate"]


def migrate(conn: sqlite3.Connection) -> None:
    for table, column, decl in ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


class SQLiteStore(Store):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
        return conn

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = self._connect()
        writer.executescript(SCHEMA)
        migrate(writer)  # state directories made by an older shoal
        self._reader = self._connect()
        self._start_writer(self._write_loop, writer)

    # -- writes ----------------------------------------------------------------------------------------------
    def _write_loop(self, conn: sqlite3.Connection) -> None:
        done = 0
        while True:
            batch, stop = self._next_batch()
            conn.execute("BEGIN")
            for w in batch:
                if isinstance(w, _Txn):
                    conn.execute("SAVEPOINT txn")
                    try:
                        w.result = w.fn(conn)
                    except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller
                        w.error = exc
                        conn.execute("ROLLBACK TO txn")
                    conn.execute("RELEASE txn")
                    continue
                self._plain(conn, w)
            conn.execute("COMMIT")
            done += len(batch)
            self._committed_batch(done, batch)
            if stop:
                conn.close()
                return

    @staticmethod
    def _plain(conn: sqlite3.Connection, w: Write) -> None:
        sql, params, many = w  # type: ignore[misc]
        try:
            (conn.executemany if many else conn.execute)(sql, params)
        except sqlite3.Error as exc:  # a bad write must not take the others down with it
            print(f"shoal store: write failed: {exc}: {sql[:80]}", flush=True)

    # -- reads -----------------------------------------------------------------------------------------------
    def _read(self, fn: Callable[[Any], Any]) -> Any:
        with self._read_lock:
            assert self._reader is not None
            return fn(self._reader)
