"""The autoscaler against a real control plane and real containers: fan-out to max_containers and back to zero,
min_containers, runtime overrides (`autoscaler.update`/`settings`, deprecated `update_autoscaler`),
get_current_stats, `shoal container stop | logs`, `shoal function autoscaler`.

No timings are asserted; deadlines are generous polls.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal._client.transport import get_client
from shoal.exception import InvalidError
from shoal.types import FunctionAutoscalerSettings, FunctionCurrentStats

from ..conftest import ControlPlane, _use_home, run_cli, wait_for

MAX_CONTAINERS = 20


@pytest.fixture(scope="module")
def autoscale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A control plane of this module's own, with room for more than 20 containers on any machine."""
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path_factory.mktemp("autoscale-home"),
                      env={"SHOAL_LOCAL_MAX_CONTAINERS": str(MAX_CONTAINERS + 8)}).start()
    _use_home(cp.home)
    import autoscale_app

    try:
        with autoscale_app.app.run(quiet=True):
            autoscale_app.home = cp.home  # type: ignore[attr-defined]
            yield autoscale_app
    finally:
        cp.stop()
        if previous:
            _use_home(Path(previous))


def containers_of(fn: object, states: tuple[str, ...] = ("starting", "ready", "draining", "stopping")) -> list[dict]:
    fid = fn.object_id  # type: ignore[attr-defined]
    return [c for c in get_client().call("GET", "/v1/containers")["containers"]
            if c["function_id"] == fid and c["state"] in states]




def test_map_fans_out_to_max_containers_and_returns_to_zero(autoscale) -> None:
    seen: list[int] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.append(len(containers_of(autoscale.slow)))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        assert list(autoscale.slow.map(range(500))) == list(range(500))
    finally:
        done.set()
        poller.join()
    assert max(seen) == MAX_CONTAINERS, f"peak {max(seen)} containers, wanted {MAX_CONTAINERS}"
    # scaledown_window=2: every container goes once idle for the window.
    assert wait_for(lambda: not containers_of(autoscale.slow)), "containers outlived the scaledown window"
    # The decisions are exposed with their inputs, and logged.
    info = get_client().call("GET", f"/v1/functions/{autoscale.slow.object_id}/autoscaler")
    decision = info["last_decision"]
    assert decision["desired"] == 0 and decision["load"] == 0
    assert {"stable_load", "panic_load", "reason", "panic", "current"} <= set(decision)
    log = (autoscale.home / "server.log").read_text()
    assert "shoal.autoscaler INFO slow" in log and "desired 20" in log


def test_min_containers_stay_warm_without_calls(autoscale) -> None:
    assert wait_for(lambda: len(containers_of(autoscale.warm, ("ready",))) == 2)
    time.sleep(4)  # twice the scaledown window, and no call
    assert len(containers_of(autoscale.warm, ("ready",))) == 2


def test_update_min_containers_starts_a_container_and_settings_reflect_it(autoscale) -> None:
    fn = autoscale.tunable
    assert fn.autoscaler.settings() == FunctionAutoscalerSettings(
        min_containers=0, max_containers=None, buffer_containers=0, scaledown_window=2)
    assert not containers_of(fn)
    fn.autoscaler.update(min_containers=1)
    assert wait_for(lambda: len(containers_of(fn, ("ready",))) == 1), "min_containers=1 started no container"
    fn.autoscaler.update(max_containers=4, buffer_containers=1, scaledown_window=3)
    assert fn.autoscaler.settings() == FunctionAutoscalerSettings(
        min_containers=1, max_containers=4, buffer_containers=1, scaledown_window=3)
    # The deprecated spelling still works and says what replaces it.
    with pytest.warns(DeprecationWarning, match=r"autoscaler\.update"):
        settings = fn.update_autoscaler(min_containers=0)
    assert settings.min_containers == 0
    assert fn.autoscaler.settings().min_containers == 0
    assert wait_for(lambda: not containers_of(fn)), "the warm container outlived min_containers=0"


