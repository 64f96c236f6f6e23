"""Pure decisions of the dispatcher: how many containers (the KPA autoscaler), how many inputs per dispatch,
when to give up.

No I/O and no clocks read here: callers pass everything in, so each rule is unit-tested on its own.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

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


def ewma(previous: float | None, sample: float, alpha: float = 0.2) -> float:
    return sample if previous is None else previous + alpha * (sample - previous)


# -- the autoscaler: Knative's KPA with Modal's knobs ----------------------------------------------------------
# Load (running + queued inputs) is sampled once a second per pool. The stable window averages it for the
# steady-state decision; the panic window (a tenth of it) reacts to steps. A short `scaledown_window` shortens
# the stable window too, so that "scale down after 2 s idle" means what it says.
STABLE_WINDOW_S = 60.0
PANIC_WINDOW_FRACTION = 0.1  # panic window = 6 s of the default 60 s stable window
MIN_WINDOW_S = 1.0
PANIC_THRESHOLD = 2.0  # panic when the panic window asks for >= 2x the containers the pool has
SAMPLE_INTERVAL_S = 1.0
# After MAX_START_FAILURES in a row, warm-up starts (min/buffer containers) pause this long, doubling each time.
START_BACKOFF_S = 2.0
MAX_START_BACKOFF_S = 60.0


@dataclass(frozen=True)
class ScalingSettings:
    """A pool's knobs, with the runtime overrides (`autoscaler.update`) already applied."""

    min_containers: int = 0
    max_containers: int | None = None
    buffer_containers: int = 0
    scaledown_window: float = DEFAULT_SCALEDOWN_WINDOW_S
    target_inputs: float = 1.0  # inputs per container the scaler aims for (soft: averaged)
    max_inputs: int = 1  # inputs one container may run at once (hard: inputs beyond it need a container now)
    scaleup_window: float | None = None  # a Server's `scaleup_window`: the panic window's length


@dataclass(frozen=True)
class Sample:
    """The pool's raw load at one instant; weighted by the measured execution time when a decision is made."""

    t: float
    running: int
    queued: int


@dataclass(frozen=True)
class Decision:
    desired: int
    current: int
    reason: str
    load: float = 0.0  # effective load now (in inputs running at once)
    stable_load: float = 0.0  # averages over the windows
    panic_load: float = 0.0
    panic_until: float | None = None  # carried to the next decision: panic mode lasts until then
    base: int = 0  # desired from load alone (before buffer and clamps); panic keeps min(this, current)
    at: float = 0.0

    @property
    def panic(self) -> bool:
        return self.panic_until is not None


def windows(scaledown_window_s: float) -> tuple[float, float]:
    """(stable, panic) window lengths for a pool."""
    stable = min(STABLE_WINDOW_S, max(float(scaledown_window_s), MIN_WINDOW_S))
    return stable, max(MIN_WINDOW_S, stable * PANIC_WINDOW_FRACTION)


def effective_load(inputs: int, avg_exec_s: float | None) -> float:
    """Inputs running or queued, counted by their measured work once known (Little's law): 10,000 queued
    inputs of 20 µs are 0.2 s of work, which one container drains within BACKLOG_DRAIN_S."""
    if avg_exec_s is not None and inputs:
        return float(min(inputs, max(1, math.ceil(inputs * avg_exec_s / BACKLOG_DRAIN_S))))
    return float(inputs)


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - 1e-9))


