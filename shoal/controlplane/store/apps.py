"""Apps, their versions and their function definitions, as stored (tables `apps`, `app_versions`, `functions`).

Writes are queued (`Store.write`: a ticket for `flushed`); `async` reads run in a thread; the blocking reads
(`*_now`) are for start-up and for work already off the event loop.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import msgpack
import msgspec

from ..._spec import definitions as spec
from ..._spec.definitions import FunctionDefinition
from . import idempotency
from .base import Connection, Store

APP_COLUMNS = ("app_id", "name", "mode", "state", "created_at", "stopped_at")
_APP_SELECT = "SELECT app_id, name, mode, state, created_at, stopped_at FROM apps"


# -- apps --------------------------------------------------------------------------------------------------------
def running_now(store: Store, app_id: str | None = None) -> list[tuple[str, str | None, str, int]]:
    """(app_id, name, mode, detach) of the running apps, oldest first; only `app_id`'s when given. Blocking."""
    if app_id is None:
        return store.read_now("SELECT app_id, name, mode, detach FROM apps WHERE state='running' ORDER BY created_at")
    return store.read_now("SELECT app_id, name, mode, detach FROM apps WHERE state='running' AND app_id=? "
                          "ORDER BY created_at", (app_id,))


async def by_id(store: Store, app_id: str) -> list[dict[str, Any]]:
    """The app with this id (any state), as a dict of APP_COLUMNS; [] when there is none."""
    rows = await store.read(f"{_APP_SELECT} WHERE app_id=?", (app_id,))
    return [dict(zip(APP_COLUMNS, r, strict=True)) for r in rows]


async def by_name(store: Store, name: str) -> list[dict[str, Any]]:
    """The apps of this name (any state, any mode), newest first."""
    rows = await store.read(f"{_APP_SELECT} WHERE name=? ORDER BY created_at DESC", (name,))
    return [dict(zip(APP_COLUMNS, r, strict=True)) for r in rows]


async def recent(store: Store, limit: int = 200) -> list[tuple]:
    """(app_id, name, mode, state, created_at, stopped_at, current version) of the newest apps, newest first."""
    return await store.read(
        "SELECT app_id, name, mode, state, created_at, stopped_at, "
        "(SELECT MAX(version) FROM app_versions v WHERE v.app_id = apps.app_id) "
        "FROM apps ORDER BY created_at DESC LIMIT ?", (limit,))


# -- functions ---------------------------------------------------------------------------------------------------
def definitions_now(store: Store, app_id: str | None = None) -> list[tuple[str, str, FunctionDefinition | str]]:
    """(function_id, app_id, definition) of the functions of every running app, or of `app_id`'s. Blocking.
    Definitions an older version stored decode too: missing keys take their defaults, unknown ones are
    ignored. One that cannot be used (a wrong type, bytes that are not a definition) comes back as the reason
    why, a string, for recovery to fail its app rather than stop."""
    if app_id is None:
        rows = store.read_now("SELECT f.function_id, f.app_id, f.definition FROM functions f "
                              "JOIN apps a ON a.app_id = f.app_id WHERE a.state='running'")
    else:
        rows = store.read_now("SELECT function_id, app_id, definition FROM functions WHERE app_id=?", (app_id,))
    return [(function_id, owner, _definition(blob)) for function_id, owner, blob in rows]


def _definition(blob: Any) -> FunctionDefinition | str:
    try:
        return spec.decode(blob)
    except (msgspec.DecodeError, TypeError) as exc:  # (TypeError: not bytes at all)
        return str(exc)


async def image_users(store: Store, stopped_since: float) -> list[tuple[str, str | None, str, float | None,
                                                                        FunctionDefinition | str]]:
    """(app_id, name, state, stopped_at, definition) of the functions of running apps and of apps stopped since
    `stopped_since`: what the image clean-up counts as using an image (controlplane/image_gc.py)."""
    rows = await store.read(
        "SELECT a.app_id, a.name, a.state, a.stopped_at, f.definition FROM functions f "
        "JOIN apps a ON a.app_id = f.app_id WHERE a.state='running' OR a.stopped_at >= ?", (stopped_since,))
    return [(app_id, name, state, stopped_at, _definition(blob)) for app_id, name, state, stopped_at, blob in rows]


async def running_functions(store: Store) -> dict[str, dict[str, str]]:
    """app_id -> {tag: function_id} for every running app (those other replicas own included)."""
    out: dict[str, dict[str, str]] = {}
    for app_id, tag, function_id in await store.read(
            "SELECT f.app_id, f.tag, f.function_id FROM functions f JOIN apps a ON a.app_id = f.app_id "
            "WHERE a.state='running'"):
        out.setdefault(app_id, {})[tag] = function_id
    return out


def put_function(store: Store, function_id: str, app_id: str, key: str, definition: FunctionDefinition) -> int:
    """Store (or replace) a function's definition under its tag (a variant: its variant key)."""
    return write_function(store, function_id, app_id, key, spec.encode(definition))


# -- versions of deployed apps -----------------------------------------------------------------------------------
def latest_versions_now(store: Store) -> dict[str, int]:
    """app_id -> its current version, for every app deployed at least once. Blocking."""
    return {app_id: v for app_id, v in store.read_now(
        "SELECT app_id, MAX(version) FROM app_versions GROUP BY app_id") if isinstance(v, int)}


def latest_version_now(store: Store, app_id: str) -> int | None:
    """The app's current version (None: never deployed). Blocking."""
    rows = store.read_now("SELECT MAX(version) FROM app_versions WHERE app_id=?", (app_id,))
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


