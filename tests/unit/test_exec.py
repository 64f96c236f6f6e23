"""`shoal container exec` without a control plane: finding processes, the nsenter command line, and the refusal
to run against a control plane on another machine (shoal/backends/local_exec.py, shoal/cli/exec_cmds.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import click
import pytest

from shoal.backends import local_exec
from shoal.backends.local_exec import ExecError, ExecTarget, command_argv, find_target, machine_id
from shoal.cli import exec_cmds

linux = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


class FakeClient:
    def __init__(self, info: dict) -> None:
        self.info = SimpleNamespace(url="http://10.1.2.3:8000")
        self._reply = info

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        return self._reply


@pytest.mark.parametrize(("reply", "says"), [
    ({"backend": "local", "machine": "another-boot:1"}, "is on another machine"),
    ({"backend": "k8s", "machine": None}, "runs its containers elsewhere"),
])
def test_exec_refuses_a_control_plane_elsewhere(monkeypatch, reply: dict, says: str) -> None:
    monkeypatch.setattr(exec_cmds, "_client", lambda: FakeClient({"container_id": "ta-1", "pid": 1, **reply}))
    with pytest.raises(click.ClickException) as err:
        exec_cmds.container_info("ta-1")
    assert "control plane's own machine only" in err.value.message and says in err.value.message
    assert "http://10.1.2.3:8000" in err.value.message


def test_exec_accepts_this_machine(monkeypatch) -> None:
    info = {"container_id": "ta-1", "pid": 1, "backend": "local", "machine": machine_id()}
    monkeypatch.setattr(exec_cmds, "_client", lambda: FakeClient(info))
    assert exec_cmds.container_info("ta-1") is not None


def test_nsenter_command_line(monkeypatch) -> None:
    monkeypatch.setattr(local_exec, "_tool", lambda name: f"/usr/bin/{name}")
    target = ExecTarget("ta-1", sandboxed=True, pid=4242, env={})
    argv = command_argv(target, ["ls", "-l"], pty=False)
    assert argv[:2] == ["/usr/bin/nsenter", "--target=4242"]
    assert {"--user", "--mount", "--pid", "--net", "--ipc", "--uts", "--root", "--wd"} <= set(argv)
    assert not any(a.startswith("--wd=") for a in argv)  # a path would be opened on the host, outside the root
    assert argv[-3:] == ["--", "ls", "-l"]
    assert command_argv(target, ["bash"], pty=True)[-4:] == ["/usr/bin/setsid", "--wait", "--ctty", "bash"]
    plain = ExecTarget("ta-1", sandboxed=False, pid=4242, env={})
    assert command_argv(plain, ["ls"], pty=True) == ["ls"]


@linux
def test_process_isolation_target_is_the_process_itself() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], cwd="/",
                            env={"SHOAL_CONTROL": "unix:/x", "SHOAL_T_EXEC": "1", "FOO": "bar"})
    try:
        deadline = time.monotonic() + 10
        while b"time.sleep" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():  # until the child has exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        target = find_target({"container_id": "ta-1", "pid": proc.pid, "sandboxed": False,
                              "env": {"LATER": "1"}}, timeout=1)
        assert target.pid == proc.pid and target.cwd == "/" and not target.sandboxed
        assert target.env == {"FOO": "bar", "LATER": "1"}  # the runtime's own fd and timing mark are dropped
    finally:
        proc.kill()
        proc.wait()


@linux
def test_children_and_gone_processes() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert proc.pid in local_exec.children(os.getpid())
        assert local_exec._inner_pid(proc.pid) == proc.pid  # same pid namespace
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(ExecError, match="is not running"):
        find_target({"container_id": "ta-1", "pid": proc.pid, "sandboxed": True}, timeout=0.1)
    with pytest.raises(ExecError, match="no process yet"):
        find_target({"container_id": "ta-1", "pid": None, "state": "pending", "pending_reason": "waiting"})


def test_a_shell_signal_lost_while_the_command_forks_still_ends_the_wait(tmp_path: Path) -> None:
    """SIGTERM handled while Popen forks raises inside an at-fork hook, where Python prints and drops the
    exception; the CLI must still stop waiting for its command (it once waited for `sleep 300`)."""
    script = """
import os, signal, sys, time
from types import SimpleNamespace
from shoal.cli import exec_cmds
signal.signal(signal.SIGTERM, exec_cmds._raise_terminated)
exec_cmds._preexec = lambda target, pty: (lambda: None)  # a preexec_fn, as sandboxed targets have: fork hooks run
os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGTERM))
t0 = time.monotonic()
try:
    exec_cmds._run_plain(SimpleNamespace(sandboxed=False, cwd=None), ["sleep", "10"], dict(os.environ))
except exec_cmds._Terminated as exc:
    open(sys.argv[1], "w").write(f"terminated {exc.signum} {time.monotonic() - t0:.1f}")
"""
    result = tmp_path / "result"
    subprocess.run([sys.executable, "-c", script, str(result)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=30)
    word, signum, seconds = result.read_text().split()
    assert (word, signum) == ("terminated", "15") and float(seconds) < 5
