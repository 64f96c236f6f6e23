"""The control plane SIGKILLed and restarted: acknowledged calls still finish and results stay readable."""

from __future__ import annotations

import time
from pathlib import Path

import shoal

from ..conftest import ControlPlane, run_script


def test_spawn_survives_control_plane_sigkill(private_control_plane: ControlPlane, tmp_path: Path) -> None:
    import restart_app

    with restart_app.app.run(quiet=True):
        call = restart_app.slow_echo.spawn("a", 1.5)
        finished = restart_app.slow_echo.spawn("b", 0.0)
        assert finished.get(timeout=30) == "done b"
        time.sleep(0.3)  # the slow one is running in a container now
        private_control_plane.kill()
        private_control_plane.start()
        # The same call, looked up by id, is re-run by the restarted control plane.
        assert shoal.FunctionCall.from_id(call.object_id).get(timeout=60) == "done a"
        # A result finished before the crash is still there, also from another process.
        script = tmp_path / "get_result.py"
        script.write_text(
            "import sys, shoal\n"
            "print(shoal.FunctionCall.from_id(sys.argv[1]).get(timeout=30))\n"
        )
        out = run_script(script, finished.object_id)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "done b"
