"""Function calls: created (idempotent on their id), their inputs stored then queued, cancelled or terminated.

An acknowledgement waits for the store's group commit (`Store.flushed(ticket)`): the methods return the ticket
and the API awaits it, so a call the client was told about survives a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._spec.errors import dumps_exception
from ...exception import ExecutionError
from ..metrics import METRICS
from ..store import Store
from ..store import calls as call_rows
from .model import GRAPH_CHILDREN, TERMINATED, Call, Input, Pool
from .outputs import Outputs
from .queues import Queues

if TYPE_CHECKING:
    from .registry import Registry

CALL_IDLE_EVICT_S = 300.0  # a finished call stays in memory this long after its last output was read


class Calls:
    def __init__(self, registry: Registry, store: Store, queues: Queues, outputs: Outputs) -> None:
        self.registry = registry
        self.store = store
        self.queues = queues
        self.outputs = outputs

    async def create_call(self, pool: Pool, call_id: str, kind: str, args: bytes | None,
                          method: str | None = None, parent_input: str | None = None) -> tuple[Call, int]:
        """A new call (idempotent on `call_id`); returns it with the store ticket that makes it durable.
        `method`: the method of a class the call runs; `parent_input`: the input id (`in-…`) of the call
        running here it was made from (a nested call), for the call graph."""
        calls = self.registry.calls
        existing = calls.get(call_id)
        if existing is not None:
            return existing, 0
        total = None if kind == "map" else 1
        parent = self._parent_of(parent_input)  # looked up before this call exists: never its own parent
        call = Call(call_id, pool, kind, total, method)
        calls[call_id] = call
        METRICS.call_started(pool, kind)
        if parent is not None:
            call.parent = parent
            parent[0].children.append(call)
        ticket = call_rows.put_call(self.store, call_id, pool.function_id, kind, total, method)
        if args is not None:
            ticket = call_rows.put_inputs(self.store, [(call_id, 0, args)])
            self.queues.enqueue(pool, [Input(call, 0, args)])
        return call, ticket

    def _parent_of(self, input_id: str | None) -> tuple[Call, int] | None:
        """The running call and input index an input id names (`in-<call id without fc->-<index>`)."""
        if not isinstance(input_id, str) or not input_id.startswith("in-"):
            return None
        head, _, idx = input_id[3:].rpartition("-")
        parent = self.registry.calls.get(f"fc-{head}")
        # Web requests' calls (one per pool, as long-lived as it) and calls with many children keep no more.
        if parent is None or parent.kind == "web" or not idx.isdigit() or len(parent.children) >= GRAPH_CHILDREN:
            return None
        return parent, int(idx)

    def add_inputs(self, call: Call, items: list[tuple[int, bytes]], last: bool) -> int:
        """Inputs of a map, streamed in batches; duplicates (client retries) are ignored."""
        assert call.received is not None
        fresh = [(idx, args) for idx, args in items if idx not in call.received]
        call.received.update(idx for idx, _ in fresh)
        ticket = call_rows.put_inputs(self.store, [(call.id, idx, args) for idx, args in fresh]) if fresh else 0
        if last and call.total is None:
            call.total = len(call.received)
            call.received = None
            ticket = call_rows.set_total(self.store, call.id, call.total)
        if call.cancelled:
            return ticket
        self.queues.enqueue(call.pool, [Input(call, idx, args) for idx, args in fresh])
        if call.finished:
            self.outputs.complete_call(call)
        return ticket

    def cancel_call(self, call: Call, terminate_containers: bool) -> None:
        self.terminate_call(call, "the call was cancelled", terminate_containers=terminate_containers)

    def terminate_call(self, call: Call, reason: str, terminate_containers: bool = True) -> None:
        """The call ends now: its queued inputs are dropped, its running ones stopped (with their container),
        every open input finishes as terminated."""
        call.cancelled = True
        pool = call.pool
        self.queues.drop_call(call)
        for c in list(pool.containers.values()):
            hit = [i for i in c.running.values() if i.call is call]
            if hit and (terminate_containers or not pool.definition.is_async):
                # Sync code cannot be interrupted safely: the container goes, its other inputs are re-queued.
                self.queues.stop_container(c, f"terminated: {reason}", kill=True)
        if call.total is None:
            call.total = len(call.received or ())
        data = dumps_exception(ExecutionError(f"Function call {call.id} terminated: {reason}"))
        self.outputs.finish_outputs([(call, idx, TERMINATED, data) for idx in list(call.open)])
        if call.finished:
            self.outputs.complete_call(call)

    def terminate_running(self, pool: Pool, reason: str) -> None:
        """Every running call of the pool ends (its function or app stopped)."""
        for call in [c for c in self.registry.calls_of(pool) if c.state == "running"]:
            self.terminate_call(call, reason)

    def forget_idle(self, now: float) -> None:
        """Finished calls nobody read for CALL_IDLE_EVICT_S leave memory (their outputs stay in the store)."""
        calls = self.registry.calls
        for call in list(calls.values()):
            if call.state != "running" and now - call.last_active > CALL_IDLE_EVICT_S:
                del calls[call.id]


