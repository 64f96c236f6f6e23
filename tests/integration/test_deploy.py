"""Deployed apps: `shoal deploy` / `App.deploy()`, lookups by name from other processes, versions and rolling or
recreating redeploys, rollback, `shoal app info|history|logs|stop`, surviving a control-plane restart, and
schedules of deployed apps."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal._client.transport import get_client
from shoal.exception import InvalidError, NotFoundError

from ..conftest import APPS_DIR, PYTHON, ControlPlane, _use_home, run_cli, run_script

VERSIONED_APP = '''
import time

import shoal as modal

VERSION = {version}
app = modal.App({name!r})


@app.function()
def version() -> int:
    return VERSION


@app.function()
def slow_version(seconds: float) -> int:
    time.sleep(seconds)
    return VERSION
{extra}
'''

GREETER = '''

@app.cls()
class Greeter:
    who: str = modal.parameter(default="you")

    @modal.method()
    def hello(self) -> str:
        return f"hello {self.who} v{VERSION}"
'''


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def write_app(path: Path, name: str, version: int, extra: str = "") -> Path:
    path.write_text(VERSIONED_APP.format(name=name, version=version, extra=extra))
    return path


def deploy_cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return ok(run_cli("deploy", str(path), *args, cwd=path.parent))


def app_info(ref: str) -> dict[str, Any]:
    return get_client().call("GET", f"/v1/apps/{ref}/info")


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def switches_to(call: Any, expected: Any, timeout: float = 30.0) -> None:
    """After a rolling redeploy the old containers serve until a new one is ready: `call()` returns the new
    version's value soon, and then keeps returning it."""
    wait_for(lambda: call() == expected, timeout=timeout, what=f"the new version ({expected!r})")
    assert [call() for _ in range(3)] == [expected] * 3


def busy_container(ref: str, function: str) -> dict[str, Any] | None:
    return next((c for c in app_info(ref)["containers"] if c["function"] == function and c["running_inputs"]), None)


@pytest.fixture
def stop_after() -> Iterator[list[str]]:
    """Names of deployed apps to stop when the test ends."""
    names: list[str] = []
    yield names
    for name in names:
        run_cli("app", "stop", name, "-y")


# -- lookups from other processes ----------------------------------------------------------------------------------
def test_deployed_functions_and_classes_are_found_by_name_from_another_process(control_plane, stop_after,
                                                                               tmp_path: Path) -> None:
    import deploy_app

    name = unique("deploy-basic")
    stop_after.append(name)
    app = deploy_app.app.deploy(name=name)
    assert app is deploy_app.app and app.app_id.startswith("ap-")
    assert deploy_app.square.remote(3) == 9  # hydrated in the deploying process too

    script = textwrap.dedent(f"""
        import shoal as modal
        print(modal.Function.from_name({name!r}, "square").remote(7))
        print(list(modal.Function.from_name({name!r}, "count_to").remote_gen(3)))
        Adder = modal.Cls.from_name({name!r}, "Adder")
        print(Adder(base=10).add.remote(5))
        print(modal.App.lookup({name!r}).app_id)
    """)
    path = tmp_path / "lookup_script.py"
    path.write_text(script)
    proc = ok(run_script(path))
    assert proc.stdout.split("\n")[:4] == ["49", "[0, 1, 2]", "15", app.app_id]
    listed = {a["app_id"]: a for a in json.loads(ok(run_cli("app", "list", "--json")).stdout)}
    assert listed[app.app_id]["mode"] == "deployed" and listed[app.app_id]["version"] == 1
    row = next(line for line in ok(run_cli("app", "list")).stdout.splitlines() if app.app_id in line)
    assert "deployed" in row and "v1" in row


def test_function_from_name_errors(control_plane, stop_after) -> None:
    import deploy_app

    name = unique("deploy-errors")
    stop_after.append(name)
    deploy_app.app.deploy(name=name)
    missing = shoal.Function.from_name(unique("no-such-app"), "square")  # lazy: no error yet
    with pytest.raises(NotFoundError, match="no deployed or running app"):
        missing.remote(1)
    with pytest.raises(NotFoundError, match="no object 'nope'"):
        shoal.Function.from_name(name, "nope").remote(1)
    with pytest.raises(InvalidError, match="Cls.from_name"):
        shoal.Function.from_name(name, "Adder.*").remote(1)
    assert shoal.Function.from_name(name, "square", version=1).remote(2) == 4
    with pytest.raises(NotFoundError, match="version 1, not 2"):
        shoal.Function.from_name(name, "square", version=2).remote(2)
    with pytest.raises(InvalidError):
        shoal.Function.from_name(name, "square", version=0)
    assert shoal.Function.from_name(name, "square").hydrate().object_id == deploy_app.square.object_id


