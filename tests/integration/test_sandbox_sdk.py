"""`shoal.Sandbox` as Modal programs use it, against real sandboxes on the session's control plane: the process and
its streams, execs, timeouts and termination, names and tags, files, tunnels, readiness, the async forms, and
untrusted code that must not reach the host or other sandboxes."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal as modal
from shoal.controlplane.oci_images import debian_slim_mode
from shoal.exception import AlreadyExistsError, InvalidError, NotFoundError, SandboxTerminatedError, SandboxTimeoutError
from shoal.stream_type import StreamType

from ..conftest import ControlPlane, _use_home, run_cli, run_script, wait_for
from .rootfs_images import rootfs_tars  # noqa: F401 - a fixture (the registry's images)
from .test_oci_images import reg  # noqa: F401 - a fixture: a registry on loopback with test images


@pytest.fixture
def app(control_plane: ControlPlane) -> modal.App:
    return modal.App.lookup(f"sbsdk-{secrets.token_hex(4)}", create_if_missing=True)


def test_command_streams_lines_as_written_and_exit_code(app: modal.App) -> None:
    sb = modal.Sandbox.create("bash", "-c", "for i in 1 2 3; do echo line $i; sleep 0.05; done; echo oops >&2; exit 3",
                              app=app)
    assert sb.object_id.startswith("sb-") and sb.returncode is None
    assert list(sb.stdout) == ["line 1\n", "line 2\n", "line 3\n"]
    assert sb.stderr.read() == "oops\n"
    sb.wait()
    assert sb.returncode == 3 and sb.poll() == 3


def test_stateful_repl_over_stdin_and_stdout(app: modal.App) -> None:
    repl = ("import sys\nenv = {}\nfor line in sys.stdin:\n    exec(line, env)\n    print(env.get('x'), flush=True)\n")
    sb = modal.Sandbox.create("python3", "-u", "-c", repl, app=app)
    lines = iter(sb.stdout)
    for statement, expected in (("x = 1", "1"), ("x = x + 41", "42"), ("x = str(x) * 2", "4242")):
        sb.stdin.write(statement + "\n")
        sb.stdin.drain()
        assert next(lines) == expected + "\n"
    sb.stdin.write_eof()
    sb.stdin.drain()
    sb.wait()
    assert sb.returncode == 0


def test_exec_streams_stdin_env_secrets_workdir_and_binary_output(app: modal.App) -> None:
    sb = modal.Sandbox.create(app=app, workdir="/tmp")
    p = sb.exec("sh", "-c", 'echo "$GREETING $TOKEN $(pwd)"', env={"GREETING": "hi"},
                secrets=[modal.Secret.from_dict({"TOKEN": "t0k"})], workdir="/usr")
    assert p.stdout.read() == "hi t0k /usr\n" and p.wait() == 0 and p.returncode == 0
    cat = sb.exec("cat")
    cat.stdin.write(b"ab")
    cat.stdin.write("c\n")
    cat.stdin.drain()
    assert next(iter(cat.stdout)) == "abc\n"
    cat.stdin.write_eof()
    cat.stdin.drain()
    assert cat.wait() == 0
    raw = sb.exec("printf", "\\000\\377", text=False)
    assert raw.stdout.read() == b"\x00\xff"
    tty = sb.exec("tty", pty=True)
    assert tty.stdout.read().startswith("/dev/pts/") and tty.wait() == 0
    quiet = sb.exec("sh", "-c", "echo hidden; exit 4", stdout=StreamType.DEVNULL)
    assert quiet.wait() == 4 and quiet.stdout.read() == ""
    sb.terminate()


def test_many_concurrent_execs(app: modal.App) -> None:
    sb = modal.Sandbox.create(app=app)
    procs = [sb.exec("sh", "-c", f"sleep 0.2; echo {i}") for i in range(8)]
    assert [p.stdout.read() for p in procs] == [f"{i}\n" for i in range(8)]
    assert [p.wait() for p in procs] == [0] * 8
    sb.terminate()


def test_a_stuck_exec_is_killed_by_its_timeout_and_the_sandbox_goes_on(app: modal.App) -> None:
    sb = modal.Sandbox.create(app=app)
    stuck = sb.exec("sleep", "600", timeout=1)
    assert stuck.wait() != 0
    assert sb.poll() is None and sb.exec("echo", "alive").stdout.read() == "alive\n"
    sb.terminate()


def test_timeout_ends_the_sandbox_with_sandbox_timeout_error(app: modal.App) -> None:
    sb = modal.Sandbox.create("sleep", "600", app=app, timeout=1)
    with pytest.raises(SandboxTimeoutError):
        sb.wait()
    assert sb.returncode == 124
    idle = modal.Sandbox.create(app=app, idle_timeout=1)
    idle.wait(raise_on_termination=False)
    assert idle.returncode == 124


def test_terminate_ends_it_with_sandbox_terminated_error(app: modal.App) -> None:
    sb = modal.Sandbox.create("sleep", "600", app=app)
    assert sb.terminate() is None
    with pytest.raises(SandboxTerminatedError):
        sb.wait()
    assert sb.returncode == 137
    other = modal.Sandbox.create("sleep", "600", app=app)
    assert other.terminate(wait=True) == 137


def test_names_tags_list_from_id_and_from_name(app: modal.App) -> None:
    sb = modal.Sandbox.create(app=app, name="worker-1", tags={"team": "a"})
    with pytest.raises(AlreadyExistsError):
        modal.Sandbox.create(app=app, name="worker-1")
    other = modal.Sandbox.create(app=app, tags={"team": "b"})
    assert modal.Sandbox.from_name(app.name, "worker-1").object_id == sb.object_id
    with pytest.raises(NotFoundError):
        modal.Sandbox.from_name(app.name, "nobody")
    assert [s.object_id for s in modal.Sandbox.list(app_id=app.app_id, tags={"team": "a"})] == [sb.object_id]
    assert {s.object_id for s in modal.Sandbox.list(app_id=app.app_id)} >= {sb.object_id, other.object_id}
    other.set_tags({"team": "a", "role": "x"})
    assert other.get_tags() == {"team": "a", "role": "x"}
    assert {s.object_id for s in modal.Sandbox.list(app_id=app.app_id, tags={"team": "a"})} == {
        sb.object_id, other.object_id}
    again = modal.Sandbox.from_id(sb.object_id)
    assert again.exec("echo", "same").stdout.read() == "same\n"
    sb.terminate(wait=True)
    assert modal.Sandbox.from_id(sb.object_id).returncode == 137
    other.terminate()
    with pytest.raises(NotFoundError):
        modal.Sandbox.from_id("sb-doesnotexist")


def test_filesystem_and_open(app: modal.App, tmp_path: Path) -> None:
    sb = modal.Sandbox.create(app=app)
    fs = sb.filesystem
    fs.write_text("hello\n", "/tmp/work/a.txt")  # parents are created
    fs.write_bytes(bytes(range(256)), "/tmp/work/b.bin")
    assert fs.read_text("/tmp/work/a.txt") == "hello\n" and fs.read_bytes("/tmp/work/b.bin") == bytes(range(256))
    assert sorted(e.path for e in fs.list_files("/tmp/work")) == ["a.txt", "b.bin"]
    assert fs.stat("/tmp/work/b.bin").size == 256
    fs.make_directory("/tmp/work/sub/deeper")
    assert fs.stat("/tmp/work/sub").is_dir
    local = tmp_path / "in.txt"
    local.write_text("from the host\n")
    fs.copy_from_local(local, "/tmp/work/in.txt")
    assert sb.exec("cat", "/tmp/work/in.txt").stdout.read() == "from the host\n"
    fs.copy_to_local("/tmp/work/b.bin", tmp_path / "out" / "b.bin")
    assert (tmp_path / "out" / "b.bin").read_bytes() == bytes(range(256))
    with pytest.raises(FileNotFoundError):
        fs.read_text("/tmp/work/missing")
    fs.remove("/tmp/work", recursive=True)
    with pytest.raises(FileNotFoundError):
        fs.stat("/tmp/work")
    with sb.open("/tmp/notes.txt", "w") as f:
        f.write("one\n")
        f.write("two\n")
    with sb.open("/tmp/notes.txt", "a") as f:
        f.write("three\n")
    with sb.open("/tmp/notes.txt") as f:
        assert f.readline() == "one\n" and f.read() == "two\nthree\n"
    with pytest.raises(InvalidError):
        fs.read_text("relative/path")
    sb.terminate()


def test_volume_mounted_and_reloaded(app: modal.App, tmp_path: Path) -> None:
    vol = modal.Volume.from_name(f"sbvol-{secrets.token_hex(4)}", create_if_missing=True)
    first = tmp_path / "first.txt"
    first.write_text("v1\n")
    with vol.batch_upload() as batch:
        batch.put_file(first, "/first.txt")
    sb = modal.Sandbox.create(app=app, volumes={"/data": vol})
    assert sb.exec("cat", "/data/first.txt").stdout.read() == "v1\n"
    later = tmp_path / "later.txt"
    later.write_text("v2\n")
    with vol.batch_upload() as batch:
        batch.put_file(later, "/later.txt")
    assert sb.exec("cat", "/data/later.txt").wait() != 0  # the state it was started with
    sb.reload_volumes()
    assert sb.exec("cat", "/data/later.txt").stdout.read() == "v2\n"
    ro = modal.Sandbox.create(app=app, volumes={"/data": vol.read_only()})
    assert ro.exec("sh", "-c", "echo x > /data/new.txt").wait() != 0
    sb.terminate()
    ro.terminate()


def test_tunnel_url_reaches_a_server_in_the_sandbox_and_readiness(app: modal.App) -> None:
    sb = modal.Sandbox.create("python3", "-m", "http.server", "8000", "--directory", "/tmp", app=app,
                              encrypted_ports=[8000], readiness_probe=modal.Probe.with_tcp(8000))
    sb.wait_until_ready(timeout=60)
    sb.filesystem.write_text("through the tunnel\n", "/tmp/hello.txt")
    tunnel = sb.tunnels()[8000]
    assert isinstance(tunnel, modal.Tunnel) and tunnel.url.startswith("http")
    got: list[bytes] = []

    def fetch() -> bool:
        try:
            with urllib.request.urlopen(tunnel.url + "/hello.txt", timeout=5) as resp:
                got.append(resp.read())
            return True
        except OSError:
            return False

    assert wait_for(fetch, 30)
    assert got[-1] == b"through the tunnel\n"
    sb.terminate()


def test_a_pool_of_sandboxes_behind_a_queue(app: modal.App) -> None:
    with modal.Queue.ephemeral() as pool:
        started = [modal.Sandbox.create("python3", "-m", "http.server", "8000", "--directory", "/tmp", app=app,
                                        encrypted_ports=[8000], readiness_probe=modal.Probe.with_tcp(8000))
                   for _ in range(2)]
        for sb in started:
            sb.wait_until_ready(timeout=60)
            sb.filesystem.write_text(sb.object_id, "/tmp/id.txt")
            pool.put(sb)
        served = []
        for _ in range(2):
            sb = pool.get(timeout=10)
            with urllib.request.urlopen(sb.tunnels()[8000].url + "/id.txt", timeout=10) as resp:
                served.append((sb.object_id, resp.read().decode()))
        assert sorted(served) == sorted((sb.object_id, sb.object_id) for sb in started)
    for sb in started:
        sb.terminate()


def test_wait_until_ready_with_an_exec_probe(app: modal.App) -> None:
    sb = modal.Sandbox.create("sh", "-c", "sleep 1; touch /tmp/ready; sleep 600", app=app,
                              readiness_probe=modal.Probe.with_exec("test", "-f", "/tmp/ready", interval_ms=50))
    sb.wait_until_ready(timeout=60)
    assert sb.exec("test", "-f", "/tmp/ready").wait() == 0
    sb.terminate()


def test_async_forms(app: modal.App) -> None:
    async def main() -> tuple[list[str], int, str]:
        sb = await modal.Sandbox.create.aio("sh", "-c", "echo a; echo b", app=app)
        lines = [line async for line in sb.stdout]
        await sb.wait.aio()
        sb2 = await modal.Sandbox.create.aio(app=app)
        p = await sb2.exec.aio("cat")
        p.stdin.write("async\n")
        p.stdin.write_eof()
        await p.stdin.drain.aio()
        out = await p.stdout.read.aio()
        await p.wait.aio()
        await sb2.terminate.aio()
        return lines, sb.returncode, out

    assert asyncio.run(main()) == (["a\n", "b\n"], 0, "async\n")


SNAPSHOT_APP = """
import shoal as modal

