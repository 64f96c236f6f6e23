"""The dispatcher's pure decisions (shoal/controlplane/policy.py)."""

from __future__ import annotations

import pytest

from shoal._spec.limits import SCALEDOWN_WINDOW_S
from shoal.controlplane import policy
from shoal.controlplane.policy import (
    MAX_PREFETCH,
    PREFETCH_BUDGET_S,
    dispatch_batch,
    effective_load,
    ewma,
    prefetch_capacity,
)

# -- effective_load (Little's law) --------------------------------------------------------------------------


def test_inputs_count_one_each_until_measured():
    assert effective_load(0, None) == 0
    assert effective_load(4, None) == 4


def test_measured_fast_inputs_count_by_their_work():
    # 10,000 inputs of 20 µs are 0.2 s of work: one container drains them within BACKLOG_DRAIN_S.
    assert effective_load(10_000, 20e-6) == 1
    assert effective_load(100_000, 20e-6) == 2
    assert effective_load(0, 20e-6) == 0
    # Slow inputs still count one each (never more).
    assert effective_load(4, 5.0) == 4


# -- dispatch_batch ------------------------------------------------------------------------------------------


def test_nothing_to_dispatch():
    assert dispatch_batch(room=0, queued=10, ready_containers=1, avg_exec_s=None) == 0
    assert dispatch_batch(room=5, queued=0, ready_containers=1, avg_exec_s=None) == 0
    assert dispatch_batch(room=-1, queued=10, ready_containers=1, avg_exec_s=0.001) == 0


def test_unmeasured_or_slow_fill_free_slots_only():
    assert dispatch_batch(room=1, queued=10, ready_containers=3, avg_exec_s=None) == 1
    assert dispatch_batch(room=4, queued=10, ready_containers=3, avg_exec_s=1.0) == 4
    assert dispatch_batch(room=4, queued=2, ready_containers=1, avg_exec_s=PREFETCH_BUDGET_S) == 2


def test_fast_inputs_batched_within_budget():
    # 1 µs per input: budget would be 5000 inputs; capped by room and queue.
    assert dispatch_batch(room=256, queued=10_000, ready_containers=1, avg_exec_s=1e-6) == 256
    # 1 ms per input: 5 inputs fit the 5 ms budget.
    n = dispatch_batch(room=256, queued=1000, ready_containers=1, avg_exec_s=0.001)
    assert n == int(PREFETCH_BUDGET_S / 0.001)


def test_fast_inputs_get_a_fair_share_of_the_queue():
    assert dispatch_batch(room=256, queued=100, ready_containers=4, avg_exec_s=1e-6) == 25
    assert dispatch_batch(room=256, queued=3, ready_containers=4, avg_exec_s=1e-6) == 1


def test_fast_inputs_always_at_least_one():
    assert dispatch_batch(room=10, queued=5, ready_containers=1, avg_exec_s=PREFETCH_BUDGET_S * 0.99) >= 1


# -- prefetch_capacity ---------------------------------------------------------------------------------------


def test_prefetch_capacity():
    assert prefetch_capacity(1, None) == 1
    assert prefetch_capacity(4, 1.0) == 4
    assert prefetch_capacity(1, PREFETCH_BUDGET_S) == 1
    assert prefetch_capacity(1, 1e-5) == MAX_PREFETCH
    assert prefetch_capacity(1000, 1e-5) == 1000


# -- defaults ----------------------------------------------------------------------------------------------


def test_default_scaledown_window_in_allowed_range():
    lo, hi = SCALEDOWN_WINDOW_S
    assert lo <= policy.DEFAULT_SCALEDOWN_WINDOW_S <= hi


# -- ewma ----------------------------------------------------------------------------------------------------


def test_ewma():
    assert ewma(None, 3.0) == 3.0
    assert ewma(1.0, 2.0) == pytest.approx(1.2)
    assert ewma(1.0, 2.0, alpha=0.5) == pytest.approx(1.5)
    assert ewma(2.0, 2.0) == 2.0
    value = None
    for _ in range(100):
        value = ewma(value, 5.0 if value is not None else 0.0)
    assert value == pytest.approx(5.0, abs=1e-6)


# -- sticky sessions: rendezvous hashing ---------------------------------------------------------------------
def test_rendezvous_is_stable_and_moves_only_the_removed_containers_sessions() -> None:
    from shoal.controlplane.policy import rendezvous

    containers = [f"ta-{i}" for i in range(4)]
    before = {f"s{i}": containers[rendezvous(f"s{i}", containers)] for i in range(200)}
    assert before == {k: containers[rendezvous(k, containers)] for k in before}  # same answer every time
    assert len(set(before.values())) == 4  # sessions spread over every container
    survivors = [c for c in containers if c != "ta-2"]
    after = {k: survivors[rendezvous(k, survivors)] for k in before}
    moved = {k for k in before if before[k] != after[k]}
    assert moved == {k for k, c in before.items() if c == "ta-2"}


def test_rendezvous_of_no_candidates() -> None:
    from shoal.controlplane.policy import rendezvous

    assert rendezvous("s", []) == -1


def test_server_scaleup_window_sets_the_panic_window() -> None:
    from shoal.controlplane.policy import Sample, ScalingSettings, kpa_decide

    settings = ScalingSettings(scaledown_window=60, target_inputs=8, max_inputs=10**9, scaleup_window=2)
    # 64 requests in flight for the last 2 s after a quiet minute: the 2 s window panics to 8 containers.
    samples = [Sample(float(t), 1, 0) for t in range(58)] + [Sample(58.0, 64, 0), Sample(59.0, 64, 0)]
    d = kpa_decide(samples, 59.0, current=1, settings=settings, capacity=100)
    assert d.desired == 8 and d.panic
    # Without it the 6 s default window averages the step down.
    slow = kpa_decide(samples, 59.0, current=1, settings=ScalingSettings(
        scaledown_window=60, target_inputs=8, max_inputs=10**9), capacity=100)
    assert slow.desired < 8