def test_app_lookup(control_plane, stop_after) -> None:
    import deploy_app

    name, empty = unique("deploy-lookup"), unique("deploy-empty")
    stop_after.extend([name, empty])
    deploy_app.app.deploy(name=name)
    found = shoal.App.lookup(name)
    assert found.app_id == deploy_app.app.app_id and found.name == name
    assert shoal.App.lookup(found.app_id).app_id == found.app_id  # by id
    with pytest.raises(NotFoundError):
        shoal.App.lookup(unique("no-such-app"))
    created = shoal.App.lookup(empty, create_if_missing=True)
    assert created.app_id and shoal.App.lookup(empty).app_id == created.app_id
    listed = {a["app_id"]: a for a in get_client().call("GET", "/v1/apps")["apps"]}
    assert listed[created.app_id]["mode"] == "deployed" and listed[created.app_id]["state"] == "running"
    # Deploying to it fills it in as version 1.
    deploy_app.app.deploy(name=empty)
    assert deploy_app.app.app_id == created.app_id
    assert shoal.Function.from_name(empty, "square").remote(6) == 36
    assert app_info(empty)["version"] == 1


def test_deploy_lookup_and_stop_have_aio_forms(control_plane) -> None:
    import deploy_app

    name = unique("deploy-aio")

    async def main() -> tuple[str, str | None, int]:
        app = await deploy_app.app.deploy.aio(name=name)
        found = await shoal.App.lookup.aio(name)
        result = await deploy_app.square.remote.aio(5)
        await found.stop.aio()
        return app.app_id, found.app_id, result

    app_id, found_id, result = asyncio.run(main())
    assert found_id == app_id and result == 25
    listed = {a["app_id"]: a for a in get_client().call("GET", "/v1/apps")["apps"]}
    assert listed[app_id]["state"] == "stopped"


# -- redeploys -----------------------------------------------------------------------------------------------------
def test_redeploy_with_changed_source_updates_the_app_in_place(control_plane, stop_after, tmp_path: Path) -> None:
    name = unique("deploy-versions")
    stop_after.append(name)
    path = write_app(tmp_path / "versioned.py", name, 1, GREETER)
    out = deploy_cli(path)
    assert f"Deployed app '{name}' version 1" in out.stdout
    fn = shoal.Function.from_name(name, "version")
    greeter = shoal.Cls.from_name(name, "Greeter")
    assert fn.remote() == 1 and greeter().hello.remote() == "hello you v1"
    assert greeter(who="Ann").hello.remote() == "hello Ann v1"  # a parameter set: a pool of its own
    app_id = app_info(name)["app_id"]

    write_app(path, name, 2, GREETER)
    assert f"Deployed app '{name}' version 2" in deploy_cli(path).stdout
    switches_to(fn.remote, 2)  # the same handle: the function keeps its id across versions
    switches_to(greeter().hello.remote, "hello you v2")
    switches_to(greeter(who="Ann").hello.remote, "hello Ann v2")  # parameter sets follow the new version
    assert shoal.Function.from_name(name, "version").remote() == 2
    info = app_info(name)
    assert info["app_id"] == app_id and info["version"] == 2

    history = json.loads(ok(run_cli("app", "history", name, "--json")).stdout)
    assert [v["version"] for v in history["versions"]] == [1, 2]
    assert all(v["strategy"] == "rolling" for v in history["versions"])
    shown = ok(run_cli("app", "history", name)).stdout
    assert "2 (current)" in shown and "rolling" in shown

    # A version without a function stops it; a new function gets its pool.
    path.write_text(VERSIONED_APP.format(name=name, version=3, extra="").replace(
        "def slow_version", "def renamed"))
    deploy_cli(path)
    assert shoal.Function.from_name(name, "renamed").remote(0) == 3  # a new function: only the new version
    with pytest.raises(NotFoundError):
        shoal.Function.from_name(name, "slow_version").remote(0)
    with pytest.raises(NotFoundError):
        shoal.Cls.from_name(name, "Greeter")().hello.remote()
    assert sorted(f["tag"] for f in app_info(name)["functions"]) == ["renamed", "version"]


