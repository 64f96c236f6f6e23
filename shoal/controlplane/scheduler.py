"""Schedules: `Period` (relative to when the app was deployed or started) and `Cron` (wall clock, IANA zone).

`next_fire` is pure. The loop fires each due function through the ordinary spawn path (so retries, timeouts
and logs apply), never while the previous scheduled run of that function is still going, and remembers the
last fire in the store: ticks missed while the control plane was down fire once on start, not once each.

With several control planes, each app's schedules fire at the replica that owns the app (one at a time, by
lease), which reads the last fire from the store when it takes the app over: so a tick fires once, and the
schedule keeps firing when the owner dies.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import pickle
import time
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta

from .._spec.definitions import CronSchedule, PeriodSchedule, Schedule
from .core.model import Call, Pool, new_id
from .store import schedules

if TYPE_CHECKING:
    from .core.calls import Calls
    from .core.ownership import AppOwnership
    from .core.registry import Registry
    from .store import Store

log = logging.getLogger("shoal.scheduler")
NO_ARGS = pickle.dumps(((), {}))
TICK_S = 0.25


def _period_delta(spec: PeriodSchedule, k: int) -> relativedelta:
    return relativedelta(years=k * spec.years, months=k * spec.months, weeks=k * spec.weeks, days=k * spec.days,
                         hours=k * spec.hours, minutes=k * spec.minutes, seconds=k * spec.seconds)


def next_fire(spec: Schedule, anchor: float, after: float) -> float:
    """The first fire time strictly after `after` (epoch seconds). Pure.

    Period: anchor + k·period for the smallest k ≥ 1 beyond `after` (calendar arithmetic, so `months=1`
    from Jan 31 is Feb 28/29). Cron: the next matching wall-clock time in the schedule's time zone.
    """
    if isinstance(spec, CronSchedule):
        from croniter import croniter

        zone = ZoneInfo(spec.timezone or "UTC")
        start = dt.datetime.fromtimestamp(after, zone)
        return croniter(spec.cron_string, start).get_next(dt.datetime).timestamp()
    base = dt.datetime.fromtimestamp(anchor, dt.timezone.utc)
    one = (base + _period_delta(spec, 1)).timestamp() - anchor
    k = max(1, int((after - anchor) // one) if one > 0 else 1)
    while (base + _period_delta(spec, k)).timestamp() <= after:  # exact for calendar periods too
        k += 1
    while k > 1 and (base + _period_delta(spec, k - 1)).timestamp() > after:
        k -= 1
    return (base + _period_delta(spec, k)).timestamp()


class Scheduler:
    def __init__(self, store: Store, registry: Registry, calls: Calls, ownership: AppOwnership) -> None:
        self.store = store
        self.registry = registry
        self.calls = calls
        self.ownership = ownership
        self.state: dict[str, dict[str, Any]] = {}  # function_id -> {anchor, last_fire, next, call}

    def _load(self, pool: Pool) -> dict[str, Any]:
        st = self.state.get(pool.function_id)
        if st is None:
            stored = schedules.load(self.store, pool.function_id)
            anchor, last_fire, last_call = stored if stored is not None else (time.time(), None, None)
            if stored is None:
                schedules.start(self.store, pool.function_id, anchor)
            spec = pool.definition.schedule
            assert spec is not None
            upcoming = next_fire(spec, anchor, last_fire if last_fire is not None else anchor)
            # The last scheduled run may still be going (recovered after a restart or a takeover): no overlap.
            previous = self.registry.calls.get(last_call) if last_call else None
            st = {"anchor": anchor, "last_fire": last_fire, "call": previous, "next": upcoming,
                  "missed": last_fire is not None and upcoming <= time.time()}
            self.state[pool.function_id] = st
        return st

    def forget(self, function_id: str) -> None:
        """Read the schedule's state from the store again when next needed (another replica ran it)."""
        self.state.pop(function_id, None)

    def reset(self, function_id: str) -> None:
        """A redeploy restarts a Period from now."""
        self.state.pop(function_id, None)
        schedules.reset(self.store, function_id)

    def upcoming(self, pool: Pool) -> float | None:
        return self._load(pool)["next"] if pool.definition.schedule is not None else None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.time()
            for pool in list(self.registry.pools.values()):
                if pool.definition.schedule is not None and not pool.stopped:
                    if not self.ownership.owns(pool.app_id):
                        continue  # only the app's owner fires its schedules (controlplane/replicas.py)
                    await self._maybe_fire(pool, now)

    def _say_if_failing(self, pool: Pool, st: dict[str, Any], previous: Call) -> None:
        """A schedule whose runs fail (e.g. its containers cannot import the module) says so in the app's log:
        after the first failed run, then at 10, 100, … in a row, with the last container start error."""
        status = previous.results.get(0, ("success", None))[0]
        if st.get("checked") is previous:
            return
        st["checked"] = previous
        st["failures"] = 0 if status == "success" else st.get("failures", 0) + 1
        n = st["failures"]
        app = self.registry.apps.get(pool.app_id)
        if app is None or n == 0 or str(n).strip("0") != "1":
            return
        why = f"; last container start error: {pool.last_start_error}" if pool.last_start_error else ""
        app.logs.append("", "system", f"schedule of {pool.tag} is failing: its last {n} run(s) ended with "
                                      f"{status}{why}\n")

    async def _maybe_fire(self, pool: Pool, now: float) -> None:
        st = self._load(pool)
        previous: Call | None = st["call"]
        if previous is not None and previous.state != "running":
            self._say_if_failing(pool, st, previous)  # as soon as the last run ended, not at the next fire
        if st["next"] > now and not st["missed"]:
            return
        spec = pool.definition.schedule
        assert spec is not None
        if previous is not None and previous.state == "running":
            log.info("%s: skipping a tick, the previous scheduled run %s is still going", pool.tag, previous.id)
        else:
            call, _ticket = await self.calls.create_call(pool, new_id("fc"), "spawn", NO_ARGS)
            st["call"] = call
            st["last_fire"] = now
            schedules.fired(self.store, pool.function_id, now, call.id)
            app = self.registry.apps.get(pool.app_id)
            if app is not None:
                app.logs.append("", "system", f"schedule fired {pool.tag} ({call.id})\n")
        st["missed"] = False
        st["next"] = next_fire(spec, st["anchor"], now)
