"""Schedules fire through the spawn path while their app runs, never overlap, and stop with the app."""

from __future__ import annotations

import time

import shoal
from shoal._client.transport import get_client


def test_period_fires_repeatedly_without_overlap_and_stops_with_the_app(control_plane) -> None:
    import schedule_app

    runs = schedule_app.runs
    runs.clear(all=True)
    with schedule_app.app.run(quiet=True):
        apps = {a["app_id"]: a for a in get_client().call("GET", "/v1/apps")["apps"]}
        next_runs = apps[schedule_app.app.app_id]["next_runs"]
        assert set(next_runs) == {"every_second", "slow_every_second"} and all(next_runs.values())
        time.sleep(5.5)
    ticks = runs.len(partition="tick")
    assert 3 <= ticks <= 7, f"Period(seconds=1) fired {ticks} times in ~5.5 s"
    events = runs.get_many(100, partition="slow", block=False)
    # Each start is followed by its end before the next start: runs never overlapped.
    kinds = [k for k, _ in events]
    assert kinds[: 2 * (len(kinds) // 2)] == ["start", "end"] * (len(kinds) // 2)
    assert 1 <= kinds.count("start") <= 3
    time.sleep(2.0)
    assert runs.len(partition="tick") == ticks, "the schedule kept firing after the app stopped"


def test_scheduled_function_can_still_be_called_directly(control_plane) -> None:
    import schedule_app

    with schedule_app.app.run(quiet=True):
        assert schedule_app.every_second.remote() is None
    assert isinstance(schedule_app.runs, shoal.Queue)


def test_ticks_missed_while_the_control_plane_was_down_fire_once(tmp_path) -> None:
    import os
    from pathlib import Path

    from ..conftest import ControlPlane, _use_home

    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home").start()
    _use_home(cp.home)
    try:
        import schedule_restart_app as m

        m.fires.clear()
        with m.app.run(detach=True, quiet=True):
            app_id = m.app.app_id
        deadline = time.monotonic() + 15
        while m.fires.len() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert m.fires.len() >= 1, "the schedule never fired"
        cp.kill()
        time.sleep(8)  # four ticks are missed
        cp.start()
        restarted = time.time()
        time.sleep(1.5)
        after = [t for t in m.fires.get_many(100, block=False) if t >= restarted - 0.1]
        # Once: the catch-up fire, plus at most the regular tick that may fall due right after it; firing each
        # missed tick would give five or more.
        assert 1 <= len(after) <= 2, f"{len(after)} fires right after the restart: {after}"
        get_client().call("POST", f"/v1/apps/{app_id}/stop", {})
    finally:
        cp.stop()
        if previous:
            _use_home(Path(previous))
