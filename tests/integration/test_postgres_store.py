"""The PostgreSQL store: SQL translation, group commit, transactions, failures, and a control plane on it.

Runs against SHOAL_TEST_DATABASE_URL, else a local PostgreSQL at 127.0.0.1:5432 (database `test`); skipped when
neither answers. Each test keeps its tables in a schema of its own and drops it.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal
from shoal.exception import InvalidError

from ..conftest import TEST_DATABASE_URL, ControlPlane, _use_home, drop_schema

URL = TEST_DATABASE_URL or "postgresql://postgres@127.0.0.1:5432/test"


def _reachable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        with psycopg.connect(URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {URL} is unreachable: {str(exc).strip().splitlines()[0]}"
    return None


_why_not = _reachable()
if _why_not:
    pytest.skip(_why_not, allow_module_level=True)

import psycopg  # noqa: E402 - only once it is known to be installed
from psycopg import sql as pgsql  # noqa: E402

from shoal.controlplane.store import SQLiteStore, StoreError, open_store  # noqa: E402
from shoal.controlplane.store import apps as app_rows  # noqa: E402
from shoal.controlplane.store import calls as call_rows  # noqa: E402
from shoal.controlplane.store import postgres as pg  # noqa: E402
from shoal.controlplane.store.postgres import PostgresStore, pg_schema, to_pg  # noqa: E402

from ..unit.test_store_boundary import STORE, sql_literals  # noqa: E402


@pytest.fixture
def schema(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"t_{secrets.token_hex(6)}"
    monkeypatch.setenv("SHOAL_DATABASE_SCHEMA", name)
    yield name
    drop_schema(URL, name)


def run(coro_fn):
    """Run `coro_fn(store)` on an opened store (of the `schema` fixture's schema), closing it after."""
    async def main():
        store = PostgresStore(URL)
        await store.open()
        try:
            return await coro_fn(store)
        finally:
            await store.close()

    return asyncio.run(main())


# -- SQL translation ---------------------------------------------------------------------------------------------
def test_placeholders_become_psycopg_ones_outside_literals_names_and_comments() -> None:
    assert to_pg("SELECT a FROM t WHERE b=? AND c=?") == "SELECT a FROM t WHERE b=%s AND c=%s"
    assert to_pg("SELECT '?', \"odd?name\" FROM t WHERE x=?") == "SELECT '?', \"odd?name\" FROM t WHERE x=%s"
    assert to_pg("SELECT 'it''s ?' WHERE y=?") == "SELECT 'it''s ?' WHERE y=%s"
    assert to_pg("SELECT x -- why?\nFROM t WHERE z=? /* and ? */") == "SELECT x -- why?\nFROM t WHERE z=%s /* and ? */"
    assert to_pg("SELECT '5%' WHERE a LIKE 'x%' AND b % 2 = ?") == "SELECT '5%%' WHERE a LIKE 'x%%' AND b %% 2 = %s"
    with pytest.raises(ValueError, match="numbered"):
        to_pg("SELECT ?1")


def test_sqlite_only_inserts_become_on_conflict_and_the_rest_is_refused() -> None:
    assert to_pg("INSERT OR IGNORE INTO inputs (call_id, idx, args) VALUES (?,?,?)") == \
        "INSERT INTO inputs (call_id, idx, args) VALUES (%s,%s,%s) ON CONFLICT DO NOTHING"
    assert to_pg("INSERT OR REPLACE INTO dict_entries (dict_id, key, value, touched_at) VALUES (?,?,?,?)") == (
        "INSERT INTO dict_entries (dict_id, key, value, touched_at) VALUES (%s,%s,%s,%s) ON CONFLICT (dict_id, key) "
        "DO UPDATE SET value=excluded.value, touched_at=excluded.touched_at")
    assert to_pg("insert or replace into schedules (function_id) values (?)") == \
        "INSERT INTO schedules (function_id) values (%s) ON CONFLICT (function_id) DO NOTHING"
    with pytest.raises(ValueError, match="no known primary key"):
        to_pg("INSERT OR REPLACE INTO nowhere (a) VALUES (?)")
    for sqlite_only in ("PRAGMA table_info(calls)", "REPLACE INTO t VALUES (?)", "SELECT 1 WHERE a GLOB ?"):
        with pytest.raises(ValueError, match="SQLite-only"):
            to_pg(sqlite_only)
    assert to_pg("SELECT 'PRAGMA' FROM t") == "SELECT 'PRAGMA' FROM t"  # in a literal: just text


def _store_statements() -> list[tuple[str, int, str]]:
    """(module, line, text) of every SQL literal of the store but those of the two implementations, which run
    their own database's dialect directly, and of the schema, which `pg_schema` translates (tested below). Since
    no SQL is left outside the store (tests/unit/test_store_boundary.py), these are all the control plane runs
    through `to_pg`."""
    return [(path.name, line, text) for path in sorted(STORE.glob("*.py"))
            if path.name not in ("postgres.py", "sqlite.py", "schema.py")
            for line, text in sql_literals(path.read_text())]


STATEMENT = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b")


def _numbered(psycopg_sql: str) -> str:
    """psycopg's `%s` placeholders as PREPARE's `$1`, `$2`, …, and its `%%` as `%` (a query sent without
    parameters is not parsed for placeholders)."""
    numbers = iter(range(1, 10_000))
    return re.sub(r"%%|%s", lambda m: "%" if m.group() == "%%" else f"${next(numbers)}", psycopg_sql)


def test_every_sql_statement_of_the_store_translates_and_postgres_prepares_it(schema: str) -> None:
    """Every SQL literal of the store goes through to_pg (catches SQLite-only syntax in new code), and PostgreSQL
    prepares it against the store's tables without running it (catches a misspelt table or column, or syntax
    PostgreSQL lacks). An f-string or a clause appended to a statement, whose whole text is only known at run time,
    is translated only."""

    async def create_tables(store: PostgresStore) -> None:
        pass

    run(create_tables)
    statements = _store_statements()
    prepared = 0
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(schema)))
        for module, line, text in statements:
            translated = to_pg(text)
            if "{}" in text or not STATEMENT.match(text):
                continue  # known only at run time: an f-string, or a clause appended to a statement
            try:
                conn.execute(f"PREPARE stmt{prepared} AS {_numbered(translated)}")
            except psycopg.Error as exc:
                pytest.fail(f"store/{module}:{line}: PostgreSQL refuses {text[:80]!r}: {exc}")
            prepared += 1
    assert prepared > 80
    assert {m for m, _, _ in statements} >= {"apps.py", "calls.py", "dicts.py", "leases.py", "objects.py",
                                             "queues.py", "replicas.py", "schedules.py", "secrets.py", "tokens.py"}


