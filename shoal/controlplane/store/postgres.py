"""PostgreSQL store with group commit: `SHOAL_DATABASE_URL=postgresql://…` selects it.

The same interface and semantics as the SQLite store (`base.py`): one writer thread commits everything queued
in one transaction (consecutive plain writes go out as one pipeline, so a batch costs about one round trip plus
the commit), tickets report what is committed, reads run on a few autocommit connections in threads.

Callers write SQL with `?` placeholders in the portable subset (`base.py`); `to_pg()` turns it into what
psycopg runs (`%s`, `%%`) and, as a safety net, rewrites SQLite's `INSERT OR IGNORE` / `INSERT OR REPLACE`
into `ON CONFLICT` clauses using the primary keys of `schema.SCHEMA`, which `pg_schema()` translates too.

One installation keeps its tables in one PostgreSQL schema: `SHOAL_DATABASE_SCHEMA`, else the first entry of a
`search_path` in the URL's options (`?options=-csearch_path%3Dname`), else the database's default (`public`).
A named schema is created when missing. The writer holds an advisory lock on the schema, so a second control
plane pointed at the same schema fails to start instead of running the same calls twice; replicas
(`shared=True`, controlplane/replicas.py) hold it shared: any number of them, and no single-node control plane
beside them. Replicas coordinate through `coordinate()`, transactions on a connection of their own.

Failures: a plain write that fails is logged and skipped (as in SQLite); since an error aborts a PostgreSQL
transaction, the batch is then replayed with a savepoint around each write. A lost connection is reopened and
the batch replayed; a transaction function whose COMMIT was cut off gets an error (its change may or may not
have been applied), plain writes are idempotent and simply go again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from .base import Store, StoreError, Write, _Txn
from .schema import ADDED_COLUMNS, SCHEMA

try:
    import psycopg
    from psycopg import sql as pgsql
    from psycopg.conninfo import conninfo_to_dict
except ImportError:  # pragma: no cover - the `postgres` extra is not installed
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("shoal.store")

LOCK_CLASS = 0x73686F61  # first key of the advisory locks shoal takes (b"shoa")
MIGRATE_LOCK = 0  # second key: schema creation and migrations, database-wide
OPEN_WAIT_S = 15.0  # how long a starting control plane waits for the previous one's lock (a SIGKILLed one's
#                     session ends when PostgreSQL notices its socket closed: at once on one machine)
READERS = 4  # read connections at most
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


# -- SQL translation ---------------------------------------------------------------------------------------------
def _primary_keys(schema: str) -> dict[str, tuple[str, ...]]:
    keys: dict[str, tuple[str, ...]] = {}
    for stmt in schema.split(";"):
        m = re.search(r"CREATE TABLE IF NOT EXISTS (\w+)\s*\((.*)\)", stmt, re.S)
        if not m:
            continue
        table, body = m.groups()
        composite = re.search(r"PRIMARY KEY\s*\(([^)]*)\)", body)
        inline = re.search(r"(\w+)\s+\w+\s+PRIMARY KEY", body)
        if composite:
            keys[table] = tuple(c.strip() for c in composite.group(1).split(","))
        elif inline:
            keys[table] = (inline.group(1),)
    return keys


PRIMARY_KEYS = _primary_keys(SCHEMA)
_TYPES = [(re.compile(r"\bBLOB\b"), "BYTEA"), (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
          (re.compile(r"\bINTEGER\b"), "BIGINT"), (re.compile(r"\s*\bWITHOUT ROWID\b"), "")]


def pg_types(ddl: str) -> str:
    """SQLite column types as PostgreSQL's: BLOB → BYTEA, REAL → DOUBLE PRECISION (REAL is 4 bytes there),
    INTEGER → BIGINT; `WITHOUT ROWID` dropped."""
    for pattern, replacement in _TYPES:
        ddl = pattern.sub(replacement, ddl)
    return ddl


def pg_schema(schema: str = SCHEMA) -> list[str]:
    """The statements that create the store's tables and indexes in PostgreSQL."""
    return [s.strip() for s in pg_types(schema).split(";") if s.strip()]


