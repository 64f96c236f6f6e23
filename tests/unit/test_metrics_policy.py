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


def test_series_of_functions_gone_for_a_while_are_dropped():
    from prometheus_client import generate_latest

    from shoal._spec.definitions import FunctionDefinition
    from shoal.controlplane.core.model import AppState, Call, Input
    from shoal.controlplane.core.registry import Registry
    from shoal.controlplane.metrics import GONE_AFTER_S, Metrics

    registry = Registry()
    registry.apps["ap-1"] = AppState("ap-1", "app", "ephemeral", False)
    m = Metrics()
    m.attach(registry)
    gone = registry.add_pool("fu-gone", "ap-1", FunctionDefinition(tag="old"))
    kept = registry.add_pool("fu-kept", "ap-1", FunctionDefinition(tag="live"))
    for pool in (gone, kept):
        call = Call(f"fc-{pool.function_id}", pool, "remote", 1)
        inp = Input(call, 0, b"")
        inp.dispatched_at = inp.queued_at
        m.input_finished(pool, inp, "failure")
        m.call_started(pool, "remote")
    registry.drop_pool("fu-gone")
    m.prune(1000.0)  # first seen gone: kept for a while yet
    assert b"fu-gone" in generate_latest(m.registry)
    m.prune(1000.0 + GONE_AFTER_S)
    text = generate_latest(m.registry)
    assert b"fu-gone" not in text and "fu-gone" not in m.recent
    assert b'function_id="fu-kept"' in text and "fu-kept" in m.recent