def kpa_decide(
    samples: Sequence[Sample],
    now: float,
    *,
    current: int,
    settings: ScalingSettings,
    capacity: int,
    avg_exec_s: float | None = None,
    prev: Decision | None = None,
) -> Decision:
    """How many containers a pool should have now. Pure: `samples` (oldest first, the last one being the load
    now) and `prev` (the last decision) are the whole history.

    - stable mode: ceil(average load over the stable window / target_inputs);
    - panic mode, entered when the panic window asks for >= PANIC_THRESHOLD x `current`: ceil(panic-window
      average / target_inputs), never below what the pool has (it does not scale down); it lasts a stable
      window past the last time the threshold was crossed;
    - inputs beyond the hard cap (`max_inputs` per container) need a container now, whatever the averages say
      (this is also what starts the first container at once when an input arrives at zero);
    - while no input is running or queued, the pool does not grow (except up to min_containers);
    - plus `buffer_containers` while the stable window saw any load; clamped to [min, max] and to `capacity`.
    """
    stable_w, panic_w = windows(settings.scaledown_window)
    if settings.scaleup_window:
        panic_w = min(stable_w, float(settings.scaleup_window))
    target = max(float(settings.target_inputs), 1e-9)
    last = samples[-1] if samples else None
    load = effective_load(last.running + last.queued, avg_exec_s) if last is not None else 0.0
    stable_sum = panic_sum = 0.0
    stable_n = panic_n = 0
    stable_from, panic_from = now - stable_w, now - panic_w
    for s in samples:
        t = s.t
        if t <= stable_from or t > now:
            continue
        value = s.running + s.queued
        if avg_exec_s is not None and value:  # the call only where it changes something: this runs on every event
            value = effective_load(value, avg_exec_s)
        stable_sum += value
        stable_n += 1
        if t > panic_from:
            panic_sum += value
            panic_n += 1
    stable_load = stable_sum / stable_n if stable_n else 0.0
    panic_load = panic_sum / panic_n if panic_n else 0.0
    stable_want, panic_want = _ceil(stable_load / target), _ceil(panic_load / target)

    panic_until = prev.panic_until if prev is not None and prev.panic_until is not None else None
    if panic_until is not None and now >= panic_until:
        panic_until = None
    if panic_want >= PANIC_THRESHOLD * max(current, 1):
        panic_until = now + stable_w
    if panic_until is not None:
        # Never down while panicking: keep the most the panic asked for, even while those containers are still
        # starting (they start a few at a time), as Knative's KPA keeps its panic maximum.
        floor = prev.base if prev is not None and prev.panic_until is not None else 0
        base = max(panic_want, floor)
        reason = f"panic: {panic_w:g}s window asks {panic_want} for {current} container(s)"
    else:
        base = stable_want
        reason = f"stable: {stable_w:g}s window asks {stable_want}"
    hard = _ceil(load / max(settings.max_inputs, 1))
    if hard > base:
        base = hard
        reason = f"{load:g} input(s) need {hard} container(s) now"
    if current == 0 and load > 0:
        reason = f"scale from zero; {reason}"
    desired = base
    if settings.buffer_containers and stable_sum > 0:
        desired += settings.buffer_containers
        reason += f" + {settings.buffer_containers} buffer"
    if load == 0 and desired > current:
        desired = current
        reason += "; idle, not growing"
    if desired < settings.min_containers:
        desired = settings.min_containers
        reason += f"; min_containers={settings.min_containers}"
    if settings.max_containers is not None and desired > settings.max_containers:
        desired = settings.max_containers
        reason += f"; max_containers={settings.max_containers}"
    if desired > capacity:
        desired = max(0, capacity)
        reason += f"; machine holds {capacity}"
    return Decision(desired=desired, current=current, reason=reason, load=load, stable_load=stable_load,
                    panic_load=panic_load, panic_until=panic_until, base=base, at=now)


def scale_down_victims(idle_for_s: Sequence[float | None], *, decision: Decision, window_s: float) -> list[int]:
    """Which containers to stop (indices into `idle_for_s`; None = busy or not ready), longest idle first.

    Only idle containers go, only once idle for the pool's scaledown window, only down to the decision's
    desired count, and never while in panic.
    """
    excess = len(idle_for_s) - decision.desired
    if excess <= 0 or decision.panic:
        return []
    idle = sorted((i for i, t in enumerate(idle_for_s) if t is not None and t >= window_s),
                  key=lambda i: -(idle_for_s[i] or 0.0))
    return idle[:excess]


def start_backoff(consecutive_backoffs: int) -> float:
    """Seconds to pause warm-up starts after the n-th run of MAX_START_FAILURES failed starts (n >= 1)."""
    return min(MAX_START_BACKOFF_S, START_BACKOFF_S * 2 ** max(0, consecutive_backoffs - 1))


def rendezvous(key: str, candidates: Sequence[str]) -> int:
    """Which of `candidates` (container ids) a sticky session `key` goes to: the highest hash of (key,
    candidate). Removing or adding one container moves only the sessions that were, or will be, on it."""
    best, best_score = -1, b""
    for i, c in enumerate(candidates):
        score = hashlib.blake2b(f"{key}\0{c}".encode(), digest_size=8).digest()
        if score > best_score:
            best, best_score = i, score
    return best


# -- several control planes (controlplane/replicas.py) ---------------------------------------------------------------
@dataclass(frozen=True)
class LeaseDecision:
    """What a replica does about one lease: "take" it (it is free or expired: the state it guards must be
    rebuilt from the store), "renew" it (it holds it and it has not expired), or "defer" to its holder."""

    action: str
    owner: str | None
    expires_at: float | None


def lease_decision(*, holder: str | None, expires_at: float | None, me: str, now: float, ttl_s: float,
                   want: bool = True) -> LeaseDecision:
    """One replica's decision about a lease row (`holder`, `expires_at`; None when there is no row), all times on
    one clock (the database's). A holder's lease lasts until `expires_at`: up to then nobody else may take it,
    not even a replica that believes the holder dead. A lease that expired is free, also for its old holder,
    who must then rebuild what it guards as a newcomer would (it may have been taken and handed back meanwhile).
    `want=False`: the replica only asks who holds it (it never takes)."""
    alive = holder is not None and expires_at is not None and expires_at > now
    if alive and holder == me:
        return LeaseDecision("renew", me, now + ttl_s)
    if alive:
        return LeaseDecision("defer", holder, expires_at)
    if not want:
        return LeaseDecision("defer", None, None)
    return LeaseDecision("take", me, now + ttl_s)


def lease_confirmed_until(*, sent_at: float, ttl_s: float, margin_s: float) -> float:
    """Until when (on the replica's own monotonic clock) a lease renewed by a request sent at `sent_at` may be
    acted on. The database set the expiry at least ttl after `sent_at` (its clock read the request later), so
    stopping `margin_s` before `sent_at + ttl` stops before anyone else can take the lease, whatever the clocks
    of the two machines say."""
    return sent_at + max(0.0, ttl_s - margin_s)
