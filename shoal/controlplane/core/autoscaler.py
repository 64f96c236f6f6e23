"""Per-pool autoscaler state: load samples, the last decision (panic mode lives in it), runtime overrides
(`Function.autoscaler.update`) and the back-off after failed starts.

The decisions themselves are `policy.kpa_decide` (pure, unit-tested); the dispatcher samples every pool once a
second, asks for a decision on every event that may need a container, and applies it. Decisions are logged
(logger "shoal.autoscaler", INFO) with their inputs whenever the desired count or the panic mode changes.
"""

from __future__ import annotations

import collections
import logging
import math
from typing import Any

from ..._spec.definitions import Options, ServerConfig
from ..._spec.limits import AUTOSCALER_BOUNDS
from .. import policy
from ..policy import Decision, Sample, ScalingSettings

log = logging.getLogger("shoal.autoscaler")

# Events closer together than this share one decision (the once-a-second tick always decides afresh).
EVENT_REUSE_S = 0.05
FIELDS = ("min_containers", "max_containers", "buffer_containers", "scaledown_window")
SERVER_FIELDS = ("target_concurrency", "scaleup_window")  # a Server's knobs (server definition), also updatable
UNBOUNDED = 1e9  # a Server without target_concurrency: one container while it has requests (no autoscaling)


def validate_update(current: dict[str, Any], update: dict[str, Any], server: bool = False) -> dict[str, Any]:
    """The non-None values of an `autoscaler.update(...)`, checked like the decorator checks them (and against
    the settings they will be merged into). Raises ValueError with a message naming the parameter."""
    fields = FIELDS + SERVER_FIELDS if server else FIELDS
    unknown = sorted(set(update) - set(fields))
    if unknown:
        raise ValueError(f"unknown autoscaler setting(s): {', '.join(unknown)}; expected {', '.join(fields)}")
    clean: dict[str, Any] = {}
    for name, value in update.items():
        if value is None:
            continue
        if name in SERVER_FIELDS:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (
                    name == "scaleup_window" and value <= 0):
                raise ValueError(f"`{name}` must be a {'positive' if name == 'scaleup_window' else 'non-negative'} "
                                 f"number, got {value!r}")
            clean[name] = value
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"`{name}` must be an integer, got {value!r}")
        lo, hi = AUTOSCALER_BOUNDS[name]
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"`{name}` must be {bound}, got {value}")
        clean[name] = value
    merged = {**current, **clean}
    lo, hi = merged.get("min_containers"), merged.get("max_containers")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"`min_containers` ({lo}) cannot be greater than `max_containers` ({hi})")
    return clean


