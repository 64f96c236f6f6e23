"""Container and app lifecycle: scale-down, ephemeral apps ending with their client, environments."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

import shoal
from shoal._client.transport import get_client

from ..conftest import APPS_DIR, PYTHON, wait_for


@pytest.fixture(scope="module")
def lifecycle(control_plane):
    import lifecycle_app

    with lifecycle_app.app.run(quiet=True):
        yield lifecycle_app


def containers_of(function_name: str) -> list[dict]:
    return [c for c in get_client().call("GET", "/v1/containers")["containers"] if c["function"] == function_name]




def test_container_is_reused_then_scaled_down_after_window(lifecycle) -> None:
    assert lifecycle.quick.remote(1) == 2
    first = {c["container_id"] for c in containers_of("quick")}
    assert len(first) == 1
    assert lifecycle.quick.remote(2) == 3
    assert {c["container_id"] for c in containers_of("quick")} == first, "a warm container was not reused"
    assert wait_for(lambda: not containers_of("quick")), "idle container outlived its scaledown_window"


def test_nested_call_from_inside_a_container(lifecycle) -> None:
    assert lifecycle.nested.remote(4) == 50


def test_environment_has_secrets_and_env_but_not_the_callers(lifecycle, monkeypatch) -> None:
    env = lifecycle.environment.remote()
    assert env["GREETING"] == "hi"
    assert env["TOKEN"] == "s3cret"
    assert "SHOAL_CONTAINER_ID" in env
    # The test runner's own variables (pytest sets PYTEST_*) must not leak into containers.
    assert not [k for k in env if k.startswith("PYTEST")]


def test_serialized_function_runs_by_value(control_plane) -> None:
    app = shoal.App("serialized")
    factor = 7

    @app.function(serialized=True)
    def scale(x: int) -> int:
        return x * factor

    with app.run(quiet=True):
        assert scale.remote(6) == 42
        assert list(scale.map([1, 2])) == [7, 14]


def test_local_scope_function_needs_serialized() -> None:
    app = shoal.App()
    with pytest.raises(shoal.exception.InvalidError, match="serialized=True"):
        @app.function()
        def inner(x: int) -> int:
            return x


CLIENT = """
import sys
sys.path.insert(0, {apps!r})
import lifecycle_app
with lifecycle_app.app.run(quiet=True):
    print(lifecycle_app.app.app_id, flush=True)
    call = lifecycle_app.sleeper.spawn(300)
    sys.stdin.read()
"""


def test_ephemeral_app_stops_when_its_client_is_killed(control_plane, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(CLIENT.format(apps=str(APPS_DIR)))
    proc = subprocess.Popen([PYTHON, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=os.environ.copy(), text=True)
    try:
        app_id = proc.stdout.readline().strip()
        assert app_id.startswith("ap-"), app_id

        def app_state() -> str:
            apps = get_client().call("GET", "/v1/apps")["apps"]
            return next(a["state"] for a in apps if a["app_id"] == app_id)

        assert wait_for(lambda: any(c["app_id"] == app_id for c in
                                    get_client().call("GET", "/v1/containers")["containers"]))
        assert app_state() == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: app_state() == "stopped", timeout=30), "app outlived its killed client"
        assert wait_for(lambda: not [c for c in get_client().call("GET", "/v1/containers")["containers"]
                                     if c["app_id"] == app_id]), "containers outlived their app"
    finally:
        if proc.poll() is None:
            proc.kill()




def test_single_use_containers_serve_one_input_each(lifecycle) -> None:
    pids = [lifecycle.one_shot.remote(i) for i in range(3)]
    assert len(set(pids)) == 3
    assert len(set(lifecycle.one_shot.map(range(4)))) == 4


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_concurrent_sync_inputs_share_one_container_up_to_max_inputs(lifecycle) -> None:
    results = list(lifecycle.overlap.map([0.3] * 8))
    assert len({pid for pid, _, _ in results}) == 1
    # Clocks of one container: inputs overlapped, four at a time and never more.
    assert _max_overlap([(s, e) for _, s, e in results]) == 4


def test_concurrent_async_inputs_run_as_tasks(lifecycle) -> None:
    results = list(lifecycle.overlap_async.map([0.3] * 6))
    assert len({r[0] for r in results}) == 1
    assert _max_overlap([(s, e) for _, s, e, _ in results]) == 3
    assert len({r[3] for r in results}) == 6, "each task must see its own input id"


def test_concurrent_validates_arguments() -> None:
    with pytest.raises(shoal.exception.InvalidError, match="target_inputs"):
        shoal.concurrent(max_inputs=2, target_inputs=3)
    with pytest.raises(shoal.exception.InvalidError, match="max_inputs"):
        shoal.concurrent(max_inputs=0)


def test_import_error_in_container_reaches_the_caller(control_plane) -> None:
    import broken_app

    with broken_app.app.run(quiet=True):
        with pytest.raises(RuntimeError, match="broken at import in the container"):
            broken_app.unreachable.remote()
        # Still failing fast (not hanging) on the next call.
        with pytest.raises(RuntimeError, match="broken at import"):
            broken_app.unreachable.remote()


def test_two_concurrent_containers_run_eight_sleeping_inputs_at_once(lifecycle) -> None:
    """Issue acceptance: two `@modal.concurrent(max_inputs=4)` containers under 8 sleeping inputs finish in
    about one sleep — asserted as behaviour: all eight were running at the same moment, four per container."""
    results = list(lifecycle.overlap_two.map([1.5] * 8))
    per_container: dict[str, int] = {}
    for cid, _, _ in results:
        per_container[cid] = per_container.get(cid, 0) + 1
    assert sorted(per_container.values()) == [4, 4]
    assert _max_overlap([(s, e) for _, s, e in results]) == 8
