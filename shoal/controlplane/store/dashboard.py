"""What the dashboard reads (controlplane/dashboard/): a function's recent calls and failures, a call's inputs,
counts. Each query is bounded (LIMIT, or the newest calls first) so a page stays fast with 100,000 calls."""

from __future__ import annotations

from .base import Store

RECENT_CALLS_SCANNED = 1000  # failures are looked for among a function's newest calls


async def count_apps(store: Store) -> int:
    return (await store.read("SELECT COUNT(*) FROM apps"))[0][0]


async def function_calls(store: Store, function_id: str, limit: int) -> list[tuple]:
    """(call_id, kind, created_at, num_inputs, state, completed_at) of a function's newest calls."""
    return await store.read(
        "SELECT call_id, kind, created_at, num_inputs, state, completed_at FROM calls WHERE function_id=? "
        "ORDER BY created_at DESC LIMIT ?", (function_id, limit))


async def calls_per_minute(store: Store, function_id: str, since: float) -> list[tuple[int, int]]:
    """(minute since the epoch, calls created) of a function since `since`."""
    return await store.read(
        "SELECT CAST(created_at / 60 AS INTEGER) AS m, COUNT(*) FROM calls WHERE function_id=? AND created_at >= ? "
        "GROUP BY m ORDER BY m", (function_id, since))


async def failures(store: Store, function_id: str, limit: int) -> list[tuple]:
    """(call_id, idx, status, data, created_at) of the newest failed inputs among the function's newest calls."""
    return await store.read(
        "SELECT o.call_id, o.idx, o.status, o.data, o.created_at FROM outputs o WHERE o.final=1 "
        "AND o.status IN ('failure', 'timeout', 'terminated') AND o.call_id IN (SELECT call_id FROM calls "
        "WHERE function_id=? ORDER BY created_at DESC LIMIT ?) ORDER BY o.created_at DESC LIMIT ?",
        (function_id, RECENT_CALLS_SCANNED, limit))


async def call_row(store: Store, call_id: str) -> tuple | None:
    """(call_id, function_id, kind, created_at, num_inputs, state, completed_at, method) of a call."""
    rows = await store.read("SELECT call_id, function_id, kind, created_at, num_inputs, state, completed_at, method "
                            "FROM calls WHERE call_id=?", (call_id,))
    return rows[0] if rows else None


async def call_inputs(store: Store, call_id: str, limit: int) -> list[tuple]:
    """(idx, status or None, error data or None, finished at or None) of a call's first inputs; a success's
    data (the result) is not read."""
    return await store.read(
        "SELECT i.idx, o.status, CASE WHEN o.status = 'success' THEN NULL ELSE o.data END, o.created_at "
        "FROM inputs i LEFT JOIN outputs o ON o.call_id = i.call_id AND o.idx = i.idx AND o.final = 1 "
        "WHERE i.call_id=? ORDER BY i.idx LIMIT ?", (call_id, limit))


async def app_functions(store: Store, app_id: str) -> list[tuple[str, str]]:
    """(function_id, tag) of an app's stored functions (those of a stopped app included)."""
    return await store.read("SELECT function_id, tag FROM functions WHERE app_id=? ORDER BY tag", (app_id,))


async def function_app(store: Store, function_id: str) -> tuple[str, str] | None:
    """(app_id, tag) of a stored function."""
    rows = await store.read("SELECT app_id, tag FROM functions WHERE function_id=?", (function_id,))
    return (rows[0][0], rows[0][1]) if rows else None


async def queue_partitions(store: Store) -> dict[str, int]:
    """queue_id -> how many partitions hold items now."""
    return dict(await store.read("SELECT queue_id, COUNT(DISTINCT partition) FROM queue_items GROUP BY queue_id"))