async def version_definitions(store: Store, app_id: str, version: int) -> list[FunctionDefinition] | None:
    """The definitions a version deployed (None: that version is not recorded)."""
    rows = await store.read("SELECT definitions FROM app_versions WHERE app_id=? AND version=?", (app_id, version))
    if not rows:
        return None
    try:
        return spec.decode_list(rows[0][0])
    except (msgspec.DecodeError, TypeError):  # stored by an older or buggy version: not a version to deploy
        return None


async def last_deploy(store: Store, app_id: str) -> tuple[float, str] | None:
    """(created_at, strategy) of the app's current version; None: never deployed."""
    rows = await store.read(
        "SELECT created_at, strategy FROM app_versions WHERE app_id=? ORDER BY version DESC LIMIT 1", (app_id,))
    return (rows[0][0], rows[0][1]) if rows else None


async def history(store: Store, app_id: str) -> list[dict[str, Any]]:
    """Every version of the app, oldest first: number, when, strategy, tag, what it rolled back to, its tags."""
    rows = await store.read(
        "SELECT version, created_at, strategy, tag, rollback_of, definitions FROM app_versions WHERE app_id=? "
        "ORDER BY version", (app_id,))
    return [{"version": version, "created_at": created_at, "strategy": strategy, "tag": tag or "",
             "rollback_of": rollback_of, "functions": _tags(blob)}
            for version, created_at, strategy, tag, rollback_of, blob in rows]


def _tags(definitions: Any) -> list[str]:
    """The tags of a version's stored definitions ([] where they cannot be read)."""
    try:
        return [str(d["tag"]) for d in msgpack.unpackb(definitions, raw=False)]
    except Exception:  # noqa: BLE001 - stored by an older or buggy version: listed without its tags
        return []


def write_function(store: Store, function_id: str, app_id: str, tag: str, definition: bytes) -> int:
    """A function row as stored: `definition` already encoded."""
    return store.write(_UPSERT_FUNCTION, (function_id, app_id, tag, definition))


class NewApp(NamedTuple):
    name: str | None
    mode: str
    detach: bool


class NewVersion(NamedTuple):
    """A deployed app's next version: its number and how it was made (its definitions are the functions')."""

    version: int
    strategy: str
    tag: str
    rollback_of: int | None


async def put_functions(store: Store, app_id: str, functions: list[tuple[str, str, FunctionDefinition]], *,
                        new_app: NewApp | None = None, removed: list[str] | None = None,
                        version: NewVersion | None = None, idem: tuple[str, dict[str, Any]] | None = None) -> None:
    """An app's functions (function_id, key, definition) stored in one transaction, with the app itself when it
    is new, the functions a new version no longer has deleted, and the version (the functions' definitions): a
    deploy or a registration lands whole or leaves nothing. With `idem` (an idempotency key, the reply's other
    fields) the reply, with {key: function_id} as "functions", is kept under the key in that transaction.
    Returns once committed."""
    rows = [(function_id, app_id, key, spec.encode(d)) for function_id, key, d in functions]
    version_row = None
    if version is not None:
        version_row = (app_id, version.version, time.time(), spec.encode([d for _, _, d in functions]),
                       version.strategy, version.tag, version.rollback_of)

    def run(c: Connection) -> None:
        if new_app is not None:
            c.execute(_INSERT_APP, (app_id, new_app.name, new_app.mode, "running", int(new_app.detach), time.time()))
        for function_id in removed or ():
            c.execute("DELETE FROM functions WHERE function_id=?", (function_id,))
        if rows:
            c.executemany(_UPSERT_FUNCTION, rows)
        if version_row is not None:
            c.execute(_UPSERT_VERSION, version_row)
        if idem is not None:
            idempotency.record(c, idem[0], {**idem[1], "functions": {key: fid for fid, key, _ in functions}})

    await store.transact(run)


_INSERT_APP = ("INSERT INTO apps (app_id, name, mode, state, detach, created_at) VALUES (?,?,?,?,?,?) "
               "ON CONFLICT DO NOTHING")
_UPSERT_FUNCTION = ("INSERT INTO functions (function_id, app_id, tag, definition) VALUES (?,?,?,?) "
                    "ON CONFLICT (function_id) DO UPDATE SET app_id=excluded.app_id, tag=excluded.tag, "
                    "definition=excluded.definition")
_UPSERT_VERSION = ("INSERT INTO app_versions (app_id, version, created_at, definitions, strategy, tag, rollback_of) "
                   "VALUES (?,?,?,?,?,?,?) ON CONFLICT (app_id, version) DO UPDATE SET created_at=excluded.created_at, "
                   "definitions=excluded.definitions, strategy=excluded.strategy, tag=excluded.tag, "
                   "rollback_of=excluded.rollback_of")


async def put_app(store: Store, app_id: str, name: str | None, mode: str, detach: bool,
                  idem: str | None = None) -> None:
    """A new running app; with `idem` (an idempotency key) {"app_id": app_id} is kept under it in the same
    transaction. Returns once committed."""

    def run(c: Connection) -> None:
        c.execute(_INSERT_APP, (app_id, name, mode, "running", int(detach), time.time()))
        idempotency.record(c, idem, {"app_id": app_id})

    await store.transact(run)


def set_stopped(store: Store, app_id: str, state: str = "stopped") -> int:
    """The app stopped (`state` "failed": the control plane could not run what it stored)."""
    return store.write("UPDATE apps SET state=?, stopped_at=? WHERE app_id=?", (state, time.time(), app_id))
