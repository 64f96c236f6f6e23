"""The autoscaler's once-a-second tick for each pool: sample its load and decide (`PoolAutoscaler.decide`, the
pure `policy.kpa_decide`), then start what the decision wants, stop containers idle past the scaledown window,
and fail the starts that never became ready. Between ticks, events (inputs arriving, containers ending) scale
up at once through `Queues.scale`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import policy
from .model import Container, Pool
from .queues import Queues

if TYPE_CHECKING:
    from ...backends.base import Backend

SERVER_REPORT_GRACE_S = 2.0  # past a Server's startup_timeout, before the control plane kills it unheard


class ScalingTick:
    def __init__(self, backend: Backend, queues: Queues) -> None:
        self.backend = backend
        self.queues = queues

    def tick(self, pool: Pool, now: float) -> None:
        if pool.stopped:
            return
        live = pool.live()
        decision = pool.autoscaler.decide(pool, now, current=len(live), capacity=self.backend.capacity(),
                                          record=True)
        if decision.desired > len(live):
            self.queues.scale(pool, decision)
        elif len(live) > decision.desired:
            self.scale_down(pool, live, decision, now)
        self.fail_slow_starts(pool, now)

    def scale_down(self, pool: Pool, live: list[Container], decision: policy.Decision, now: float) -> None:
        """Stop idle containers: only those idle for the scaledown window, only down to the decision; a
        container a Server session lives on is not idle (core/server_sessions.py)."""
        window = pool.autoscaler.settings(pool).scaledown_window
        idle_for = [now - c.idle_since if c.state == "ready" and not c.running and not pool.queue
                    and c.session_until <= now else None for c in live]
        for i in policy.scale_down_victims(idle_for, decision=decision, window_s=window):
            self.queues.stop_container(live[i], "scaled down after idle window")

    def fail_slow_starts(self, pool: Pool, now: float) -> None:
        """Containers that never became ready within the startup timeout are failed starts."""
        startup = float(pool.options.startup_timeout or pool.options.timeout)
        # A Server's runtime enforces the same timeout on its port and says why it failed: it goes first.
        grace = SERVER_REPORT_GRACE_S if pool.server is not None else 0.0
        for c in pool.live():
            if c.state == "starting" and c.pending_reason is None and now - c.created_at > startup + grace:
                c.init_error = None
                pool.last_start_error = f"container did not become ready within {startup:g}s"
                self.queues.stop_container(c, pool.last_start_error, kill=True, failed_start=True)