app = modal.App("sandbox-snapshot-fn", image=modal.Image.from_id("{image_id}"))


@app.function()
def read() -> str:
    return open("/etc/from-sandbox").read()


if __name__ == "__main__":
    with app.run():
        print("RESULT", read.remote())
"""


def test_snapshot_filesystem_is_an_image_for_sandboxes_and_functions(app: modal.App, reg: str,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    sb = modal.Sandbox.create(app=app, image=modal.Image.from_registry(f"{reg}/test/python:v1"))
    sb.filesystem.write_text("made in a sandbox\n", "/etc/from-sandbox")
    image = sb.snapshot_filesystem()
    sb.filesystem.write_text("later\n", "/etc/from-sandbox")
    again = modal.Sandbox.create("cat", "/etc/from-sandbox", app=app, image=image)
    assert again.stdout.read() == "made in a sandbox\n"
    script = tmp_path / "snapshot_fn.py"
    script.write_text(SNAPSHOT_APP.format(image_id=image.object_id))
    proc = run_script(script, timeout=300)
    assert "RESULT made in a sandbox" in proc.stdout, proc.stdout + proc.stderr
    sb.terminate()
    # Build steps on the snapshot are built on it.
    extended = modal.Image.from_id(image.object_id).run_commands(
        "cp /etc/from-sandbox /etc/copied", "echo step > /etc/step").env({"EXTENDED": "yes"})
    more = modal.Sandbox.create("sh", "-c", 'cat /etc/copied /etc/step; echo "$EXTENDED"', app=app, image=extended)
    assert more.stdout.read() == "made in a sandbox\nstep\nyes\n"
    plain = modal.Sandbox.create(app=app)
    if debian_slim_mode() == "rootfs":  # debian_slim is a root filesystem here: it snapshots and extends as any
        assert plain.snapshot_filesystem().object_id.startswith("im-")
        plain.terminate()
        on_slim = modal.Sandbox.create("cat", "/etc/step", app=app, image=modal.Image.from_id(
            modal.Image.debian_slim().object_id).run_commands("echo on-slim > /etc/step"))
        assert on_slim.stdout.read() == "on-slim\n"
        return
    with pytest.raises(InvalidError, match="OCI image"):
        plain.snapshot_filesystem()
    plain.terminate()
    with pytest.raises(Exception, match="not an OCI image stored here"):  # a venv debian_slim cannot be a base
        modal.Sandbox.create(app=app, image=modal.Image.from_id(modal.Image.debian_slim().object_id)
                             .run_commands("true"))


def test_app_is_required_outside_a_container(control_plane: ControlPlane) -> None:
    with pytest.raises(InvalidError, match="require an App"):
        modal.Sandbox.create("true")


def test_output_is_kept_after_the_sandbox_ended(app: modal.App) -> None:
    sb = modal.Sandbox.create("sh", "-c", "echo kept", app=app)
    sb.wait()
    time.sleep(0.2)
    assert modal.Sandbox.from_id(sb.object_id).stdout.read() == "kept\n"


def test_stdout_stream_type_prints_here(app: modal.App, capfd: pytest.CaptureFixture[str]) -> None:
    sb = modal.Sandbox.create(app=app)
    p = sb.exec("sh", "-c", "echo to-out; echo to-err >&2", stdout=StreamType.STDOUT, stderr=StreamType.STDOUT)
    assert p.wait() == 0
    seen = {"out": "", "err": ""}

    def printed() -> bool:
        captured = capfd.readouterr()
        seen["out"] += captured.out
        seen["err"] += captured.err
        return "to-out" in seen["out"] and "to-err" in seen["err"]

    assert wait_for(printed, 10), seen
    assert p.stdout.read() == ""  # printed, not piped
    sb.terminate()


def test_cli_list_logs_exec_terminate(app: modal.App) -> None:
    sb = modal.Sandbox.create("sh", "-c", "echo started; sleep 600", app=app, name="cli-one", tags={"via": "cli"})
    assert next(iter(sb.stdout)) == "started\n"
    listed = run_cli("sandbox", "list", "--app-id", app.app_id, "--json")
    assert listed.returncode == 0 and sb.object_id in listed.stdout and "cli-one" in listed.stdout
    assert sb.object_id in run_cli("sandbox", "list", "--tag", "via=cli").stdout
    assert sb.object_id not in run_cli("sandbox", "list", "--tag", "via=other").stdout
    logs = run_cli("sandbox", "logs", sb.object_id)
    assert logs.returncode == 0 and logs.stdout == "started\n"
    ran = run_cli("sandbox", "exec", sb.object_id, "sh", "-c", "cat; exit 5", input="piped in\n")
    assert ran.returncode == 5 and ran.stdout == "piped in\n"
    containers = run_cli("container", "list", "--app-id", app.app_id, "--json")
    assert f'"sandbox {sb.object_id}"' in containers.stdout
    done = run_cli("sandbox", "terminate", sb.object_id)
    assert done.returncode == 0 and "return code 137" in done.stdout
    assert run_cli("sandbox", "logs", "sb-nosuchsandbox").returncode != 0


def test_state_tags_and_exit_survive_a_control_plane_restart(private_control_plane: ControlPlane) -> None:
    from shoal._client.transport import reset_client

    app = modal.App.lookup("restart-app", create_if_missing=True)
    done = modal.Sandbox.create("sh", "-c", "echo durable; exit 4", app=app, tags={"k": "v"})
    done.wait()
    running = modal.Sandbox.create("sh", "-c", "echo before; sleep 600", app=app)
    assert next(iter(running.stdout)) == "before\n"
    private_control_plane.kill()
    private_control_plane.start()
    reset_client()
    again = modal.Sandbox.from_id(done.object_id)
    assert again.returncode == 4 and again.get_tags() == {"k": "v"} and again.stdout.read() == "durable\n"
    lost = modal.Sandbox.from_id(running.object_id)
    with pytest.raises(SandboxTerminatedError, match="control plane restarted"):
        lost.wait()
    assert lost.returncode == 137 and lost.stdout.read() == "before\n"


# -- programs as Modal users write them (tests/programs/) ---------------------------------------------------------
def _shoal_run(program: str) -> list[str]:
    from .test_seed_functions import local_lines

    programs = Path(__file__).parent.parent / "programs"
    proc = run_cli("run", str(programs / program), timeout=240, cwd=programs)
    assert proc.returncode == 0, f"shoal run {program} failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return local_lines(proc.stdout)


def test_program_multi_language_code_runner(control_plane: ControlPlane) -> None:
    assert _shoal_run("sandbox_code_runner.py") == [
        "python: 285 (exit 0)", "bash: 1-2-3- (exit 0)", "perl: 4,3,2,1 (exit 0)", "awk: 1024 (exit 0)",
        "error: exit 1 bad input", "file: 2 args", "runaway killed: True sandbox alive: True",
        "from a function: (0, '42')"]


def test_program_stateful_repl_over_stdin_and_stdout(control_plane: ControlPlane) -> None:
    assert _shoal_run("sandbox_repl.py") == [
        ">>> x = 20", ">>> x + 22", "42", ">>> y = [i * x for i in range(3)]", ">>> y", "[0, 20, 40]",
        ">>> 1 / 0", "ZeroDivisionError: division by zero", ">>> len(y) + x", "23",
        ">>> import os; print(os.environ['MODAL_SANDBOX_ID'] == os.environ['SHOAL_SANDBOX_ID'])", "True",
        "found by name: True", "exit: 0"]


# -- untrusted code: on a control plane that shares no host directory with containers -------------------------------
@pytest.fixture(scope="module")
def unshared(tmp_path_factory: pytest.TempPathFactory, control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """(The session's control plane shares pytest's temporary root with containers, for tests that leave side
    effects there; this one shares nothing, as a control plane does outside tests.)"""
    cp = ControlPlane(tmp_path_factory.mktemp("unshared-home"), env={"SHOAL_SANDBOX_SHARE": ""}).start()
    _use_home(cp.home)
    yield cp
    cp.stop()
    _use_home(control_plane.home)


@pytest.fixture
def host_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="shoal-host-") as d:
        yield Path(d)


@pytest.fixture
def untrusted_app(unshared: ControlPlane) -> modal.App:
    return modal.App.lookup(f"untrusted-{secrets.token_hex(4)}", create_if_missing=True)


def test_rm_rf_root_leaves_the_host_and_the_next_sandbox_intact(untrusted_app: modal.App, host_dir: Path,
                                                               unshared: ControlPlane) -> None:
    marker = host_dir / "host-file"
    marker.write_text("still here")
    sb = modal.Sandbox.create("sh", "-c", "rm -rf --no-preserve-root / 2>/dev/null; echo done", app=untrusted_app)
    assert sb.stdout.read() == "done\n"
    sb.wait(raise_on_termination=False)
    assert marker.read_text() == "still here" and (unshared.home / "token").exists()
    assert modal.Sandbox.from_id(sb.object_id).poll() == 0  # the store (SQLite or PostgreSQL) is intact
    nxt = modal.Sandbox.create(app=untrusted_app)
    assert nxt.exec("sh", "-c", "test -x /bin/sh && echo ok").stdout.read() == "ok\n"
    nxt.terminate()


def test_host_files_state_and_other_sandboxes_files_are_not_visible(untrusted_app: modal.App, host_dir: Path,
                                                                   unshared: ControlPlane) -> None:
    secret = host_dir / "host-secret.txt"
    secret.write_text("host secret")
    a = modal.Sandbox.create(app=untrusted_app)
    b = modal.Sandbox.create(app=untrusted_app)
    a.filesystem.write_text("a's data", "/tmp/private.txt")
    assert b.exec("cat", "/tmp/private.txt").wait() != 0
    for path in (secret, unshared.home / "state.db", unshared.home / "token", unshared.home / "secrets.key"):
        probe = b.exec("cat", str(path), text=False)
        assert probe.stdout.read() == b"" and probe.wait() != 0
    with pytest.raises(FileNotFoundError):
        b.filesystem.read_bytes(str(secret))
    a.terminate()
    b.terminate()


def test_memory_hog_and_fork_bomb_are_contained_and_reported(untrusted_app: modal.App) -> None:
    hog = modal.Sandbox.create("python3", "-c", "x = bytearray(600 * 2**20); print('allocated')", app=untrusted_app,
                               memory=(64, 128))
    hog.wait()
    assert hog.returncode == 137 and hog.stdout.read() == ""  # killed (OOM), as a shell reports SIGKILL
    bomb = modal.Sandbox.create("bash", "-c", "f(){ f | f & }; f; sleep 3; echo still here", app=untrusted_app,
                                timeout=60)
    assert bomb.stdout.read() == "still here\n"  # the process limit stopped the bomb, not the sandbox
    bomb.terminate()
    nxt = modal.Sandbox.create(app=untrusted_app)
    assert nxt.exec("echo", "fine").stdout.read() == "fine\n"
    nxt.terminate()


def test_block_network_reaches_nothing(untrusted_app: modal.App, unshared: ControlPlane) -> None:
    sb = modal.Sandbox.create(app=untrusted_app, block_network=True)
    script = (
        "import socket, sys\n"
        "for host, port in [('127.0.0.1', int(sys.argv[1])), ('1.1.1.1', 53), ('10.0.0.1', 80)]:\n"
        "    try:\n"
        "        socket.create_connection((host, port), 2)\n"
        "        print('reached', host)\n"
        "    except OSError:\n"
        "        pass\n"
        "print('done')\n")
    port = unshared.url.rstrip("/").rsplit(":", 1)[1]
    p = sb.exec("python3", "-c", script, port)
    assert p.stdout.read() == "done\n"
    sb.terminate()
