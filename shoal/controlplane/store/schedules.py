"""Schedules (`schedules`): per scheduled function, the anchor its Period counts from, when it last fired and
the call that fire made, so that ticks missed while the control plane was down fire once, and a new owner of
the app (controlplane/replicas.py) does not overlap the last scheduled run (controlplane/scheduler.py)."""

from __future__ import annotations

from typing import NamedTuple

from .base import Store


class ScheduleState(NamedTuple):
    anchor: float
    last_fire: float | None
    last_call: str | None


def load(store: Store, function_id: str) -> ScheduleState | None:
    """The function's schedule state, None when it has none yet (a blocking read: once per function)."""
    rows = store.read_now("SELECT anchor, last_fire, call_id FROM schedules WHERE function_id=?", (function_id,))
    return ScheduleState(*rows[0]) if rows else None


def start(store: Store, function_id: str, anchor: float) -> int:
    """Begin counting the function's Period from `anchor`, never fired (a ticket; fire and forget)."""
    return store.write("INSERT INTO schedules (function_id, anchor, last_fire) VALUES (?,?,?) "
                       "ON CONFLICT (function_id) DO UPDATE SET anchor=excluded.anchor, "
                       "last_fire=excluded.last_fire", (function_id, anchor, None))


def fired(store: Store, function_id: str, at: float, call_id: str) -> int:
    """The function fired at `at`, making call `call_id` (a ticket; fire and forget)."""
    return store.write("UPDATE schedules SET last_fire=?, call_id=? WHERE function_id=?", (at, call_id, function_id))


def reset(store: Store, function_id: str) -> int:
    """Forget the function's schedule state: a redeploy restarts its Period from now (a ticket)."""
    return store.write("DELETE FROM schedules WHERE function_id=?", (function_id,))
