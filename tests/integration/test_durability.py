"""Crashes lose nothing that was acknowledged: containers dying mid-map, the control plane SIGKILLed."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from shoal.exception import ExecutionError


@pytest.fixture(scope="module")
def durable(control_plane):
    import durable_app

    with durable_app.app.run(quiet=True):
        yield durable_app


def test_container_exit_mid_map_returns_every_result_once(durable, tmp_path: Path) -> None:
    results = list(durable.crash_once.map(range(30), kwargs={"marker_dir": str(tmp_path)}))
    assert (tmp_path / "crashed").exists(), "the crash did not happen, so the test proved nothing"
    assert results == [x * 10 for x in range(30)]


def test_container_sigkilled_mid_map_returns_every_result_once(durable, tmp_path: Path) -> None:
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed:
            pids = [int(p.read_text()) for p in tmp_path.glob("pid-*") if p.read_text()]
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    t = threading.Thread(target=killer)
    t.start()
    results = list(durable.record_pid.map(range(80), kwargs={"marker_dir": str(tmp_path)}))
    t.join()
    assert killed, "no container was killed"
    assert results == [x + 1 for x in range(80)]


def test_input_that_always_crashes_fails_after_bounded_attempts(durable) -> None:
    with pytest.raises(ExecutionError, match="died"):
        durable.always_crash.remote(1)