def test_the_postgres_schema_has_the_tables_and_columns_of_the_sqlite_one(schema: str, tmp_path: Path) -> None:
    assert not any(word in stmt for stmt in pg_schema() for word in ("BLOB", "REAL", "WITHOUT ROWID"))

    async def columns(store):
        return await store.read("SELECT table_name, column_name, data_type FROM information_schema.columns "
                                "WHERE table_schema=? ORDER BY table_name, ordinal_position", (schema,))

    in_pg = run(columns)
    lite = SQLiteStore(tmp_path / "state.db")

    async def create() -> None:
        await lite.open()
        await lite.close()

    asyncio.run(create())
    conn = sqlite3.connect(tmp_path / "state.db")
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    in_sqlite = {(t, r[1]) for t in tables for r in conn.execute(f"PRAGMA table_info({t})")}
    assert {(t, c) for t, c, _ in in_pg} == in_sqlite
    types = {(t, c): ty for t, c, ty in in_pg}
    assert types["outputs", "created_at"] == "double precision"  # not PostgreSQL's 4-byte REAL
    assert types["outputs", "data"] == "bytea" and types["inputs", "idx"] == "bigint"


# -- the store ---------------------------------------------------------------------------------------------------
def test_group_commit_tickets_flushed_and_after(schema: str) -> None:
    async def body(store):
        order: list[int] = []
        call_rows.put_call(store, "fc-1", "fu-1", "map", None)
        tickets = [call_rows.put_inputs(store, [("fc-1", i, bytes([i % 256]) * 10)]) for i in range(500)]
        assert tickets == sorted(tickets) and len(set(tickets)) == 500
        for t in (tickets[10], tickets[-1], tickets[200]):
            store.after(t, lambda t=t: order.append(t))
        await store.flushed(tickets[-1])
        assert sorted(order) == [tickets[10], tickets[200], tickets[-1]]  # all ran once, none before its commit
        late: list[int] = []
        store.after(tickets[0], lambda: late.append(1))  # already committed: at once
        assert late == [1]
        rows = await store.read("SELECT COUNT(*), COUNT(DISTINCT xmin::text) FROM inputs WHERE call_id=?",
                                ("fc-1",))
        count, transactions = rows[0]
        assert count == 500
        assert transactions < 50, "500 writes queued at once should commit in a few transactions"
        assert await store.read("SELECT args FROM inputs WHERE call_id=? AND idx=?", ("fc-1", 3)) == [(b"\x03" * 10,)]
        call_rows.put_inputs(store, [("fc-1", 3, b"other")])  # idempotent on (call_id, idx)
        await store.flushed(call_rows.set_total(store, "fc-1", 500))
        assert await store.read("SELECT args FROM inputs WHERE call_id=? AND idx=?", ("fc-1", 3)) == [(b"\x03" * 10,)]
        assert store.read_now("SELECT num_inputs FROM calls WHERE call_id=?", ("fc-1",)) == [(500,)]
        created = (await store.read("SELECT created_at FROM calls"))[0][0]
        assert isinstance(created, float) and abs(created - time.time()) < 60  # full precision, not float4

    run(body)