def test_bad_autoscaler_updates_are_invalid(autoscale) -> None:
    fn = autoscale.limited
    with pytest.raises(InvalidError, match="scaledown_window"):
        fn.autoscaler.update(scaledown_window=1)
    with pytest.raises(InvalidError, match="min_containers"):
        fn.autoscaler.update(min_containers=-1)
    with pytest.raises(InvalidError, match="max_containers"):
        fn.autoscaler.update(max_containers=0)
    # Checked by the control plane against the settings in force (max_containers=3 from the decorator).
    with pytest.raises(InvalidError, match="cannot be greater"):
        fn.autoscaler.update(min_containers=5)
    # A raw request with nonsense gets a 4xx with a message, not a 500.
    for body in ({"min_containers": "two"}, {"scaledown_window": 99999}, {"keep_warm": 1}):
        with pytest.raises(InvalidError):
            get_client().call("POST", f"/v1/functions/{fn.object_id}/autoscaler", body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(InvalidError, match="buffer_containers"):
            fn.update_autoscaler(buffer_containers=-1)
    assert fn.autoscaler.settings().max_containers == 3


def test_current_stats_during_a_map(autoscale) -> None:
    fn = autoscale.limited
    stats: list[FunctionCurrentStats] = []
    result: list[list[int]] = []
    worker = threading.Thread(target=lambda: result.append(list(fn.map(range(40)))), daemon=True)
    worker.start()
    try:
        assert wait_for(lambda: stats.append(fn.get_current_stats()) or stats[-1].backlog > 0, timeout=30)
        assert wait_for(lambda: stats.append(fn.get_current_stats()) or stats[-1].num_total_runners > 0,
                        timeout=30)
        assert any(s.num_running_inputs > 0 for s in stats) or wait_for(
            lambda: fn.get_current_stats().num_running_inputs > 0, timeout=30)
        assert all(s.num_total_runners <= 3 and s.input_headroom >= 0 for s in stats)
    finally:
        worker.join(60)
    assert result == [list(range(40))]
    assert wait_for(lambda: fn.get_current_stats().input_headroom == len(containers_of(fn, ("ready",))))


def test_container_stop_requeues_its_input(autoscale) -> None:
    fn = autoscale.where
    call = fn.spawn(3.0)
    assert wait_for(lambda: any(c["running_inputs"] for c in containers_of(fn, ("ready",)))), "never ran"
    victim = next(c["container_id"] for c in containers_of(fn, ("ready",)) if c["running_inputs"])
    proc = run_cli("container", "stop", victim)
    assert proc.returncode == 0, proc.stderr
    assert victim in proc.stdout
    # The input runs again elsewhere and the call completes.
    assert call.get(timeout=90) != victim
    assert victim not in {c["container_id"] for c in containers_of(fn)}
    proc = run_cli("container", "stop", "ta-nonexistent")
    assert proc.returncode != 0 and "not found" in proc.stderr


def test_container_logs(autoscale) -> None:
    fn = autoscale.where
    cid = fn.remote(0.0)
    proc = run_cli("container", "logs", cid)
    assert proc.returncode == 0, proc.stderr
    assert f"where: sleeping 0.0s in {cid}" in proc.stdout
    # -f follows until the container goes (scaledown_window=2), then returns.
    proc = run_cli("container", "logs", "-f", cid, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert f"where: sleeping 0.0s in {cid}" in proc.stdout
    assert run_cli("container", "logs", "ta-nonexistent").returncode != 0


def test_function_autoscaler_cli(autoscale) -> None:
    ref = "autoscale.limited"
    proc = run_cli("function", "autoscaler", "update", ref, "--buffer-containers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "buffer_containers  1 (runtime override)" in proc.stdout
    proc = run_cli("function", "autoscaler", "settings", "autoscale/limited")
    assert proc.returncode == 0, proc.stderr
    assert "max_containers     3" in proc.stdout
    proc = run_cli("function", "autoscaler", "update", ref, "--scaledown-window", "1")
    assert proc.returncode != 0 and "scaledown_window" in proc.stderr
    assert autoscale.limited.autoscaler.settings().buffer_containers == 1
    autoscale.limited.autoscaler.update(buffer_containers=0)


def test_failed_starts_back_off_and_say_why(autoscale) -> None:
    import autoscale_broken_app as broken

    with broken.app.run(quiet=True):
        fid = broken.never.object_id

        def backing_off() -> bool:
            info = get_client().call("GET", f"/v1/functions/{fid}/autoscaler")
            return bool(info["backoff_reason"]) and info["backoff_s"] > 0

        assert wait_for(backing_off, timeout=90), "min_containers kept restarting broken containers"
        info = get_client().call("GET", f"/v1/functions/{fid}/autoscaler")
        assert "cannot start in a container" in info["backoff_reason"]
        proc = run_cli("function", "autoscaler", "settings", fid)
        assert proc.returncode == 0, proc.stderr
        assert "backing off" in proc.stdout and "cannot start in a container" in proc.stdout
    log = (autoscale.home / "server.log").read_text()
    assert "container starts failed in a row" in log