def test_rolling_redeploy_under_steady_load_has_no_failures(control_plane, stop_after, tmp_path: Path) -> None:
    name = unique("deploy-rolling")
    stop_after.append(name)
    path = write_app(tmp_path / "versioned.py", name, 1)
    deploy_cli(path)
    fn = shoal.Function.from_name(name, "slow_version")
    assert fn.remote(0) == 1

    results: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    stop = threading.Event()

    def load(out: list[int]) -> None:
        while not stop.is_set():
            try:
                out.append(fn.remote(0.02))
            except BaseException as exc:  # noqa: BLE001 - every failure counts
                errors.append(exc)

    threads = [threading.Thread(target=load, args=(out,)) for out in results]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(len(r) >= 5 for r in results), what="the load to start")
        write_app(path, name, 2)
        deploy_cli(path)
        wait_for(lambda: all(r.count(2) >= 20 for r in results), timeout=60, what="the switch to version 2")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    for r in results:
        switch = r.index(2)
        assert set(r[:switch]) == {1} and set(r[switch:]) == {2}, r  # switched once, never back
    # The old containers are gone: they drained and stopped.
    wait_for(lambda: not any(c["superseded"] for c in app_info(name)["containers"]), timeout=30,
             what="the old containers to stop")


def test_rolling_redeploy_lets_running_inputs_finish_on_the_old_version(control_plane, stop_after,
                                                                          tmp_path: Path) -> None:
    name = unique("deploy-drain")
    stop_after.append(name)
    path = write_app(tmp_path / "versioned.py", name, 1)
    deploy_cli(path)
    fn = shoal.Function.from_name(name, "slow_version")
    call = fn.spawn(3.0)
    old = wait_for(lambda: busy_container(name, "slow_version"), what="the input to run")
    write_app(path, name, 2)
    deploy_cli(path)
    assert call.get(timeout=60) == 1  # drained: finished where it ran, not restarted
    switches_to(lambda: fn.remote(0), 2)
    wait_for(lambda: old["container_id"] not in {c["container_id"] for c in app_info(name)["containers"]},
             what="the drained container to stop")


def test_recreate_stops_old_containers_at_once(control_plane, stop_after, tmp_path: Path) -> None:
    name = unique("deploy-recreate")
    stop_after.append(name)
    path = write_app(tmp_path / "versioned.py", name, 1)
    deploy_cli(path)
    fn = shoal.Function.from_name(name, "slow_version")
    assert shoal.Function.from_name(name, "version").remote() == 1
    call = fn.spawn(30.0)
    busy = wait_for(lambda: busy_container(name, "slow_version"), what="the input to run")
    old_ids = {c["container_id"] for c in app_info(name)["containers"]}
    write_app(path, name, 2)
    started = time.monotonic()
    deploy_cli(path, "--strategy", "recreate")
    # At once: no old container serves any more (each is stopping or gone).
    states = {c["container_id"]: c["state"] for c in app_info(name)["containers"]}
    assert all(states.get(cid) in (None, "stopping") for cid in old_ids), states
    wait_for(lambda: busy["container_id"] not in {c["container_id"] for c in app_info(name)["containers"]},
             timeout=10, what="the busy old container to end")
    assert time.monotonic() - started < 10
    # Its input was not lost: it ran again on the new version (a 30 s input, so it was really cut short).
    assert fn.remote(0) == 2
    call.cancel()
    history = json.loads(ok(run_cli("app", "history", name, "--json")).stdout)
    assert [v["strategy"] for v in history["versions"]] == ["rolling", "recreate"]


def test_rollback_redeploys_an_earlier_version(control_plane, stop_after, tmp_path: Path) -> None:
    name = unique("deploy-rollback")
    stop_after.append(name)
    path = tmp_path / "versioned.py"
    fn = shoal.Function.from_name(name, "version")
    for v in (1, 2):
        write_app(path, name, v)
        deploy_cli(path)
    switches_to(fn.remote, 2)
    out = ok(run_cli("app", "rollback", name))
    assert "to version 1" in out.stdout and "now version 3" in out.stdout
    switches_to(fn.remote, 1)
    ok(run_cli("app", "rollback", name, "2", "--strategy", "recreate"))
    assert fn.remote() == 2  # recreate: no old container serves once the command returns
    history = json.loads(ok(run_cli("app", "history", name, "--json")).stdout)
    assert [(v["version"], v["rollback_of"]) for v in history["versions"]] == [(1, None), (2, None), (3, 1), (4, 2)]
    assert "rollback to v1" in ok(run_cli("app", "history", name)).stdout
    bad = run_cli("app", "rollback", name, "9")
    assert bad.returncode == 1 and "choose a version from 1 to 3" in bad.stderr


