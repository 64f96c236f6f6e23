"""When the machine's container limit is reached, idle containers of other functions make room."""

from __future__ import annotations

from pathlib import Path

from shoal._client.transport import get_client

from ..conftest import ControlPlane, _use_home


def test_idle_containers_are_evicted_for_a_new_function(tmp_path: Path) -> None:
    import os

    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home", env={"SHOAL_LOCAL_MAX_CONTAINERS": "2"}).start()
    _use_home(cp.home)
    try:
        import capacity_app

        with capacity_app.app.run(quiet=True):
            assert capacity_app.first.remote() == "first"
            assert capacity_app.second.remote() == "second"
            assert len(get_client().call("GET", "/v1/containers")["containers"]) == 2
            # Both slots are held by idle containers (scaledown_window is 60 s): the third must still run.
            assert capacity_app.third.remote() == "third"
            assert len(get_client().call("GET", "/v1/containers")["containers"]) <= 2
    finally:
        cp.stop()
        if previous:
            _use_home(Path(previous))