_OR_INSERT = re.compile(r"^\s*INSERT\s+OR\s+(IGNORE|REPLACE)\s+INTO\s+(\w+)\s*\(([^)]*)\)", re.I)
_SQLITE_ONLY = re.compile(r"\b(INSERT\s+OR\s+\w+|REPLACE\s+INTO|PRAGMA|WITHOUT\s+ROWID|GLOB)\b", re.I)


def _on_conflict(sql: str) -> str:
    """`INSERT OR IGNORE|REPLACE INTO t (cols) VALUES ...` as `INSERT INTO t (cols) VALUES ... ON CONFLICT ...`
    (OR REPLACE: update every listed column that is not part of t's primary key)."""
    m = _OR_INSERT.match(sql)
    if not m:
        return sql
    verb, table, cols = m.group(1).upper(), m.group(2), [c.strip() for c in m.group(3).split(",")]
    head = f"INSERT INTO {table} ({', '.join(cols)})"
    rest = sql[m.end():].rstrip().rstrip(";")
    if verb == "IGNORE":
        return f"{head}{rest} ON CONFLICT DO NOTHING"
    key = PRIMARY_KEYS.get(table)
    if key is None:
        raise ValueError(f"INSERT OR REPLACE into {table!r}, a table with no known primary key: "
                         "write INSERT ... ON CONFLICT (key) DO UPDATE SET ...")
    update = [c for c in cols if c not in key]
    action = ("DO UPDATE SET " + ", ".join(f"{c}=excluded.{c}" for c in update)) if update else "DO NOTHING"
    return f"{head}{rest} ON CONFLICT ({', '.join(key)}) {action}"


@functools.lru_cache(maxsize=4096)
def to_pg(sql: str) -> str:
    """A statement written for SQLite (`?` placeholders) as psycopg runs it: `?` outside string literals,
    quoted names and comments becomes `%s`, every `%` becomes `%%`; `INSERT OR IGNORE/REPLACE` becomes an
    `ON CONFLICT` clause. Other SQLite-only syntax raises ValueError, naming it."""
    sql = _on_conflict(sql)
    out: list[str] = []
    code: list[str] = []  # the statement outside literals and comments, to look for SQLite-only syntax
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":  # a string literal or a quoted name ('' and "" inside are two literals in a row)
            end = sql.find(ch, i + 1)
            end = n if end < 0 else end + 1
            out.append(sql[i:end].replace("%", "%%"))
            code.append(" ")
            i = end
        elif sql.startswith("--", i) or sql.startswith("/*", i):
            end = sql.find("\n", i) if ch == "-" else sql.find("*/", i + 2) + 2
            end = n if end < (1 if ch == "-" else 2) else end
            out.append(sql[i:end].replace("%", "%%"))
            code.append(" ")
            i = end
        elif ch == "?":
            if i + 1 < n and sql[i + 1].isdigit():
                raise ValueError(f"numbered placeholders (?NNN) are not supported: {sql[:80]}")
            out.append("%s")
            code.append(" ")
            i += 1
        else:
            out.append("%%" if ch == "%" else ch)
            code.append(ch)
            i += 1
    bad = _SQLITE_ONLY.search("".join(code))
    if bad:
        raise ValueError(f"{bad.group(0)!r} is SQLite-only; write portable SQL (see shoal/controlplane/store/base.py): "
                         f"{sql[:80]}")
    return "".join(out)


