"""Function calls, their inputs and their outputs, as stored (tables `calls`, `inputs`, `outputs`).

The writes of the dispatch path (`put_call`, `put_inputs`, `put_outputs`, …), queued behind the group commit,
and the reads: what recovery rebuilds, and what readers of a call no longer in memory see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .base import Store


@dataclass
class Unfinished:
    """A running call as stored: what recovery needs to take it up again."""

    call_id: str
    function_id: str
    kind: str
    num_inputs: int | None
    max_seq: int  # its highest committed output seq (-1: none)
    method: str | None
    finals: dict[int, tuple[str, bytes | None]] = field(default_factory=dict)  # idx -> (status, data)
    inputs: list[tuple[int, bytes]] = field(default_factory=list)  # (idx, args) of every input received


def load_unfinished_now(store: Store, app_id: str | None, function_ids: set[str]) -> list[Unfinished]:
    """The running calls (of `app_id`'s functions, else of all), each with its inputs and final outputs when
    its function is in `function_ids` (the others are listed bare: their function is gone). Blocking."""
    read = store.read_now
    sql = ("SELECT c.call_id, c.function_id, c.kind, c.num_inputs, "
           "(SELECT COALESCE(MAX(seq), -1) FROM outputs o WHERE o.call_id = c.call_id), c.method "
           "FROM calls c WHERE c.state='running'")
    rows = read(sql, ()) if app_id is None else read(
        sql + " AND c.function_id IN (SELECT function_id FROM functions WHERE app_id=?)", (app_id,))
    calls = []
    for call_id, function_id, kind, num_inputs, max_seq, method in rows:
        call = Unfinished(call_id, function_id, kind, num_inputs, max_seq, method)
        if function_id in function_ids:
            call.finals = {idx: (status, data) for idx, status, data in read(
                "SELECT idx, status, data FROM outputs WHERE call_id=? AND final=1", (call_id,))}
            call.inputs = read("SELECT idx, args FROM inputs WHERE call_id=?", (call_id,))
        calls.append(call)
    return calls


async def outputs_between(store: Store, call_id: str, after: int, upto: int,
                          limit: int) -> list[tuple[int, int, str, bytes | None, bool]]:
    """(seq, idx, status, data, final) of the call's committed outputs with after < seq <= upto, in order."""
    rows = await store.read(
        "SELECT seq, idx, status, data, final FROM outputs WHERE call_id=? AND seq > ? AND seq <= ? "
        "ORDER BY seq LIMIT ?", (call_id, after, upto, limit))
    return [(seq, idx, status, data, bool(final)) for seq, idx, status, data, final in rows]


async def final_output(store: Store, call_id: str, idx: int) -> tuple[str, bytes | None] | None:
    """(status, data) of an input's final output, None when it has none (yet)."""
    rows = await store.read(
        "SELECT o.status, o.data FROM outputs o WHERE o.call_id=? AND o.idx=? AND o.final=1", (call_id, idx))
    return (rows[0][0], rows[0][1]) if rows else None


async def summary(store: Store, call_id: str) -> tuple[str, int | None, str] | None:
    """(kind, num_inputs, state) of a stored call; None when there is no such call."""
    rows = await store.read("SELECT kind, num_inputs, state FROM calls WHERE call_id=?", (call_id,))
    return (rows[0][0], rows[0][1], rows[0][2]) if rows else None


def put_call(store: Store, call_id: str, function_id: str, kind: str, num_inputs: int | None,
                 method: str | None = None) -> int:
    """`method`: the method of a class a call runs (None for functions)."""
    return store.write(
        "INSERT INTO calls (call_id, function_id, kind, created_at, num_inputs, method) "
        "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
        (call_id, function_id, kind, time.time(), num_inputs, method),
    )


def set_total(store: Store, call_id: str, num_inputs: int) -> int:
    return store.write("UPDATE calls SET num_inputs=? WHERE call_id=?", (num_inputs, call_id))


def set_state(store: Store, call_id: str, state: str) -> int:
    return store.write(
        "UPDATE calls SET state=?, completed_at=? WHERE call_id=?", (state, time.time(), call_id)
    )


def put_inputs(store: Store, rows: list[tuple[str, int, bytes]]) -> int:
    return store.write("INSERT INTO inputs (call_id, idx, args) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                      rows, many=True)


def put_outputs(store: Store, rows: list[tuple[str, int, int, str, bytes | None, bool]],
                    fences: list[tuple[str, str]] | None = None) -> int:
    """Rows of (call_id, seq, idx, status, data, final). `fences` (replicas, PostgreSQL only): for each row,
    the (lease key, owner) that must still hold when it is written, else it is dropped: a replica that lost
    an app cannot add outputs behind the back of its new owner. The lease row is share-locked until the
    write commits, so a takeover (which locks it to update it) reads the store after such writes."""
    now = time.time()
    values = [(c, s, i, st, d, int(f), now) for c, s, i, st, d, f in rows]
    if fences is not None:
        return store.write(
            "INSERT INTO outputs (call_id, seq, idx, status, data, final, created_at) "
            "SELECT ?,?,?,?,?,?,? WHERE EXISTS (SELECT 1 FROM leases WHERE key=? AND owner=? FOR SHARE) "
            "ON CONFLICT DO NOTHING",
            [v + fence for v, fence in zip(values, fences, strict=True)], many=True,
        )
    return store.write(
        "INSERT INTO outputs (call_id, seq, idx, status, data, final, created_at) "
        "VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING", values, many=True,
    )


def expire(store: Store, before: float) -> int:
    """Drop inputs and outputs of calls completed before `before`; keep the call row to say 'expired'."""
    store.write(
        "DELETE FROM outputs WHERE call_id IN (SELECT call_id FROM calls WHERE state!='running' "
        "AND completed_at < ?)", (before,),
    )
    store.write(
        "DELETE FROM inputs WHERE call_id IN (SELECT call_id FROM calls WHERE state!='running' "
        "AND completed_at < ?)", (before,),
    )
    return store.write(
        "UPDATE calls SET state='expired' WHERE state!='running' AND completed_at < ?", (before,)
    )
