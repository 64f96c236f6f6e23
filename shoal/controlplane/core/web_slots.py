"""Container slots for web requests (controlplane/proxy.py): a request to a web function waits in its pool's
queue like an input (the autoscaler sees it at once); a request to a Server gets a slot now or not at all.
Requests are not stored: they do not outlive their HTTP connection."""

from __future__ import annotations

import asyncio
import time

from .. import policy
from ..credentials import bearer
from .model import Call, Container, Input, Pool, new_id
from .queues import Queues, assign
from .server_sessions import ServerSessions

SESSION_POLL_S = 0.1  # how often a session start waiting for a ready container looks again


class WebSlots:
    def __init__(self, queues: Queues) -> None:
        self.queues = queues
        self._ties = 0  # Server requests among equally loaded containers go round in turn
        self.sessions = ServerSessions()

    async def start_session(self, pool: Pool, idle_timeout: float, wait: float) -> tuple[str, str] | None:
        """A strict session on a ready container of the Server `pool`: (session id, token). With none ready, one
        is started and this waits up to `wait` seconds for it; None if none was ready by then."""
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            started = self.sessions.start(pool, idle_timeout, now)
            if started is not None:
                return started[0].session_id, started[1]
            if pool.stopped or now >= deadline:
                return None
            if not pool.live():
                self.queues.scale(pool, policy.Decision(desired=1, current=0, reason="a session at zero"))
            await asyncio.sleep(SESSION_POLL_S)

    def web_enqueue(self, pool: Pool) -> Input:
        """A web request waits for a slot in one of the pool's containers, counted as an input; `inp.waiter`
        resolves with the container."""
        inp = _web_input(pool)
        self.queues.enqueue(pool, [inp])
        return inp

    def session_for(self, function_id: str, authorization: str | None) -> Container | tuple[int, str] | None:
        """The container of the strict session whose token a request to a `@modal.sessioned()` Server carries
        (`Modal-Authorization: Bearer <token>`); the answer (status, body) when there is no such session (404)
        or it has ended (410); None for other requests."""
        pool = self.queues.registry.pools.get(function_id)
        server = pool.definition.server if pool is not None else None
        if server is None or not server.sessioned:
            return None
        token = bearer(authorization or "")
        if token is None:
            return None
        got = self.sessions.route(function_id, token, time.monotonic())
        if got == 404:
            return 404, "shoal: no such session of this Server"
        if got == 410:
            return 410, "shoal: this Server session has ended"
        return got  # type: ignore[return-value]

    def server_acquire(self, pool: Pool, session: str | None, pinned: Container | None = None) -> Input | str:
        """A Server request gets a slot now or not at all (Servers have no queue): the least loaded ready
        container, or with a `Modal-Session-ID` the session's container (rendezvous hashing, best effort), or
        the container of its strict session (`pinned`, server_sessions.py). Returns "none" when no container is
        ready (a container is started: the caller answers 503) and "full" when every container (the pinned
        one) is at `max_concurrency` (429)."""
        ready = [pinned] if pinned is not None else [c for c in pool.ready() if c.web_ports]
        if not ready:
            live = pool.live()
            if not live:
                self.queues.scale(pool, policy.Decision(desired=1, current=0, reason="a request at zero"))
            return "none"
        cap = (pool.server.max_concurrency or 0) if pool.server is not None else 0
        choice = None
        if session and pinned is None:
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
