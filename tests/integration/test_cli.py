"""The `shoal` CLI against a real control plane: `shoal run` (targets, flags, output, detach, Ctrl-C, errors),
`shoal app|container list`, `shoal app stop`, and `shoal up|status|down`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import APPS_DIR, PYTHON, ControlPlane, run_cli

pytestmark = pytest.mark.usefixtures("control_plane")

CONTAINER_LINE = r"^\[[a-z]{2}-[0-9a-f]+\] "  # how container output is marked: `[ta-1234ab] text`


def shoal_run(*args: str, cwd: Path = APPS_DIR, **kw: Any) -> subprocess.CompletedProcess:
    return run_cli("run", *args, cwd=cwd, **kw)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def apps_named(name: str) -> list[dict[str, Any]]:
    from shoal._client.transport import get_client

    return [a for a in get_client().call("GET", "/v1/apps")["apps"] if a["name"] == name]


def printed(stdout: str, text: str) -> bool:
    """`text` was printed as a whole line: container output arrives line by line, so it never splits a local
    line."""
    return re.search("^" + re.escape(text) + "$", stdout, re.M) is not None


def container_printed(stdout: str, text: str) -> bool:
    """A container's output line, marked with its container id at the start of the line."""
    return re.search(CONTAINER_LINE + re.escape(text), stdout, re.M) is not None


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- choosing what to run ----------------------------------------------------------------------------------------
def test_run_function_prints_container_output_and_result() -> None:
    proc = ok(shoal_run("cli_app.py::greet", "--name", "Bob", "--times", "2"))
    assert container_printed(proc.stdout, "greeting Bob"), proc.stdout
    assert printed(proc.stdout, "hello Bob hello Bob"), proc.stdout
    assert "must not run" not in proc.stderr  # the file's __main__ block did not run


def test_run_function_through_the_app_variable() -> None:
    proc = ok(shoal_run("cli_app.py::app.greet", "--name", "Via"))
    assert printed(proc.stdout, "hello Via"), proc.stdout


def test_run_by_module_path() -> None:
    proc = ok(shoal_run("-m", "cli_app::greet", "--name", "Mod"))
    assert printed(proc.stdout, "hello Mod"), proc.stdout


def test_run_by_absolute_path_from_another_directory(tmp_path: Path) -> None:
    proc = ok(shoal_run(str(APPS_DIR / "cli_app.py") + "::greet", "--name", "Abs", cwd=tmp_path))
    assert printed(proc.stdout, "hello Abs"), proc.stdout


def test_ambiguous_ref_lists_the_choices_without_a_traceback() -> None:
    proc = shoal_run("cli_app.py")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("main", "raw", "greet", "count_up"):
        assert re.search(rf"\b{name} / app\.{name}\b", proc.stderr), proc.stderr
    proc = shoal_run("cli_app.py::app")
    assert proc.returncode == 1 and "several" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_name_is_an_error_listing_what_exists() -> None:
    proc = shoal_run("cli_app.py::no_such_thing")
    assert proc.returncode == 1
    assert "no_such_thing" in proc.stderr and "greet / app.greet" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_single_entrypoint_or_single_function_is_chosen(tmp_path: Path) -> None:
    (tmp_path / "cli_one_entry.py").write_text(textwrap.dedent("""
        import shoal as modal

        app = modal.App()

        @app.function()
        def double(x: int) -> int:
            return 2 * x

        @app.function()
        def unused() -> None:
            pass

        @app.local_entrypoint()
        def go(x: int = 21) -> None:
            print(f"DOUBLED {double.remote(x)}")
    """))
    (tmp_path / "cli_one_fn.py").write_text(textwrap.dedent("""
        import shoal as modal

        app = modal.App()

        @app.function()
        def triple(x: int = 5) -> int:
            return 3 * x
    """))
    proc = ok(shoal_run("cli_one_entry.py", "--x", "4", cwd=tmp_path))
    assert "DOUBLED 8" in proc.stdout.splitlines()
    proc = ok(shoal_run("cli_one_fn.py", "--x", "7", cwd=tmp_path))
    assert "21" in proc.stdout.splitlines()