def test_transact_is_atomic_and_a_failed_write_spares_the_rest_of_its_batch(schema: str) -> None:
    async def body(store):
        def put_if_absent(c) -> bool:
            if c.execute("SELECT 1 FROM secrets WHERE name=?", ("s",)).fetchone():
                return False
            c.execute("INSERT INTO secrets (name, data, created_at, updated_at) VALUES (?,?,?,?)",
                      ("s", b"sealed", 1.0, 1.0))
            return True

        def half_then_fail(c) -> None:
            c.execute("INSERT INTO secrets (name, data, created_at, updated_at) VALUES (?,?,?,?)",
                      ("half", b"x", 1.0, 1.0))
            raise RuntimeError("changed my mind")

        def many(c) -> int:
            c.executemany("INSERT INTO queue_items (queue_id, partition, seq, value) VALUES (?,?,?,?)",
                          [("q", "", i, b"v") for i in range(5)])
            return c.execute("DELETE FROM queue_items WHERE queue_id=? AND seq < ?", ("q", 2)).rowcount

        # One batch: plain writes around a bad one, and transactions that succeed and fail.
        store.write("INSERT INTO objects (object_id, kind, name, created_at) VALUES (?,?,?,?)", ("o1", "dict", "a", 1))
        store.write("INSERT INTO no_such_table VALUES (?)", (1,))
        store.write("INSERT INTO objects (object_id, kind, name, created_at) VALUES (?,?,?,?)", ("o2", "dict", "b", 1))
        results = await asyncio.gather(store.transact(put_if_absent), store.transact(put_if_absent),
                                       store.transact(half_then_fail), store.transact(many),
                                       return_exceptions=True)
        assert results[:2] == [True, False]
        assert isinstance(results[2], RuntimeError) and results[3] == 2
        assert await store.read("SELECT object_id FROM objects ORDER BY object_id") == [("o1",), ("o2",)]
        assert await store.read("SELECT name FROM secrets ORDER BY name") == [("s",)]  # "half" rolled back
        assert await store.read("SELECT COUNT(*) FROM queue_items") == [(3,)]
        # An error in SQL is the transaction's error, and the store goes on.
        with pytest.raises(psycopg.Error):
            await store.transact(lambda c: c.execute("SELECT * FROM no_such_table").fetchall())
        assert await store.transact(lambda c: c.execute("SELECT COUNT(*) FROM objects").fetchone()[0]) == 2

    run(body)


def test_lost_connections_are_reopened_and_nothing_is_lost(schema: str) -> None:
    async def body(store):
        await app_rows.put_app(store, "ap-1", "a", "ephemeral", False)
        assert await store.read("SELECT name FROM apps") == [("a",)]
        with psycopg.connect(URL, autocommit=True) as admin:
            pids = [store._writer.info.backend_pid] + [c.info.backend_pid for c in store._idle]
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # Writes queued behind the dead connections: each is committed once a connection is reopened.
        await asyncio.gather(*(app_rows.put_app(store, f"ap-{i}", f"a{i}", "ephemeral", False) for i in range(2, 6)))
        assert await store.transact(lambda c: c.execute("SELECT COUNT(*) FROM apps").fetchone()[0]) == 5
        assert [r[0] for r in await store.read("SELECT name FROM apps ORDER BY name")] == \
            ["a", "a2", "a3", "a4", "a5"]
        assert store._writer.info.backend_pid not in pids

    run(body)