# -- CLI -----------------------------------------------------------------------------------------------------------
def test_app_info_logs_and_stop_by_name(control_plane, tmp_path: Path) -> None:
    name = unique("deploy-cli")
    out = ok(run_cli("deploy", "deploy_app.py", "--name", name, "--tag", "first", cwd=APPS_DIR))
    assert "version 1" in out.stdout
    # The deploying process has exited: a deployed app is not tied to a client session (grace: 3 s in tests).
    time.sleep(4.0)
    assert shoal.Function.from_name(name, "square").remote(12) == 144
    info = ok(run_cli("app", "info", name)).stdout
    assert "deployed" in info and "Version    1" in info and "square" in info and "Adder.*" in info
    logs = ok(run_cli("app", "logs", name)).stdout
    assert "squaring 12" in logs
    assert "first" in ok(run_cli("app", "history", name)).stdout

    follower = subprocess.Popen([PYTHON, "-m", "shoal.cli", "app", "logs", "-f", name], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        time.sleep(1.0)
        assert shoal.Function.from_name(name, "square").remote(13) == 169
        assert follower.poll() is None  # still following
        stopped = ok(run_cli("app", "stop", name, "-y"))  # by name: the deployed app
        assert name in stopped.stdout
        stdout, _ = follower.communicate(timeout=15)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert "squaring 13" in stdout and follower.returncode == 0
    assert json.loads(ok(run_cli("app", "info", name, "--json")).stdout)["state"] == "stopped"
    with pytest.raises(NotFoundError):
        shoal.Function.from_name(name, "square").remote(1)
    # Stopping is final: deploying the name again makes a new app, at version 1.
    again = ok(run_cli("deploy", "deploy_app.py", "--name", name, cwd=APPS_DIR))
    assert "version 1" in again.stdout
    ok(run_cli("app", "stop", name, "-y"))


def test_deploy_cli_errors(control_plane, tmp_path: Path) -> None:
    empty = tmp_path / "no_app.py"
    empty.write_text("x = 1\n")
    proc = run_cli("deploy", str(empty))
    assert proc.returncode == 1 and "defines no shoal.App" in proc.stderr
    proc = run_cli("deploy", "deploy_app.py::nope", cwd=APPS_DIR)
    assert proc.returncode == 1 and "is not a shoal.App" in proc.stderr
    proc = run_cli("app", "history", unique("no-such-app"))
    assert proc.returncode == 1 and "no app with id or name" in proc.stderr
    with pytest.raises(InvalidError, match="strategy"):
        shoal.App("x").deploy(strategy="blue-green")
    with pytest.raises(InvalidError, match="needs a name"):
        shoal.App().deploy()


# -- durability and schedules --------------------------------------------------------------------------------------
def test_deployed_app_survives_a_control_plane_sigkill(tmp_path: Path) -> None:
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home").start()
    _use_home(cp.home)
    try:
        name = unique("deploy-durable")
        path = write_app(tmp_path / "versioned.py", name, 1)
        deploy_cli(path)
        fn = shoal.Function.from_name(name, "version")
        assert fn.remote() == 1
        app_id = app_info(name)["app_id"]
        cp.kill()
        cp.start()
        assert fn.remote() == 1  # the same handle, after the restart
        assert shoal.Function.from_name(name, "version").remote() == 1
        info = app_info(name)
        assert info["app_id"] == app_id and info["state"] == "running" and info["version"] == 1
        # Versions survive too: the next deploy is version 2 of the same app, and it rolls.
        write_app(path, name, 2)
        deploy_cli(path)
        switches_to(fn.remote, 2)
        assert app_info(name)["version"] == 2
        cp.kill()
        cp.start()
        assert fn.remote() == 2
        assert [v["version"] for v in get_client().call("GET", f"/v1/apps/{name}/history")["versions"]] == [1, 2]
        ok(run_cli("app", "stop", name, "-y"))
    finally:
        cp.stop()
        if previous:
            _use_home(Path(previous))


def test_deployed_schedule_fires_every_period_and_stops_with_the_app(control_plane) -> None:
    name = unique("deploy-schedule")
    fires = shoal.Queue.from_name("deploy-schedule-fires", create_if_missing=True)
    fires.clear(all=True)
    deployed_at = time.time()
    ok(run_cli("deploy", "deploy_schedule_app.py", "--name", name, cwd=APPS_DIR))
    try:
        info = app_info(name)
        assert info["functions"][0]["next_run"] > deployed_at
        time.sleep(6.5)
        n = fires.len()
        assert 2 <= n <= 5, f"Period(seconds=2) fired {n} times in ~6 s"
    finally:
        ok(run_cli("app", "stop", name, "-y"))
    after_stop = fires.len()
    time.sleep(3.0)
    assert fires.len() == after_stop, "the schedule kept firing after `shoal app stop`"
