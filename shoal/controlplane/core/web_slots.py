"""Container slots for web requests (controlplane/proxy.py): a request to a web function waits in its pool's
queue like an input (the autoscaler sees it at once); a request to a Server gets a slot now or not at all.
Requests are not stored: they do not outlive their HTTP connection."""

from __future__ import annotations

import asyncio
import time

from .. import policy
from .model import Call, Input, Pool, new_id
from .queues import Queues, assign


class WebSlots:
    def __init__(self, queues: Queues) -> None:
        self.queues = queues
        self._ties = 0  # Server requests among equally loaded containers go round in turn

    def web_enqueue(self, pool: Pool) -> Input:
        """A web request waits for a slot in one of the pool's containers, counted as an input; `inp.waiter`
        resolves with the container."""
        inp = _web_input(pool)
        self.queues.enqueue(pool, [inp])
        return inp

    def server_acquire(self, pool: Pool, session: str | None) -> Input | str:
        """A Server request gets a slot now or not at all (Servers have no queue): the least loaded ready
        container, or with a `Modal-Session-ID` the session's container (rendezvous hashing, best effort).
        Returns "none" when no container is ready (a container is started: the caller answers 503) and "full"
        when every container is at `max_concurrency` (429)."""
        ready = [c for c in pool.ready() if c.web_ports]
        if not ready:
            live = pool.live()
            if not live:
                self.queues.scale(pool, policy.Decision(desired=1, current=0, reason="a request at zero"))
            return "none"
        cap = (pool.server.max_concurrency or 0) if pool.server is not None else 0
        choice = None
        if session:
            choice = ready[policy.rendezvous(session, [c.id for c in ready])]
            if cap and len(choice.running) >= cap:
                choice = None
        if choice is None:
            low = min(len(c.running) for c in ready)
            if cap and low >= cap:
                return "full"
            least = [c for c in ready if len(c.running) == low]
            self._ties += 1
            choice = least[self._ties % len(least)]  # ties in turn: one request at a time spreads too
        inp = _web_input(pool)
        # Resolved at once: a container that ends under the request does not put it back in the queue as a
        # function input (Queues.stop_container); its client gets the 502.
        inp.waiter.set_result(choice)  # type: ignore[union-attr]
        assign(choice, inp, time.monotonic())
        target = pool.autoscaler.server_knobs(pool.server)["target_concurrency"]
        if target and len(ready) == len(pool.live()) and sum(len(c.running) for c in ready) > len(ready) * target:
            self.queues.scale(pool)  # above target: the autoscaler may want more now, not at the next tick
        return inp

    def web_release(self, inp: Input) -> None:
        """The request is over (answered, failed or abandoned): its slot goes to the next one waiting."""
        inp.call.open.pop(inp.idx, None)
        if inp.waiter is not None and not inp.waiter.done():
            inp.waiter.cancel()  # still queued: Queues.pump skips it
            return
        c = inp.container
        inp.container = None
        if c is None or c.running.pop(inp.key, None) is None:
            return
        pool = c.pool
        if pool.server is None:  # a Server's load is its requests in flight, never weighted by their time
            pool.avg_exec_s = policy.ewma(pool.avg_exec_s, time.monotonic() - inp.dispatched_at)
        if pool.single_use:
            self.queues.stop_container(c, "single-use container finished its request")
        self.queues.slots_freed(c)


def _web_input(pool: Pool) -> Input:
    """A request as an input of its pool's web call (never stored); `waiter` gets its container."""
    call = pool.web_call
    if call is None:
        call = pool.web_call = Call(new_id("fc"), pool, "web", None)
    call.next_seq += 1
    inp = Input(call, call.next_seq, None)
    inp.waiter = asyncio.get_running_loop().create_future()
    return inp