def test_a_second_control_plane_on_the_same_schema_is_refused(schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "OPEN_WAIT_S", 0.5)

    async def body(store):
        other = PostgresStore(URL)
        with pytest.raises(StoreError, match=f"another shoal control plane uses schema '{schema}'"):
            await other.open()

    run(body)


def test_schema_comes_from_the_url_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_DATABASE_SCHEMA", raising=False)
    name = f"t_{secrets.token_hex(6)}"
    sep = "&" if "?" in URL else "?"
    url = f"{URL}{sep}options=-csearch_path%3D{name}"
    store = PostgresStore(url)
    assert store.schema == name
    try:
        async def open_and_close() -> None:
            await store.open()
            await store.close()

        asyncio.run(open_and_close())
        with psycopg.connect(URL) as conn:
            assert conn.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema=%s",
                                (name,)).fetchone()[0] >= 10
    finally:
        drop_schema(URL, name)
    monkeypatch.setenv("SHOAL_DATABASE_SCHEMA", "Bad-Name")
    with pytest.raises(StoreError, match="invalid database schema name"):
        PostgresStore(URL)


def test_open_store_picks_the_database_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_DATABASE_URL", raising=False)
    assert isinstance(open_store(tmp_path), SQLiteStore)
    for url in ("postgresql://u@h/db", "postgres://u@h/db"):
        monkeypatch.setenv("SHOAL_DATABASE_URL", url)
        assert isinstance(open_store(tmp_path), PostgresStore)
    with pytest.raises(StoreError, match="not a valid PostgreSQL URL"):
        PostgresStore("postgresql://h/db?nonsense=1")
    monkeypatch.setenv("SHOAL_DATABASE_URL", "mysql://u:secret@h/db")
    with pytest.raises(StoreError, match="postgresql://") as info:
        open_store(tmp_path)
    assert "secret" not in str(info.value)


def test_an_unreachable_database_fails_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    store = PostgresStore("postgresql://postgres:hunter2@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(StoreError, match="cannot connect to the database") as info:
        asyncio.run(store.open())
    assert "hunter2" not in str(info.value)


# -- a control plane on PostgreSQL ---------------------------------------------------------------------------------
@pytest.fixture
def pg_control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home", database_url=URL).start()
    _use_home(cp.home)
    yield cp
    cp.stop()
    if previous:
        _use_home(Path(previous))


def test_a_control_plane_on_postgres_runs_calls_and_keeps_them_across_a_sigkill(
        pg_control_plane: ControlPlane) -> None:
    import basic_app
    import restart_app

    cp = pg_control_plane
    with basic_app.app.run(quiet=True):
        assert basic_app.square.remote(7) == 49
        assert list(basic_app.square.map(range(200))) == [x * x for x in range(200)]
    d = shoal.Dict.from_name("pg-durable", create_if_missing=True)
    d["k"] = b"\x00binary\xff"
    with restart_app.app.run(quiet=True):
        call = restart_app.slow_echo.spawn("a", 1.5)
        finished = restart_app.slow_echo.spawn("b", 0.0)
        assert finished.get(timeout=30) == "done b"
        time.sleep(0.3)  # the slow one is running in a container now
        cp.kill()
        cp.start()
        assert shoal.FunctionCall.from_id(call.object_id).get(timeout=60) == "done a"
        assert shoal.FunctionCall.from_id(finished.object_id).get(timeout=30) == "done b"
    assert shoal.Dict.from_name("pg-durable")["k"] == b"\x00binary\xff"
    with pytest.raises(InvalidError, match="NUL"):  # text columns cannot hold it: a clear 400, not a 500
        shoal.Queue.from_name("pg-q", create_if_missing=True).put(1, partition="a\x00b")
    # It all lives in PostgreSQL, in the control plane's schema: no SQLite file was made.
    assert not (cp.home / "state.db").exists()
    with psycopg.connect(URL) as conn:
        n = conn.execute(f"SELECT COUNT(*) FROM {cp.schema}.outputs WHERE final=1").fetchone()[0]
    assert n >= 203
