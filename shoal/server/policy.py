"""Pure decisions of the dispatcher: how many containers, how many inputs per dispatch, when to give up.

No I/O and no clocks read here: callers pass everything in, so each rule is unit-tested on its own.
"""

from __future__ import annotations

import math

# A container that dies mid-input gets its inputs re-run this many times before they fail,
# without touching the user's `retries` budget.
MAX_CRASH_RETRIES = 5
# Failed container starts in a row after which queued inputs fail instead of waiting forever.
MAX_START_FAILURES = 3
DEFAULT_SCALEDOWN_WINDOW_S = 60.0
# How much work (seconds of measured execution) one dispatch may hand a container ahead of time.
PREFETCH_BUDGET_S = 0.005
MAX_PREFETCH = 256
# A backlog should drain within about this long; with measured execution times, a deep queue of fast
# inputs asks for few containers (Little's law) instead of one per input.
BACKLOG_DRAIN_S = 1.0


def desired_containers(
    *,
    queued: int,
    running: int,
    per_container: int,
    min_containers: int | None,
    max_containers: int | None,
    buffer_containers: int | None,
    capacity: int,
    avg_exec_s: float | None = None,
) -> int:
    """Containers a pool should have: enough slots for all running and queued inputs, plus the buffer while
    active, clamped to the pool's bounds and to what the machine can hold (`capacity`).

    Once execution time is measured, inputs count by their work: 10,000 queued inputs of 20 µs are
    0.2 s of work, which one container drains, not 10,000 containers.
    """
    load = queued + running  # `running` includes inputs prefetched by containers
    if avg_exec_s is not None and load:
        load = min(load, max(1, math.ceil(load * avg_exec_s / BACKLOG_DRAIN_S)))
    want = math.ceil(load / max(per_container, 1))
    if load and buffer_containers:
        want += buffer_containers
    want = max(want, min_containers or 0)
    if max_containers is not None:
        want = min(want, max_containers)
    return max(0, min(want, capacity))


def dispatch_batch(*, room: int, queued: int, ready_containers: int, avg_exec_s: float | None) -> int:
    """Inputs to hand one container that has `room` free places now.

    Slow or unmeasured functions fill exactly the free slots, so work spreads across containers. Fast ones
    (under PREFETCH_BUDGET_S per input) get a batch worth about PREFETCH_BUDGET_S of work, never more than a
    fair share of the queue: one frame carries many inputs, which is what makes large maps fast.
    """
    if room <= 0 or queued <= 0:
        return 0
    if avg_exec_s is None or avg_exec_s >= PREFETCH_BUDGET_S:
        return min(room, queued)
    budget = int(PREFETCH_BUDGET_S / max(avg_exec_s, 1e-6))
    fair = math.ceil(queued / max(ready_containers, 1))
    return max(1, min(room, budget, fair, queued))


def prefetch_capacity(max_inputs: int, avg_exec_s: float | None) -> int:
    """Inputs a container may hold (running + prefetched)."""
    if avg_exec_s is not None and avg_exec_s < PREFETCH_BUDGET_S:
        return max(max_inputs, MAX_PREFETCH)
    return max_inputs


def should_scale_down(*, idle_for_s: float, scaledown_window_s: float, live: int, min_containers: int) -> bool:
    """An idle container goes once it has been idle for the window and the pool stays above its minimum."""
    return idle_for_s >= scaledown_window_s and live > min_containers


def ewma(previous: float | None, sample: float, alpha: float = 0.2) -> float:
    return sample if previous is None else previous + alpha * (sample - previous)
