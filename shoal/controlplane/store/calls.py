"""Function calls, their inputs and their outputs, as stored (tables `calls`, `inputs`, `outputs`).

The writes of the dispatch path (`put_call`, `put_inputs`, `put_outputs`, …) are `Store` methods, queued behind
the group commit; here are the reads: what recovery rebuilds, and what readers of a call no longer in memory see.
"""

from __future__ import annotations

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