class _Conn:
    """A psycopg connection with the `sqlite3.Connection` calls store users make: `?` placeholders, rows as
    tuples, `execute()` returning a cursor with `fetchone`, `fetchall` and `rowcount`."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.raw.execute(to_pg(sql), () if params is None else params)

    def executemany(self, sql: str, params: Any) -> Any:
        cur = self.raw.cursor()
        cur.executemany(to_pg(sql), params)
        return cur


# -- connection settings -----------------------------------------------------------------------------------------
def is_postgres_url(url: str | None) -> bool:
    return url is not None and url.startswith(("postgresql://", "postgres://"))


def schema_of(url: str, name: str | None = None) -> str | None:
    """The schema an installation keeps its tables in: `name`, else SHOAL_DATABASE_SCHEMA, else the first entry
    of the URL's `search_path` option, else None (the database's default, normally `public`)."""
    name = (name or os.environ.get("SHOAL_DATABASE_SCHEMA", "")).strip()
    if not name:
        options = conninfo_to_dict(url).get("options") or ""
        m = re.search(r"-c\s*search_path\s*=\s*([^\s,]+)", str(options))
        name = m.group(1).strip('"') if m else ""
    if not name:
        return None
    if not SCHEMA_NAME.fullmatch(name):
        raise StoreError(f"invalid database schema name {name!r}: use lower-case letters, digits and '_' "
                         "(at most 63, not starting with a digit)")
    return name


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class PostgresStore(Store):
    def __init__(self, url: str, schema: str | None = None, shared: bool = False) -> None:
        super().__init__()
        self.shared = shared  # a replica: the schema lock is shared with the other replicas
        if psycopg is None:
            raise StoreError("SHOAL_DATABASE_URL names a PostgreSQL database, but psycopg is not installed: "
                             "pip install 'shoal[postgres]'")
        self.url = url
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreError(f"SHOAL_DATABASE_URL is not a valid PostgreSQL URL: {exc}") from exc
        self.schema = schema_of(url, schema)
        self._connect_args: dict[str, Any] = {"autocommit": True}
        if "application_name" not in params:
            self._connect_args["application_name"] = "shoal control plane"
        if "connect_timeout" not in params:
            self._connect_args["connect_timeout"] = 10
        self._writer: Any = None
        self._idle: list[Any] = []
        self._readers = threading.BoundedSemaphore(READERS)
        self._idle_lock = threading.Lock()
        self._committing = False
        self._coord: Any = None  # the connection of `coordinate()`
        self._coord_lock = threading.Lock()

    # -- connections -----------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        try:
            conn = psycopg.connect(self.url, **self._connect_args)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the database {redact(self.url)}: {exc}".strip()) from exc
        if self.schema:
            conn.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(self.schema)))
        return conn

    def _lock_schema(self, conn: Any, wait_s: float | None) -> None:
        """Hold this session's lock on the schema: one control plane per schema, or any number of replicas."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        warned = False
        fn = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
        while not conn.execute(f"SELECT {fn}(%s, hashtext(current_schema()))", (LOCK_CLASS,)).fetchone()[0]:
            late = deadline is not None and time.monotonic() > deadline
            if deadline is not None and (late or (not self.shared and self._replicas_hold(conn))):
                name = self._schema_name(conn)
                if self.shared:
                    raise StoreError(f"a single-node shoal control plane uses schema {name!r} of "
                                     f"{redact(self.url)}: stop it before starting replicas on that schema")
                raise StoreError(f"another shoal control plane uses schema {name!r} of {redact(self.url)} "
                                 "(set SHOAL_DATABASE_SCHEMA to give this one its own; several control planes "
                                 "share one schema when each runs with --replica)")
            if not warned and deadline is None:
                log.warning("store: waiting for another control plane to let go of the database schema")
                warned = True
            time.sleep(0.2)

    @staticmethod
    def _replicas_hold(conn: Any) -> bool:
        """Replicas hold the schema's lock (shared): a single-node control plane need not wait for it."""
        return conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype='advisory' AND mode='ShareLock' AND granted "
            "AND classid=%s AND objid::bigint = (hashtext(current_schema())::bigint & 4294967295) "
            "AND objsubid=2)", (LOCK_CLASS,)).fetchone()[0]

    def _schema_name(self, conn: Any) -> str:
        try:
            return conn.execute("SELECT current_schema()").fetchone()[0] or "?"
        except psycopg.Error:
            return self.schema or "public"

    def _migrate(self, conn: Any) -> None:
        """Create the schema, the tables and the columns added since (idempotent; serialized across control
        planes by an advisory lock, since concurrent `CREATE ... IF NOT EXISTS` can collide)."""
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, MIGRATE_LOCK))
            if self.schema:
                conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(self.schema)))
            if conn.execute("SELECT current_schema()").fetchone()[0] is None:
                raise StoreError(f"the database {redact(self.url)} has no schema on its search_path to keep "
                                 "shoal's tables in (set SHOAL_DATABASE_SCHEMA)")
            for stmt in pg_schema():
                conn.execute(stmt)
            for table, column, decl in ADDED_COLUMNS:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {pg_types(decl)}")
            conn.execute("COMMIT")
        except BaseException:
            if not conn.broken:
                conn.execute("ROLLBACK")
            raise

    def _open_writer(self, wait_s: float | None) -> Any:
        conn = self._connect()
        try:
            self._lock_schema(conn, wait_s)
        except BaseException:
            conn.close()
            raise
        return conn

    async def open(self) -> None:
        def connect() -> Any:
            conn = self._connect()
            try:
                try:
                    self._migrate(conn)
                except psycopg.Error as exc:
                    raise StoreError(f"cannot create shoal's tables in {redact(self.url)}: {exc}") from exc
                self._lock_schema(conn, OPEN_WAIT_S)
            except BaseException:
                conn.close()
                raise
            return conn

        self._writer = await asyncio.to_thread(connect)
        self._start_writer(self._write_loop)

    async def close(self) -> None:
        await super().close()
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        with self._coord_lock:
            if self._coord is not None:
                self._coord.close()
                self._coord = None

    # -- coordination between replicas ----------------------------------------------------------------------
    async def coordinate(self, fn: Callable[[Any], Any]) -> Any:
        """Run `fn(connection)` in one transaction of its own, committed before this returns, on a connection
        used for nothing else (leases and heartbeats must not wait behind a batch of writes or a slow read).
        `fn` may read the database's clock with `leases.db_now(c)`. Raises StoreError when the database is
        unreachable; a transaction whose commit was cut off may or may not have applied, so `fn` must be safe to
        re-run."""
        return await asyncio.to_thread(self._coordinate, fn)

    def _coordinate(self, fn: Callable[[Any], Any]) -> Any:
        with self._coord_lock:
            for attempt in (1, 2):
                try:
                    if self._coord is None or self._coord.closed or self._coord.broken:
                        self._coord = self._connect()
                        self._coord.execute("SET statement_timeout = '5s'")  # never hang a lease renewal
                    with self._coord.transaction():
                        return fn(_Conn(self._coord))
                except psycopg.OperationalError as exc:
                    lost = self._coord is None or self._coord.closed or self._coord.broken
                    if lost and attempt == 1:
                        continue  # a connection that went stale: once more on a fresh one
                    raise StoreError(f"database unreachable: {exc}") from exc
            raise AssertionError("unreachable")

    # -- writes ----------------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        done = 0
        while True:
            batch, stop = self._next_batch()
            if batch:
                self._commit(batch)
            done += len(batch)
            self._committed_batch(done, batch)
            if stop:
                self._writer.close()
                return

    def _commit(self, batch: list[Write]) -> None:
        """Commit `batch` in one transaction, whatever it takes (see the module's docstring)."""
        careful = False
        pending = batch
        delay = 0.1
        while True:
            self._committing = False
            try:
                self._run(pending, careful)
                return
            except _PlainWriteError:
                careful = True
            except psycopg.Error as exc:
                if self._writer.closed or self._writer.broken:
                    if self._committing:  # it may have committed: run none of the functions twice
                        for w in pending:
                            if isinstance(w, _Txn):
                                w.error = ConnectionError("the database connection was lost while committing; "
                                                          "the change may or may not have been applied")
                        pending = [w for w in pending if not isinstance(w, _Txn)]
                    log.warning("store: lost the database connection (%s); reconnecting", exc)
                    self._reconnect_writer(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if careful:  # COMMIT itself failed with every write in a savepoint: nothing more to try
                    self._give_up(pending, exc)
                    return
                careful = True
            except Exception as exc:  # noqa: BLE001 - the writer thread must go on whatever happens
                if careful:
                    self._give_up(pending, exc)
                    return
                careful = True
            self._rollback()

    def _give_up(self, batch: list[Write], exc: Exception) -> None:
        log.error("store: a batch of %d writes could not be committed: %s", len(batch), exc)
        for w in batch:
            if isinstance(w, _Txn):
                w.error = exc
        self._rollback()

    def _rollback(self) -> None:
        try:
            self._writer.execute("ROLLBACK")
        except psycopg.Error:
            pass  # a broken connection: the next attempt reconnects

    def _reconnect_writer(self, delay: float) -> None:
        try:
            self._writer.close()
        except psycopg.Error:
            pass
        while True:
            time.sleep(delay)
            try:
                self._writer = self._open_writer(wait_s=None)
                return
            except (StoreError, psycopg.Error) as exc:
                log.warning("store: %s; retrying", exc)
                delay = min(delay * 2, 5.0)

    def _run(self, batch: list[Write], careful: bool) -> None:
        conn = self._writer
        c = _Conn(conn)
        conn.execute("BEGIN")
        i = 0
        while i < len(batch):
            w = batch[i]
            if isinstance(w, _Txn):
                w.result, w.error = None, None
                conn.execute("SAVEPOINT txn")
                try:
                    w.result = w.fn(c)
                except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller
                    if conn.broken:
                        raise
                    w.error = exc
                    conn.execute("ROLLBACK TO SAVEPOINT txn")
                conn.execute("RELEASE SAVEPOINT txn")
                i += 1
            elif careful:
                conn.execute("SAVEPOINT w")
                try:
                    _plain(c, w)
                except Exception as exc:  # noqa: BLE001 - a bad write must not take the others down with it
                    if conn.broken:
                        raise
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    print(f"shoal store: write failed: {first}: {w[0][:80]}", flush=True)  # type: ignore[index]
                    conn.execute("ROLLBACK TO SAVEPOINT w")
                conn.execute("RELEASE SAVEPOINT w")
                i += 1
            else:  # the plain writes up to the next transaction function, as one pipeline
                j = i
                while j < len(batch) and not isinstance(batch[j], _Txn):
                    j += 1
                try:
                    with conn.pipeline():
                        for plain in batch[i:j]:
                            _plain(c, plain)
                except Exception as exc:  # a failed write or SQL that to_pg refuses: find it in the replay
                    if conn.broken:
                        raise
                    raise _PlainWriteError from exc
                i = j
        self._committing = True
        conn.execute("COMMIT")

    # -- reads -----------------------------------------------------------------------------------------------
    def _take_reader(self) -> Any:
        self._readers.acquire()
        with self._idle_lock:
            if self._idle:
                return self._idle.pop()
        try:
            return self._connect()
        except BaseException:
            self._readers.release()
            raise

    def _give_reader(self, conn: Any, healthy: bool) -> None:
        if healthy:
            with self._idle_lock:
                self._idle.append(conn)
        else:
            conn.close()
        self._readers.release()

    def _read(self, fn: Callable[[Any], Any]) -> Any:
        for attempt in (1, 2):
            conn = self._take_reader()
            try:
                result = fn(_Conn(conn))
            except psycopg.Error:
                lost = conn.closed or conn.broken
                self._give_reader(conn, healthy=not lost)
                if lost and attempt == 1:
                    continue  # a connection that went stale while idle: once more on a fresh one
                raise
            except BaseException:
                self._give_reader(conn, healthy=not (conn.closed or conn.broken))
                raise
            self._give_reader(conn, healthy=True)
            return result
        raise AssertionError("unreachable")


class _PlainWriteError(Exception):
    """A plain write failed in the fast path: roll back and run the batch again, one savepoint per write."""


def _plain(c: _Conn, w: Write) -> None:
    sql, params, many = w  # type: ignore[misc]
    if many:
        c.executemany(sql, params)
    else:
        c.execute(sql, params)