class PoolAutoscaler:
    """The autoscaler's memory of one pool."""

    def __init__(self) -> None:
        window = int(math.ceil(policy.STABLE_WINDOW_S / policy.SAMPLE_INTERVAL_S)) + 1
        self.samples: collections.deque[Sample] = collections.deque(maxlen=window)
        self.last: Decision | None = None
        self.overrides: dict[str, int] = {}
        self.backoff_until = 0.0
        self.backoffs = 0  # runs of MAX_START_FAILURES failed starts since the last container became ready
        self.backoff_reason: str | None = None
        self._logged: tuple[int, bool] = (0, False)  # an idle pool says nothing until it wants containers
        self._last_inputs = 0  # running + queued when the last decision was made

    # -- settings --------------------------------------------------------------------------------------------
    def effective(self, options: Options) -> dict[str, Any]:
        """The four knobs as they apply now: the decorator's, replaced by runtime overrides."""
        return {k: self.overrides.get(k, getattr(options, k)) for k in FIELDS}

    def server_knobs(self, server: ServerConfig | None) -> dict[str, Any]:
        """A Server's target_concurrency and scaleup_window as they apply now."""
        return {k: self.overrides.get(k, getattr(server, k, None)) for k in SERVER_FIELDS}

    def min_containers(self, options: Options) -> int:
        return int(self.effective(options)["min_containers"] or 0)

    def settings(self, pool: Any) -> ScalingSettings:
        eff = self.effective(pool.options)
        target, max_inputs, scaleup = float(pool.target_inputs), 1 if pool.single_use else pool.max_inputs, None
        if pool.server is not None:
            # Load is requests in flight; max_concurrency overflow is answered 429, it never asks for containers.
            knobs = self.server_knobs(pool.server)
            target = float(knobs["target_concurrency"] or UNBOUNDED)
            max_inputs, scaleup = int(UNBOUNDED), knobs["scaleup_window"]
        return ScalingSettings(
            min_containers=int(eff["min_containers"] or 0),
            max_containers=eff["max_containers"],
            buffer_containers=int(eff["buffer_containers"] or 0),
            scaledown_window=float(eff["scaledown_window"] or policy.DEFAULT_SCALEDOWN_WINDOW_S),
            target_inputs=target,
            max_inputs=max_inputs,
            scaleup_window=float(scaleup) if scaleup else None,
        )

    def update(self, options: Options, values: dict[str, Any], server: bool = False) -> dict[str, Any]:
        """Apply runtime overrides (kept until the app is redeployed); raises ValueError on bad values."""
        clean = validate_update(self.effective(options), values, server)
        self.overrides.update(clean)
        return clean

    def reset(self) -> None:
        """The app was redeployed: its decorator settings apply again."""
        self.overrides.clear()
        self.backoff_until = 0.0
        self.backoffs = 0
        self.backoff_reason = None

    # -- start failures --------------------------------------------------------------------------------------
    def start_failed(self, now: float, reason: str | None) -> float:
        """MAX_START_FAILURES starts failed in a row: pause warm-up starts; returns the pause in seconds."""
        self.backoffs += 1
        pause = policy.start_backoff(self.backoffs)
        self.backoff_until = now + pause
        self.backoff_reason = reason
        return pause

    def started(self) -> None:
        self.backoffs = 0
        self.backoff_until = 0.0
        self.backoff_reason = None

    # -- decisions -------------------------------------------------------------------------------------------
    def decide(self, pool: Any, now: float, *, current: int, capacity: int, record: bool = False) -> Decision:
        """A decision for the pool's load now. `record=True` (the once-a-second tick) keeps the sample in the
        windows; otherwise (an event: inputs arrived, outputs came back) the load now is only considered, and a
        decision under EVENT_REUSE_S old is reused if the load has not grown since (fast maps have hundreds of
        events a second), except at zero."""
        sample = Sample(now, pool.running_count(), len(pool.queue))
        last = self.last
        if (not record and current and last is not None and 0 <= now - last.at < EVENT_REUSE_S
                and sample.running + sample.queued <= self._last_inputs):
            return last
        self._last_inputs = sample.running + sample.queued
        if record:
            self.samples.append(sample)
            samples: Any = self.samples
        else:
            samples = [*self.samples, sample]
        decision = policy.kpa_decide(samples, now, current=current, settings=self.settings(pool),
                                     capacity=capacity, avg_exec_s=pool.avg_exec_s, prev=self.last)
        self.last = decision
        key = (decision.desired, decision.panic)
        if key != self._logged:
            self._logged = key
            log.info("%s (%s): desired %d, current %d; load %.2f (running %d, queued %d), stable avg %.2f, "
                     "panic avg %.2f, avg exec %s; %s", pool.tag, pool.function_id, decision.desired, current,
                     decision.load, sample.running, sample.queued, decision.stable_load, decision.panic_load,
                     "-" if pool.avg_exec_s is None else f"{pool.avg_exec_s * 1000:.3f}ms", decision.reason)
        return decision

    def describe(self, pool: Any, now: float) -> dict[str, Any]:
        """What GET /v1/functions/{id}/autoscaler shows."""
        eff = self.effective(pool.options)
        d = self.last
        stable_w, panic_w = policy.windows(float(eff["scaledown_window"] or policy.DEFAULT_SCALEDOWN_WINDOW_S))
        scaleup = self.settings(pool).scaleup_window
        if scaleup:
            panic_w = min(stable_w, scaleup)
        return {
            "settings": {
                "min_containers": int(eff["min_containers"] or 0),
                "max_containers": eff["max_containers"],
                "buffer_containers": int(eff["buffer_containers"] or 0),
                "scaledown_window": eff["scaledown_window"] or int(policy.DEFAULT_SCALEDOWN_WINDOW_S),
                **(self.server_knobs(pool.server) if pool.server is not None else {}),
            },
            "overrides": dict(self.overrides),
            "target_inputs": pool.target_inputs,
            "max_inputs": pool.max_inputs,
            "stable_window_s": stable_w,
            "panic_window_s": panic_w,
            "backoff_s": max(0.0, self.backoff_until - now),
            "backoff_reason": self.backoff_reason if self.backoff_until > now else None,
            "last_decision": None if d is None else {
                "desired": d.desired, "current": d.current, "panic": d.panic, "reason": d.reason,
                "load": d.load, "stable_load": d.stable_load, "panic_load": d.panic_load,
                "age_s": max(0.0, now - d.at),
            },
        }
