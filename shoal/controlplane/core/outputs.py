"""Outputs: the results of inputs, stored behind the group commit and shown to readers once committed.

A `.remote()` caller gets its result the moment it arrives (durability follows behind); every other reader
(maps, generators, `FunctionCall.get`) sees an output only once the store has committed it, so what a reader saw
survives a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..metrics import METRICS
from ..store import Store
from ..store import calls as call_rows
from .logs import wait_woken
from .model import Call

Fence = Callable[[str], tuple[str, str]]  # app_id -> (lease key, owner) a write for that app must still match
OutputRow = tuple[Call, int, str, bytes | None, bool]  # (call, idx, status, data, final)


class Outputs:
    def __init__(self, store: Store, fence: Fence | None) -> None:
        """`fence`: with several control planes (controlplane/replicas.py), outputs are written only while this
        one still holds the lease of the call's app; None: the only control plane writes unconditionally."""
        self.store = store
        self.fence = fence

    # -- writing ---------------------------------------------------------------------------------------------
    def finish_output(self, call: Call, idx: int, status: str, data: bytes | None) -> None:
        self.finish_outputs([(call, idx, status, data)])

    def finish_outputs(self, finals: list[tuple[Call, int, str, bytes | None]]) -> None:
        """Final outputs of inputs: each counted once, stored in one write, then shown to readers."""
        rows = []
        for call, idx, status, data in finals:
            inp = call.open.pop(idx, None)
            if inp is None:
                continue  # already finished (a late duplicate)
            METRICS.input_finished(call.pool, inp, status)
            call.done += 1
            rows.append((call, idx, status, data, True))
        self.add_outputs(rows)
        for call, *_ in rows:
            if call.finished:
                self.complete_call(call)

    def add_output(self, call: Call, idx: int, status: str, data: bytes | None, final: bool) -> None:
        self.add_outputs([(call, idx, status, data, final)])

    def add_outputs(self, rows: list[OutputRow]) -> None:
        if not rows:
            return
        stored, shown = [], []
        for call, idx, status, data, final in rows:
            seq = call.next_seq
            call.next_seq += 1
            if final and call.kind == "remote":
                # The waiting `.remote()` caller gets its result now; durability follows behind.
                call.results[idx] = (status, data)
                for fut in call.result_waiters.pop(idx, []):
                    if not fut.done():
                        fut.set_result((status, data))
            stored.append((call.id, seq, idx, status, data, final))
            shown.append((call, seq, idx, status, data, final))
        fences = [self.fence(call.pool.app_id) for call, *_ in shown] if self.fence is not None else None
        ticket = call_rows.put_outputs(self.store, stored, fences)

        def publish() -> None:
            for call, seq, idx, status, data, final in shown:
                call.publish(seq, idx, status, data, final)

        self.store.after(ticket, publish)

    def complete_call(self, call: Call) -> None:
        if call.state != "running":
            return
        call.state = "terminated" if call.cancelled else "complete"
        call_rows.set_state(self.store, call.id, call.state)
        METRICS.call_finished(call)

    # -- reading ---------------------------------------------------------------------------------------------
    async def wait_result(self, call: Call, idx: int, timeout: float) -> tuple[str, bytes | None] | None:
        if idx in call.results:
            return call.results[idx]
        fut = asyncio.get_running_loop().create_future()
        call.result_waiters[idx].append(fut)
        try:
            return await asyncio.wait_for(fut, timeout) if timeout > 0 else None
        except asyncio.TimeoutError:
            return None
        finally:
            if fut in call.result_waiters.get(idx, []):
                call.result_waiters[idx].remove(fut)

    async def wait_outputs(self, call: Call, after: int, timeout: float, limit: int) -> list:
        out = call.outputs_after(after, limit)
        if out or timeout <= 0 or call.drained:
            return out
        await wait_woken(call.output_waiters, timeout)
        return call.outputs_after(after, limit)
