"""The KPA autoscaler's pure policy (shoal/controlplane/policy.py: kpa_decide, scale_down_victims, …) and the
validation of runtime overrides (shoal/controlplane/core/autoscaler.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from shoal._spec.definitions import Options
from shoal.controlplane import policy
from shoal.controlplane.core.autoscaler import PoolAutoscaler, validate_update
from shoal.controlplane.policy import Decision, Sample, ScalingSettings, kpa_decide, scale_down_victims, windows


def settings(**kw: Any) -> ScalingSettings:
    return ScalingSettings(**kw)


def series(loads: list[float], start: float = 0.0, queued: bool = True) -> list[Sample]:
    """One sample a second; each load is queued inputs (or running ones with queued=False)."""
    return [Sample(start + i, 0 if queued else int(x), int(x) if queued else 0) for i, x in enumerate(loads)]


def decide(samples: list[Sample], *, current: int = 0, now: float | None = None, capacity: int = 1000,
           avg_exec_s: float | None = None, prev: Decision | None = None, **kw: Any) -> Decision:
    now = samples[-1].t if now is None and samples else (now or 0.0)
    return kpa_decide(samples, now, current=current, settings=settings(**kw), capacity=capacity,
                      avg_exec_s=avg_exec_s, prev=prev)


# -- windows -------------------------------------------------------------------------------------------------


def test_windows_default_to_knative_60s_and_6s():
    assert windows(policy.DEFAULT_SCALEDOWN_WINDOW_S) == (60.0, 6.0)


def test_short_scaledown_window_shortens_the_stable_window():
    assert windows(2) == (2.0, 1.0)
    assert windows(10) == (10.0, 1.0)
    assert windows(300) == (60.0, 6.0)  # never longer than the KPA's 60 s


# -- scale from zero and idle --------------------------------------------------------------------------------


def test_idle_pool_wants_nothing():
    d = decide([Sample(0, 0, 0)])
    assert d.desired == 0 and not d.panic
    assert decide([]).desired == 0


def test_first_input_at_zero_starts_a_container_at_once():
    # A long idle history does not dampen the first input.
    d = decide(series([0] * 59 + [1]), current=0)
    assert d.desired == 1
    assert "zero" in d.reason


def test_step_at_zero_fans_out_to_max_containers():
    d = decide(series([0] * 59 + [500]), current=0, max_containers=20)
    assert d.desired == 20
    assert d.panic
    assert "max_containers=20" in d.reason


def test_idle_pool_does_not_grow_on_old_load():
    # The stable window still remembers load, but nothing runs or waits now: keep what there is, start nothing.
    d = decide(series([10] * 30 + [0]), current=2)
    assert d.desired == 2
    assert "idle" in d.reason


# -- stable window -------------------------------------------------------------------------------------------


def test_stable_window_averages_load():
    # Soft target of 5 inputs a container, hard cap 10: 15 running fit in 2 containers, so the averages decide.
    kw = dict(target_inputs=5, max_inputs=10)
    history = series([5] * 50 + [15] * 10, queued=False)
    d = decide(history, current=2, **kw)
    assert d.stable_load == pytest.approx((50 * 5 + 10 * 15) / 60)
    assert d.desired == 2 and not d.panic  # ceil(6.67 / 5)
    d = decide(series([15] * 60, queued=False), current=2, **kw)
    assert d.desired == 3


def test_stable_window_forgets_samples_older_than_the_window():
    history = series([100] * 10 + [2] * 60, queued=False)
    d = decide(history, current=2, target_inputs=1, max_inputs=100)
    assert d.stable_load == pytest.approx(2.0)
    assert d.desired == 2


def test_stable_average_holds_containers_after_load_falls():
    # Load fell from 8 to 4 half a window ago: the stable average still wants more than 4 (no flapping).
    history = series([8] * 30 + [4] * 30, queued=False)
    d = decide(history, current=8, target_inputs=1, max_inputs=100)
    assert 4 < d.desired < 8 and not d.panic


def test_inputs_beyond_the_hard_cap_need_containers_now():
    # 11 inputs, 4 a container at most: 3 containers now, whatever the (low) averages say.
    history = series([0] * 59) + [Sample(59, 4, 7)]
    d = decide(history, current=1, target_inputs=2, max_inputs=4)
    assert d.desired >= 3


# -- panic ---------------------------------------------------------------------------------------------------


def test_panic_on_a_step_scales_up_to_the_panic_window():
    kw = dict(target_inputs=1, max_inputs=100)
    history = series([2] * 54 + [10] * 6, queued=False)
    d = decide(history, current=2, **kw)
    assert d.panic
    assert d.desired == 10  # the stable window alone would say 3
    assert d.panic_until == pytest.approx(history[-1].t + 60)


def test_no_panic_below_twice_the_current_capacity():
    history = series([2] * 54 + [3] * 6, queued=False)
    d = decide(history, current=2, target_inputs=1, max_inputs=100)
    assert not d.panic


def test_panic_never_scales_down_and_ends_a_stable_window_after_the_step():
    kw = dict(target_inputs=1, max_inputs=100)
    history = series([2] * 54 + [10] * 6, queued=False)
    d = decide(history, current=2, **kw)
    assert d.panic and d.desired == 10
    # Load drops right back; the pool now has 10 containers.
    t = history[-1].t
    for i in range(1, 60):
        history.append(Sample(t + i, 2, 0))
        d = decide(history, current=10, prev=d, **kw)
        assert d.panic, f"left panic early at +{i}s"
        assert d.desired == 10, f"scaled down in panic at +{i}s"
    history.append(Sample(t + 61, 2, 0))
    d = decide(history, current=10, prev=d, **kw)
    assert not d.panic
    assert d.desired == 2


def test_panic_victims_are_none():
    d = Decision(desired=0, current=3, reason="", panic_until=100.0)
    assert scale_down_victims([10.0, 10.0, 10.0], decision=d, window_s=2) == []


# -- buffer --------------------------------------------------------------------------------------------------


def test_buffer_only_while_active():
    assert decide(series([0] * 10), current=0, buffer_containers=2).desired == 0
    assert decide(series([0] * 9 + [1]), current=0, buffer_containers=2).desired == 3
    # Load just ended: the stable window saw it, so the buffer is still held (not grown).
    d = decide(series([1] * 5 + [0]), current=3, buffer_containers=2)
    assert d.desired == 3
    # A whole stable window without load: no buffer.
    assert decide(series([1] * 5 + [0] * 61), current=3, buffer_containers=2).desired == 0


# -- clamps --------------------------------------------------------------------------------------------------


def test_min_containers_kept_when_idle():
    assert decide(series([0] * 5), current=0, min_containers=2).desired == 2
    assert decide(series([0] * 5), current=5, min_containers=2).desired == 2


def test_max_containers_caps_and_capacity_clamps():
    assert decide(series([50]), max_containers=10).desired == 10
    assert decide(series([50]), capacity=8).desired == 8
    assert decide(series([0]), min_containers=4, capacity=2).desired == 2
    assert decide(series([0]), min_containers=2, max_containers=10).desired == 2


# -- measured work (Little's law) ----------------------------------------------------------------------------


def test_fast_inputs_count_by_their_work():
    # 10,000 queued inputs of 20 µs are 0.2 s of work: one container.
    d = decide(series([10_000]), avg_exec_s=20e-6)
    assert d.desired == 1
    # The same samples, read with the measurement: history taken before it was known shrinks too.
    assert decide(series([10_000] * 30), current=1, avg_exec_s=20e-6).desired == 1


def test_slow_inputs_fan_out_to_max_containers():
    assert decide(series([500]), avg_exec_s=0.3, max_containers=20).desired == 20
    assert decide(series([500]), avg_exec_s=0.5, max_containers=20).desired == 20


# -- scale-down ----------------------------------------------------------------------------------------------


def test_scale_down_only_idle_containers_after_the_window():
    d = Decision(desired=0, current=3, reason="")
    # None = busy or starting; 1.0 s idle is under the 2 s window.
    assert scale_down_victims([None, 1.0, 5.0], decision=d, window_s=2) == [2]
    assert scale_down_victims([3.0, 9.0, 5.0], decision=d, window_s=2) == [1, 2, 0]


def test_scale_down_stops_at_the_desired_count():
    d = Decision(desired=2, current=3, reason="")
    assert scale_down_victims([3.0, 9.0, 5.0], decision=d, window_s=2) == [1]
    d = Decision(desired=3, current=3, reason="")
    assert scale_down_victims([3.0, 9.0, 5.0], decision=d, window_s=2) == []


# -- back-off after failed starts ----------------------------------------------------------------------------


def test_start_backoff_doubles_and_is_capped():
    assert policy.start_backoff(1) == policy.START_BACKOFF_S
    assert policy.start_backoff(2) == 2 * policy.START_BACKOFF_S
    assert policy.start_backoff(100) == policy.MAX_START_BACKOFF_S


# -- runtime overrides ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("update, message", [
    ({"min_containers": -1}, "min_containers"),
    ({"max_containers": 0}, "max_containers"),
    ({"buffer_containers": -2}, "buffer_containers"),
    ({"scaledown_window": 1}, "scaledown_window"),
    ({"scaledown_window": 3601}, "scaledown_window"),
    ({"min_containers": 1.5}, "integer"),
    ({"min_containers": True}, "integer"),
    ({"min_containers": 5, "max_containers": 2}, "cannot be greater"),
    ({"concurrency_limit": 3}, "unknown"),
])
def test_bad_overrides_are_refused(update: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        validate_update({}, update)


def test_overrides_checked_against_current_settings():
    with pytest.raises(ValueError, match="cannot be greater"):
        validate_update({"min_containers": None, "max_containers": 2}, {"min_containers": 3})
    assert validate_update({"max_containers": 2}, {"min_containers": 2, "buffer_containers": None}) == {
        "min_containers": 2}


def _pool(**options: Any) -> Any:
    return SimpleNamespace(options=Options(**options), target_inputs=1, max_inputs=1, single_use=False, server=None,
                           tag="f", function_id="fu-1", avg_exec_s=None, queue=[], running_count=lambda: 0)


def test_pool_autoscaler_overrides_until_reset():
    scaler = PoolAutoscaler()
    pool = _pool(min_containers=1, max_containers=5)
    scaler.update(pool.options, {"min_containers": 3, "scaledown_window": 10})
    s = scaler.settings(pool)
    assert (s.min_containers, s.max_containers, s.scaledown_window) == (3, 5, 10)
    assert scaler.decide(pool, 0.0, current=0, capacity=100).desired == 3
    scaler.reset()
    assert scaler.settings(pool).min_containers == 1


def test_pool_autoscaler_events_do_not_fill_the_window():
    scaler = PoolAutoscaler()
    pool = _pool()
    scaler.decide(pool, 0.0, current=0, capacity=10)
    assert not scaler.samples
    scaler.decide(pool, 1.0, current=0, capacity=10, record=True)
    assert len(scaler.samples) == 1


def test_pool_autoscaler_events_share_a_recent_decision_unless_load_grows():
    scaler = PoolAutoscaler()
    pool = _pool()
    first = scaler.decide(pool, 10.0, current=1, capacity=10)
    assert scaler.decide(pool, 10.01, current=1, capacity=10) is first
    pool.queue = [object()] * 5  # more load: decide again at once
    grown = scaler.decide(pool, 10.02, current=1, capacity=10)
    assert grown is not first and grown.desired == 5
    # At zero, and on the tick, always afresh.
    assert scaler.decide(pool, 10.03, current=0, capacity=10) is not grown
    assert scaler.decide(pool, 10.04, current=5, capacity=10, record=True).at == 10.04


def test_panic_keeps_its_maximum_while_containers_are_still_starting():
    """A panic asked for 8; only 2 have started so far (a few start at a time); a lower sample must not take
    the count back below 8."""
    settings = ScalingSettings(scaledown_window=60, target_inputs=8, max_inputs=10**9)
    step = [Sample(float(t), 1, 0) for t in range(50)] + [Sample(50.0 + i, 64, 0) for i in range(6)]
    first = kpa_decide(step, 55.0, current=1, settings=settings, capacity=100)
    assert first.panic and first.desired == 8
    lower = [*step, Sample(56.0, 8, 0)]
    again = kpa_decide(lower, 56.0, current=2, settings=settings, capacity=100, prev=first)
    assert again.panic and again.desired == 8
