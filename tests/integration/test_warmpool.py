"""The warm pool: a started runtime per image in use, given to the next container a function needs."""

from __future__ import annotations

from shoal._client.transport import get_client

from ..conftest import wait_for


def warm_containers() -> list[dict]:
    return [c for c in get_client().call("GET", "/v1/containers")["containers"] if c["function"] == "(warm)"]




def test_next_container_comes_from_the_warm_pool(control_plane) -> None:
    import warm_app

    with warm_app.app.run(quiet=True):
        first = warm_app.probe.remote()
        assert first["secret"] == "s3" and first["minidom"]
        assert wait_for(lambda: any(c["state"] == "warm" for c in warm_containers())), warm_containers()
        warm_id = next(c["container_id"] for c in warm_containers() if c["state"] == "warm")
        second = warm_app.probe.remote()
        assert second["container"] == warm_id, "the call did not get the warm container"
        # It behaves like any container of the function: its secret, its source, its working directory.
        assert second["secret"] == "s3" and second["minidom"]
        assert second["cwd"] == first["cwd"] and second["source_dir"] == first["source_dir"]
        # And a new warm container takes its place.
        assert wait_for(lambda: any(c["state"] == "warm" and c["container_id"] != warm_id
                                    for c in warm_containers()))
    assert wait_for(lambda: not warm_containers()), "warm containers outlived the app using their image"
