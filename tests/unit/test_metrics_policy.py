"""How a container's end is named in `shoal_container_exits_total{reason}`."""

from __future__ import annotations

from shoal.controlplane.metrics import exit_class


def test_exit_classes():
    assert exit_class("input in-x-0 timed out", "killed by SIGKILL (out of memory?)", "stopping", False) == "timeout"
    assert exit_class(None, "out of memory: OOM-killed in its cgroup (killed by SIGKILL)", "ready", False) == "oom"
    # The control plane's own kill is a stop, even though a SIGKILL's description guesses at memory.
    assert exit_class("app stopped", "killed by SIGKILL (out of memory?)", "stopping", False) == "stopped"
    assert exit_class(None, "could not be started", "starting", True) == "failed"
    assert exit_class(None, "killed by SIGSEGV", "ready", False) == "killed"
    assert exit_class(None, "exited with code 1", "ready", False) == "exited"
