"""`shoal container exec` and `shoal shell` (shoal/cli/exec_cmds.py, shoal/backends/local_exec.py): commands in a
running container's sandbox, and a shell in a new container of a function that ends with the shell."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal._client.transport import get_client
from shoal.controlplane.oci_images import debian_slim_mode

from ..conftest import APPS_DIR, PYTHON, ControlPlane, _use_home, run_cli, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="exec enters Linux namespaces")

EXEC_APP = str(APPS_DIR / "exec_app.py")


def containers() -> list[dict]:
    return get_client().call("GET", "/v1/containers")["containers"]




def _running_container(fn, exclude: tuple[str, ...] = ()) -> Iterator[dict]:
    """A container of `fn` busy with a long call; yields its `GET /v1/containers/{id}`."""
    call = fn.spawn(300)
    found: list[dict] = []

    def busy() -> bool:
        found[:] = [c for c in containers() if c["function_id"] == fn.object_id and c["running_inputs"]
                    and c["container_id"] not in exclude]
        return bool(found)

    assert wait_for(busy, 60), containers()
    yield get_client().call("GET", f"/v1/containers/{found[0]['container_id']}")
    call.cancel()


@pytest.fixture(scope="module")
def running(control_plane) -> Iterator[dict]:
    import exec_app

    with exec_app.app.run(quiet=True):
        yield from _running_container(exec_app.fn)


@pytest.fixture
def host_canary() -> Iterator[Path]:
    path = Path("/var/tmp") / f"shoal-exec-canary-{secrets.token_hex(6)}"
    path.write_text("host only")
    yield path
    path.unlink(missing_ok=True)


def exec_in(container: dict, *cmd: str, input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002
    return run_cli("container", "exec", container["container_id"], *cmd, input=input, timeout=60)


# -- shoal container exec ----------------------------------------------------------------------------------------
def test_container_description(running) -> None:
    assert running["pid"] and running["state"] == "ready" and running["backend"] == "local"
    assert running["function"] == "fn" and running["machine"]


def test_exec_runs_inside_the_sandbox(running, control_plane, host_canary) -> None:
    if not running["sandboxed"]:
        pytest.skip("the control plane runs with isolation=process")
    r = exec_in(running, "cat", "/proc/self/uid_map")
    assert r.returncode == 0, r.stderr
    inside, outside, count = r.stdout.split()
    assert inside == "0" and outside != "0" and int(count) > 0  # the container's root, unprivileged outside
    r = exec_in(running, "id", "-u")
    assert r.returncode == 0 and r.stdout.strip() == "0", r.stderr
    r = exec_in(running, "ls", "/")
    assert {"root", "tmp", "usr", "proc"} <= set(r.stdout.split()), r.stdout
    # Host files are not there: the control plane's token, a file of the host's /var/tmp.
    token = control_plane.home / "token"
    assert token.exists() and host_canary.exists()
    for path in (token, host_canary):
        r = exec_in(running, "cat", str(path))
        assert r.returncode != 0 and r.stdout == "", (path, r.stdout)
    # Its own pid namespace and hostname, its working directory, the function's environment (its secret).
    r = exec_in(running, "sh", "-c", "hostname; pwd; echo $SOME_SECRET_ENV; echo $HOME; ls /proc | grep -c '^[0-9]'")
    hostname, cwd, secret, home, nprocs = r.stdout.split()
    assert hostname == running["container_id"] and cwd == "/root" and home == "/root"
    assert secret == "exec-secret-value"
    assert int(nprocs) < 15, r.stdout  # the container's few processes, not the host's


def test_exec_streams_stdin_and_propagates_exit_codes(running) -> None:
    text = "".join(f"line {i}\n" for i in range(2000))
    r = exec_in(running, "cat", input=text)
    assert r.returncode == 0 and r.stdout == text, r.stderr
    assert exec_in(running, "--", "sh", "-c", "exit 7").returncode == 7
    r = exec_in(running, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr.strip().splitlines()[-1]) == (3, "out\n", "err")
    r = exec_in(running, "no-such-command-here")
    assert r.returncode != 0


def test_exec_with_a_pty(running) -> None:
    r = run_cli("container", "exec", "--pty", running["container_id"], "sh", "-c", "tty; exit 4", timeout=60)
    assert r.returncode == 4, r.stderr
    if running["sandboxed"]:
        assert r.stdout.strip() == "/dev/pts/0"  # a terminal of the container's own
    else:
        assert r.stdout.strip().startswith("/dev/")
    r = run_cli("container", "exec", "--pty", running["container_id"], "cat", input="typed\n", timeout=60)
    assert r.returncode == 0 and "typed" in r.stdout, (r.stdout, r.stderr)


def test_exec_leaves_the_container_running(running) -> None:
    assert exec_in(running, "sh", "-c", "sleep 30 >/dev/null 2>&1 &").returncode == 0
    current = [c for c in containers() if c["container_id"] == running["container_id"]]
    assert current and current[0]["running_inputs"] == 1


def test_exec_into_a_second_container(running) -> None:
    """A second container of the function: taken from the warm pool where one was started for its image, it got
    its secrets after it started; exec still sees them."""
    import exec_app

    wait_for(lambda: any(c["state"] == "warm" for c in containers()), 10)  # the warm pool's, when it has one
    for second in _running_container(exec_app.fn, exclude=(running["container_id"],)):
        r = exec_in(second, "sh", "-c", "echo $SOME_SECRET_ENV; hostname")
        assert r.returncode == 0 and r.stdout.split()[0] == "exec-secret-value", (r.stdout, r.stderr)
        if second["sandboxed"]:
            assert r.stdout.split()[1] == second["container_id"]


def test_exec_into_an_unknown_container() -> None:
    r = run_cli("container", "exec", "ta-00000000000000000000", "true")
    assert r.returncode == 1
    assert "ta-00000000000000000000 not found" in r.stderr


# -- shoal shell -------------------------------------------------------------------------------------------------
def _shells() -> list[dict]:
    return [c for c in containers() if c["state"] == "shell"]


def test_shell_in_a_functions_container(control_plane) -> None:
    r = run_cli("shell", f"{EXEC_APP}::fn", "--cmd",
                'echo $SOME_SECRET_ENV; python -c "import sys; print(sys.prefix)"; pwd; id -u', timeout=120)
    assert r.returncode == 0, r.stderr
    secret, prefix, cwd, uid = r.stdout.split()
    assert secret == "exec-secret-value"
    if debian_slim_mode() == "rootfs":  # the image's Python, not the host's
        assert prefix == "/usr"
    else:
        assert prefix.startswith(str(control_plane.home / "images" / "im-"))
    if "not sandboxed" not in r.stderr:
        assert (cwd, uid) == ("/root", "0")
    assert wait_for(lambda: not _shells(), 10), _shells()  # the container ended with the shell


def test_shell_exit_code_and_default_image(control_plane) -> None:
    r = run_cli("shell", "--cmd", "ls /root; exit 5", timeout=180)
    assert r.returncode == 5, r.stderr
    r = run_cli("shell", str(APPS_DIR / "exec_two_app.py"), "--cmd", "true")
    assert r.returncode == 1 and "first" in r.stderr and "second" in r.stderr
    r = run_cli("shell", str(APPS_DIR / "exec_two_app.py") + "::second", "--cmd", "ls")
    assert r.returncode == 0 and "exec_two_app.py" in r.stdout.split(), (r.stdout, r.stderr)
    assert wait_for(lambda: not _shells(), 10), _shells()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_shell_container_ends_with_the_cli(control_plane, sig) -> None:
    proc = subprocess.Popen([PYTHON, "-m", "shoal.cli", "shell", f"{EXEC_APP}::fn", "--cmd", "sleep 300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"}, start_new_session=True)
    try:
        assert wait_for(lambda: bool(_shells()), 60), proc.stderr.read1() if proc.poll() is not None else ""
        shell_pid = _shells()[0]
        os.kill(proc.pid, sig)
        try:  # read its output meanwhile: a CLI blocked on a full pipe would not exit
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints where each of its threads is
            out, err = proc.communicate()
            pytest.fail(f"the CLI did not exit after {sig!r}:\n{out.decode()}\n{err.decode()}")
        # SIGTERM: the CLI stops the app itself; SIGKILL: the control plane stops it once the session is gone.
        assert wait_for(lambda: not _shells(), 10 if sig == signal.SIGTERM else 30), (shell_pid, _shells())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- isolation=process -------------------------------------------------------------------------------------------
@pytest.fixture
def process_control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home", env={"SHOAL_ISOLATION": "process"}).start()
    _use_home(cp.home)
    yield cp
    cp.stop()
    if previous:
        _use_home(Path(previous))


def test_exec_without_a_sandbox_says_so(process_control_plane) -> None:
    import exec_process_app

    with exec_process_app.app.run(quiet=True):
        for info in _running_container(exec_process_app.fn):
            assert info["sandboxed"] is False
            r = exec_in(info, "sh", "-c", "echo $SOME_SECRET_ENV; exit 6")
            assert r.returncode == 6 and r.stdout.strip() == "exec-secret-value"
            assert "is not sandboxed" in r.stderr and "isolation=process" in r.stderr
    r = run_cli("shell", str(APPS_DIR / "exec_process_app.py"), "--cmd", "echo $SOME_SECRET_ENV; ls; exit 2")
    assert r.returncode == 2 and "is not sandboxed" in r.stderr
    secret, *files = r.stdout.split()
    assert secret == "exec-secret-value" and "exec_process_app.py" in files  # in the app's source
    assert wait_for(lambda: not _shells(), 10), _shells()
