"""Stored state cannot brick the control plane, and a deploy lands whole or leaves nothing.

Rows an older or buggy version might have written (a definition with a wrong type, bytes that are no
definition, a schedule that cannot run) are written straight into the store; the real control plane then
starts, serves, runs a good app's calls and reports each bad app as failed. A deploy whose image build fails,
and one whose store transaction fails (a real SQLite or PostgreSQL trigger aborts the version's insert), leave
no app, function or version behind, and a failed redeploy leaves the running version as it was.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

import shoal
from shoal._client.transport import get_client
from shoal.controlplane.store import apps as app_rows
from shoal.exception import ImageBuildError, NotFoundError

from ..conftest import ControlPlane, wait_for

BROKEN: dict[str, bytes] = {  # app name -> the one definition stored for it
    "broken-webhook": msgpack.packb({"tag": "f", "serialized_fn": b"x", "webhook": "x"}),
    "broken-min-containers": msgpack.packb({"tag": "f", "serialized_fn": b"x", "options": {"min_containers": "x"}}),
    "broken-cls": msgpack.packb({"tag": "f", "serialized_fn": b"x", "cls": "x"}),
    "broken-garbage": b"\xc1 this is no msgpack",
    "broken-not-a-map": msgpack.packb([1, 2, 3]),
    # Decodes, but cannot run: the scheduler finds out, not recovery.
    "broken-cron": msgpack.packb({"tag": "f", "serialized_fn": b"x",
                                  "schedule": {"type": "cron", "cron_string": "not a cron line"}}),
    "broken-period": msgpack.packb({"tag": "f", "serialized_fn": b"x", "schedule": {"type": "period"}}),
}


def _with_store(cp: ControlPlane, fn: Callable[[Any], Any]) -> Any:
    async def run() -> Any:
        store = cp.store()
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _write_broken_apps(cp: ControlPlane) -> None:
    async def write(store: Any) -> None:
        for i, (name, definition) in enumerate(BROKEN.items()):
            app_id, mode = f"ap-broken{i}", "ephemeral" if i in (0, 2) else "deployed"
            await app_rows.put_app(store, app_id, name, mode, detach=mode == "deployed")
            await store.flushed(app_rows.write_function(store, f"fu-broken{i}", app_id, "f", definition))
        await store.flushed(store.write(  # a version whose stored definitions are garbage too
            "INSERT INTO app_versions (app_id, version, created_at, definitions, strategy, tag, rollback_of) "
            "VALUES (?,?,?,?,?,?,?)", ("ap-broken1", 1, 0.0, b"\xc1", "rolling", "", None)))
        await store.flushed(store.write(  # a proxy token whose scope is garbage: it must admit nothing
            "INSERT INTO proxy_tokens (token_id, secret_hash, scope, created_at) VALUES (?,?,?,?)",
            ("wk-broken", "x", b"\xc1", 0.0)))

    _with_store(cp, write)


def _states() -> dict[str, str]:
    return {a["name"]: a["state"] for a in get_client().call("GET", "/v1/apps")["apps"]}


def test_broken_stored_rows_fail_their_apps_and_the_control_plane_serves(private_control_plane: ControlPlane) -> None:
    import basic_app

    cp = private_control_plane
    basic_app.app.deploy()
    cp.kill()
    _write_broken_apps(cp)
    cp.start()  # (raises when the process exits before it serves)
    client = get_client()
    assert client.call("GET", "/v1/health")["ok"]
    assert shoal.Function.from_name("basic", "square").remote(5) == 25
    assert wait_for(lambda: all(_states().get(name) == "failed" for name in BROKEN), timeout=30), _states()
    assert _states()["basic"] == "running"
    assert [v["functions"] for v in client.call("GET", "/v1/apps/ap-broken1/history")["versions"]] == [[]]
    assert "wk-broken" not in {t["token_id"] for t in client.call("GET", "/v1/proxy-tokens")["tokens"]}
    with basic_app.app.run(quiet=True):  # an ephemeral app: registration, calls and the reaper work
        assert basic_app.add.remote(1, 2) == 3
    # The failed apps stay failed across a restart, and the good one keeps running.
    cp.kill()
    cp.start()
    assert shoal.Function.from_name("basic", "square").remote(6) == 36
    assert all(_states().get(name) == "failed" for name in BROKEN), _states()


# -- atomic deploys ---------------------------------------------------------------------------------------------
def _rows_named(cp: ControlPlane, name: str) -> tuple[int, int, int]:
    """(apps, functions, versions) stored for apps of this name, read while the control plane runs."""
    queries = ["SELECT COUNT(*) FROM {}apps WHERE name={p}",
               "SELECT COUNT(*) FROM {}functions f JOIN {}apps a ON a.app_id=f.app_id WHERE a.name={p}",
               "SELECT COUNT(*) FROM {}app_versions v JOIN {}apps a ON a.app_id=v.app_id WHERE a.name={p}"]
    if cp.schema is None:
        with sqlite3.connect(cp.home / "state.db") as conn:
            return tuple(conn.execute(q.format("", "", p="?"), (name,)).fetchone()[0] for q in queries)
    import psycopg

    with psycopg.connect(cp.env["SHOAL_DATABASE_URL"], autocommit=True) as conn:
        s = f"{cp.schema}."
        return tuple(conn.execute(q.format(s, s, p="%s"), (name,)).fetchone()[0] for q in queries)


def _abort_version_inserts(cp: ControlPlane, on: bool) -> None:
    """A real failure inside the deploy's transaction: a trigger that aborts every insert of a version."""
    if cp.schema is None:
        with sqlite3.connect(cp.home / "state.db") as conn:
            conn.execute("CREATE TRIGGER abort_versions BEFORE INSERT ON app_versions "
                         "BEGIN SELECT RAISE(ABORT, 'injected failure'); END" if on else
                         "DROP TRIGGER abort_versions")
        return
    import psycopg

    with psycopg.connect(cp.env["SHOAL_DATABASE_URL"], autocommit=True) as conn:
        s = cp.schema
        if on:
            conn.execute(f"CREATE FUNCTION {s}.abort_versions() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$")
            conn.execute(f"CREATE TRIGGER abort_versions BEFORE INSERT ON {s}.app_versions FOR EACH ROW "
                         f"EXECUTE FUNCTION {s}.abort_versions()")
        else:
            conn.execute(f"DROP TRIGGER abort_versions ON {s}.app_versions")
            conn.execute(f"DROP FUNCTION {s}.abort_versions()")