def test_error_importing_the_file_shows_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "cli_broken.py").write_text("import shoal\n\nraise RuntimeError('broken at import')\n")
    proc = shoal_run("cli_broken.py", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: broken at import" in proc.stderr
    assert "cli_broken.py" in proc.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = shoal_run("nowhere.py", cwd=tmp_path)
    assert proc.returncode == 1 and "nowhere.py" in proc.stderr and "Traceback" not in proc.stderr


# -- arguments ---------------------------------------------------------------------------------------------------
def test_entrypoint_flags_are_parsed_and_typed() -> None:
    proc = ok(shoal_run("cli_app.py::main", "--name", "Ann", "--count", "3", "--ratio", "1.5", "--loud",
                        "--color", "blue", "--size", "2", "--when", "2024-01-02T03:04:05", "--max_items", "7"))
    assert printed(proc.stdout, "RESULT 'Ann' 3 1.5 True 'blue' 2 '2024-01-02T03:04:05' 7"), proc.stdout
    assert container_printed(proc.stdout, "describing Ann"), proc.stdout


def test_entrypoint_defaults_apply() -> None:
    proc = ok(shoal_run("cli_app.py::main", "--name", "Bo", "--max-items", "9"))
    assert printed(proc.stdout, "RESULT 'Bo' 2 0.5 False 'red' 1 None 9"), proc.stdout


def test_bad_or_missing_flags_are_usage_errors() -> None:
    proc = shoal_run("cli_app.py::main", "--name", "x", "--color", "green")
    assert proc.returncode == 2 and "green" in proc.stderr and "Traceback" not in proc.stderr
    proc = shoal_run("cli_app.py::main", "--name", "x", "--size", "9")
    assert proc.returncode == 2 and "--size" in proc.stderr
    proc = shoal_run("cli_app.py::main")
    assert proc.returncode == 2 and "--name" in proc.stderr
    proc = shoal_run("cli_app.py::greet", "--nope", "1")
    assert proc.returncode == 2 and "--nope" in proc.stderr


def test_var_args_entrypoint_gets_the_raw_arguments() -> None:
    proc = ok(shoal_run("cli_app.py::raw", "a", "--b", "c", "-x"))
    assert "ARGS ['a', '--b', 'c', '-x']" in proc.stdout.splitlines(), proc.stdout


def test_async_entrypoint() -> None:
    proc = ok(shoal_run("cli_app.py::amain", "--x", "4"))
    assert printed(proc.stdout, "ASYNC hello async-4"), proc.stdout


def test_generator_function_prints_each_item() -> None:
    proc = ok(shoal_run("-q", "cli_app.py::count_up", "--n", "3"))
    assert proc.stdout.splitlines() == ["item-0", "item-1", "item-2"]


def test_none_result_is_not_printed() -> None:
    proc = ok(shoal_run("-q", "cli_app.py::nothing"))
    assert proc.stdout.strip() == ""


# -- output options ----------------------------------------------------------------------------------------------
def test_quiet_hides_container_output_and_progress() -> None:
    loud = ok(shoal_run("cli_app.py::greet", "--name", "Loud"))
    assert container_printed(loud.stdout, "greeting Loud"), loud.stdout
    assert "Initialized app" in loud.stderr
    quiet = ok(shoal_run("-q", "cli_app.py::greet", "--name", "Quiet"))
    assert quiet.stdout.splitlines() == ["hello Quiet"]
    assert "greeting Quiet" not in quiet.stdout + quiet.stderr
    assert "Initialized app" not in quiet.stderr


def test_write_result(tmp_path: Path) -> None:
    out = tmp_path / "result.txt"
    ok(shoal_run("-q", "-w", str(out), "cli_app.py::greet", "--name", "File"))
    assert out.read_text() == "hello File"
    out2 = tmp_path / "entry.txt"
    ok(shoal_run("-q", "--write-result", str(out2), "cli_app.py::main", "--name", "E"))
    assert out2.read_text() == "'E' 2 0.5 False 'red' 1 None 5"


# -- app lifetime ------------------------------------------------------------------------------------------------
def test_app_is_stopped_when_run_ends() -> None:
    name = unique("cli-attached")
    ok(shoal_run("-n", name, "cli_app.py::greet"))
    apps = apps_named(name)
    assert len(apps) == 1 and apps[0]["state"] == "stopped", apps


def test_detach_leaves_the_app_running_until_app_stop() -> None:
    name = unique("cli-detach")
    proc = ok(shoal_run("-d", "-n", name, "cli_app.py::greet", "--name", "Det"))
    assert printed(proc.stdout, "hello Det"), proc.stdout
    [app] = apps_named(name)
    assert app["state"] == "running"
    app_id = app["app_id"]

    listing = ok(run_cli("app", "list"))
    row = next(line for line in listing.stdout.splitlines() if app_id in line)
    assert name in row and "running" in row
    listed = {a["app_id"]: a for a in json.loads(ok(run_cli("app", "list", "--json")).stdout)}
    assert listed[app_id]["state"] == "running" and "greet" in listed[app_id]["functions"]

    containers = json.loads(ok(run_cli("container", "list", "--json", "--app-id", app_id)).stdout)
    assert [c["function"] for c in containers] == ["greet"]
    assert ok(run_cli("container", "list")).stdout.count(containers[0]["container_id"]) == 1

    stopped = ok(run_cli("app", "stop", name))  # by name: the newest running app with that name
    assert app_id in stopped.stdout
    assert apps_named(name)[0]["state"] == "stopped"
    assert ok(run_cli("app", "stop", app_id)).stdout.count("already stopped") == 1


def test_app_stop_unknown_app_fails() -> None:
    proc = run_cli("app", "stop", unique("no-such-app"))
    assert proc.returncode == 1 and "no app" in proc.stderr


def test_ctrl_c_stops_the_app() -> None:
    name = unique("cli-sigint")
    proc = subprocess.Popen([PYTHON, "-m", "shoal.cli", "run", "-n", name, "cli_app.py::slow"], cwd=APPS_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the remote call is running in its container
            seen.append(line)
            if "sleeping now" in line:
                break
        else:
            pytest.fail("the function never started:\n" + "".join(seen))
        assert apps_named(name)[0]["state"] == "running"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Interrupted" in rest
    assert apps_named(name)[0]["state"] == "stopped"


# -- failures ----------------------------------------------------------------------------------------------------
def test_raising_function_exits_1_with_its_traceback() -> None:
    proc = shoal_run("cli_app.py::fail", "--message", "xyz")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ValueError: cli_app failed: xyz" in proc.stderr
    assert re.search(r'cli_app\.py", line \d+, in fail', proc.stderr), proc.stderr  # the remote frame


def test_raising_entrypoint_exits_1_with_its_traceback() -> None:
    name = unique("cli-crash")
    proc = shoal_run("-n", name, "cli_app.py::crash")
    assert proc.returncode == 1
    assert re.search(r'cli_app\.py", line \d+, in crash', proc.stderr), proc.stderr
    assert "ValueError: cli_app failed: from the entrypoint" in proc.stderr
    assert apps_named(name)[0]["state"] == "stopped"


# -- the control plane -------------------------------------------------------------------------------------------
def test_status_shows_the_running_server(control_plane: ControlPlane) -> None:
    proc = ok(run_cli("status"))
    assert "running" in proc.stdout and control_plane.url in proc.stdout
    assert str(control_plane.home) in proc.stdout
    data = json.loads(ok(run_cli("status", "--json")).stdout)
    assert data["running"] is True and data["url"] == control_plane.url
    assert data["pid"] == control_plane.proc.pid  # type: ignore[union-attr]


def test_up_background_status_and_down(tmp_path: Path) -> None:
    env = {"SHOAL_HOME": str(tmp_path / "home")}
    server_json = tmp_path / "home" / "server.json"
    try:
        assert run_cli("status", env=env).returncode == 1
        assert "No shoal control plane is running" in ok(run_cli("down", env=env)).stdout
        assert not server_json.exists()  # neither status nor down started one

        up = ok(run_cli("up", "--background", env=env))
        info = json.loads(server_json.read_text())
        assert info["url"] in up.stdout
        assert "already running" in ok(run_cli("up", "-d", env=env)).stdout
        assert info["url"] in ok(run_cli("status", env=env)).stdout

        assert "Stopped" in ok(run_cli("down", env=env)).stdout
        assert not server_json.exists()  # the server removes it as the last step of a clean stop
        with pytest.raises(OSError):
            urllib.request.urlopen(info["url"] + "/v1/health", timeout=5)
        status = run_cli("status", env=env)
        assert status.returncode == 1 and "not running" in status.stdout
    finally:
        if server_json.exists():
            try:
                os.kill(json.loads(server_json.read_text())["pid"], signal.SIGKILL)
            except (ProcessLookupError, ValueError, KeyError):
                pass


def test_up_foreground_runs_until_interrupted(tmp_path: Path) -> None:
    env = {**os.environ, "SHOAL_HOME": str(tmp_path / "home")}
    env.pop("SHOAL_SERVER_URL", None)
    proc = subprocess.Popen([PYTHON, "-m", "shoal.cli", "up", "--port", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ", 1)[1].split()[0]
        assert url in ok(run_cli("status", env={"SHOAL_HOME": env["SHOAL_HOME"]})).stdout
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    deadline = time.monotonic() + 10
    while (tmp_path / "home" / "server.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (tmp_path / "home" / "server.json").exists()


def test_version_and_help() -> None:
    assert ok(run_cli("--version")).stdout.startswith("shoal ")
    text = ok(run_cli("--help")).stdout
    for command in ("run", "up", "down", "status", "app", "container"):
        assert re.search(rf"^\s+{command}\s", text, re.M), text