def test_a_deploy_that_fails_leaves_nothing_behind(private_control_plane: ControlPlane) -> None:
    import basic_app
    import images_fail_app

    cp = private_control_plane
    with pytest.raises(ImageBuildError):
        images_fail_app.bad_package.deploy()
    assert _rows_named(cp, "images-bad-package") == (0, 0, 0)
    with pytest.raises(NotFoundError):
        shoal.App.lookup("images-bad-package")

    _abort_version_inserts(cp, on=True)
    with pytest.raises(Exception, match="injected failure|500"):
        basic_app.app.deploy()
    assert _rows_named(cp, "basic") == (0, 0, 0)
    with pytest.raises(NotFoundError):
        shoal.App.lookup("basic")

    _abort_version_inserts(cp, on=False)
    basic_app.app.deploy()
    stored = _rows_named(cp, "basic")
    assert stored == (1, stored[1], 1) and stored[1] >= 2
    # A redeploy that fails in its transaction leaves version 1 running as it was.
    _abort_version_inserts(cp, on=True)
    with pytest.raises(Exception, match="injected failure|500"):
        basic_app.app.deploy()
    assert _rows_named(cp, "basic") == stored
    info = get_client().call("GET", "/v1/apps/basic/info")
    assert info["version"] == 1 and info["state"] == "running"
    assert shoal.Function.from_name("basic", "square").remote(9) == 81
