"""Sandboxed containers (docs/sandbox.md): real namespaces, cgroups and control planes; skipped where the kernel
does not allow sandboxes (the control plane then runs `isolation="process"`)."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal._client.transport import get_client
from shoal.controlplane.oci_images import debian_slim_mode
from shoal.exception import ExecutionError

from ..conftest import ControlPlane, _use_home, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="sandboxes need Linux namespaces")


@pytest.fixture(scope="module")
def sandbox_available(control_plane) -> None:
    """The session's control plane says once, at start, when it cannot sandbox (see LocalBackend)."""
    log = (control_plane.home / "server.log").read_text()
    if "isolation=process" in log:
        pytest.skip("containers are not sandboxed here: " + log.split("isolation=process", 1)[1].splitlines()[0])


@pytest.fixture(scope="module")
def sandbox(control_plane, sandbox_available) -> Iterator:
    import sandbox_app

    with sandbox_app.app.run(quiet=True):
        info = sandbox_app.isolation.remote()
        if info["uid_map"] == ["0", "0", "4294967295"]:
            pytest.fail(f"the control plane did not sandbox its containers: {info}")
        yield sandbox_app


@pytest.fixture
def host_canary() -> Iterator[Path]:
    """A file every host process can read, outside anything shared with containers."""
    path = Path("/var/tmp") / f"shoal-sandbox-canary-{secrets.token_hex(6)}"
    path.write_text("host secret")
    path.chmod(0o644)
    yield path
    path.unlink(missing_ok=True)


def containers_of(fn: object) -> list[dict]:
    fid = fn.object_id  # type: ignore[attr-defined]
    return [c for c in get_client().call("GET", "/v1/containers")["containers"] if c["function_id"] == fid]




def test_container_has_its_own_namespaces(sandbox) -> None:
    info = sandbox.isolation.remote()
    assert info["uid"] == 0 and info["uid_map"][0] == "0" and info["uid_map"][1] != "0"  # root inside only
    assert info["hostname"].startswith("ta-")
    # Its own network namespace: loopback, and pasta's interface where there is outbound network (egress.py).
    assert "lo" in info["net"] and len(info["net"]) <= 2, info["net"]
    assert info["cwd"] == "/root" and info["home"] == "/root" and info["source_here"]
    # Its own pid namespace: the init, the runtime and the children the function started, nothing of the host.
    assert 1 in info["pids"] and info["pid"] in info["pids"]
    assert len(info["pids"]) < 10, info["pids"]
    assert {"usr", "etc", "tmp", "root", "proc", "dev"} <= set(info["root"])


def test_host_files_are_not_visible(sandbox, control_plane, host_canary) -> None:
    assert Path(host_canary).read_text() == "host secret"
    assert sandbox.read.remote(str(host_canary)) == "FileNotFoundError"
    # The control plane's own state: its database and API token (the state dir is under a share here).
    for name in ("token",) if control_plane.schema else ("state.db", "token"):  # (on PostgreSQL: no state.db)
        assert (control_plane.home / name).exists()
        assert sandbox.read.remote(str(control_plane.home / name)) in ("PermissionError", "FileNotFoundError")
    if debian_slim_mode() == "rootfs":  # the image's own /etc, its root's to read: nothing of the host's
        shadow = sandbox.read.remote("/etc/shadow")
        assert shadow.startswith("root:") and shadow != Path("/etc/shadow").read_text()
    else:  # the host's /etc, read-only: visible, but not to the container's root
        assert sandbox.read.remote("/etc/shadow") == "PermissionError"


def test_host_system_files_are_read_only(sandbox) -> None:
    passwd = Path("/etc/passwd").read_text()
    if debian_slim_mode() == "rootfs":  # the image's /usr and /etc, written in the container's private layer
        assert sandbox.write.remote("/usr/shoal-sandbox-test") == "ok"
        assert sandbox.write.remote("/etc/passwd") == "ok"
    else:  # the host's, bound read-only
        assert sandbox.write.remote("/usr/shoal-sandbox-test") == "OSError"  # EROFS
        assert sandbox.write.remote("/etc/passwd") in ("PermissionError", "OSError")
    assert not Path("/usr/shoal-sandbox-test").exists() and Path("/etc/passwd").read_text() == passwd
    assert sandbox.write.remote("/root/sandbox_app.py") in ("PermissionError", "OSError")  # the source too
    assert sandbox.write.remote("/root/scratch.txt") == "ok"  # /root itself is the container's own


def test_tmp_is_private(sandbox) -> None:
    host_file = Path("/tmp") / f"shoal-host-{secrets.token_hex(6)}"
    host_file.write_text("x")
    a, b = f"a-{secrets.token_hex(4)}", f"b-{secrets.token_hex(4)}"
    try:
        seen_a = sandbox.tmp_write_and_list.remote(a)  # single-use containers: one each
        seen_b = sandbox.tmp_write_and_list.remote(b)
    finally:
        host_file.unlink()
    assert a in seen_a and b in seen_b
    assert a not in seen_b, "a container saw another container's /tmp"
    assert host_file.name not in seen_a + seen_b, "a container saw the host's /tmp"
    assert not (Path("/tmp") / a).exists()


def test_two_containers_of_one_function_both_listen_on_port_8000(sandbox, tmp_path: Path) -> None:
    calls = [sandbox.hold_port_8000.spawn(str(tmp_path)) for _ in range(2)]
    results = [c.get(timeout=90) for c in calls]
    assert len({r["container"] for r in results}) == 2, results
    assert all(r["both_listening"] for r in results), results


def test_nested_remote_call_from_inside_a_sandbox(sandbox) -> None:
    assert sandbox.nested.remote(20) == 41


def test_secrets_are_only_in_their_own_container(sandbox) -> None:
    holder = sandbox.secret_holder.spawn(5.0)
    assert wait_for(lambda: any(c["state"] == "ready" for c in containers_of(sandbox.secret_holder)))
    seen = sandbox.look_for_secret.remote("only-mine-4711")
    assert seen == {"in_env": False, "in_processes": []}
    assert holder.get(timeout=60) == "only-mine-4711"


def test_memory_limit_kills_with_out_of_memory(sandbox, control_plane) -> None:
    log = (control_plane.home / "server.log").read_text()
    if "cgroup limits unavailable" in log:
        pytest.skip("no cgroups here: " + log.split("cgroup limits unavailable", 1)[1].splitlines()[0])
    assert sandbox.allocate_within_limit.remote(64) == 64 * 1024 * 1024
    with pytest.raises(ExecutionError, match="out of memory") as info:
        sandbox.allocate.remote(512)
    assert "128 MiB" in str(info.value)


def test_gpu_function_on_a_machine_without_gpus_fails_at_once_and_leaves_nothing_pending(sandbox) -> None:
    """No GPU here could ever run it: waiting would be forever (backends/gpus.py `place`; busy GPUs are waited
    for, tests/unit/test_gpus.py)."""
    from shoal.backends.gpus import detect

    if detect()[0]:
        pytest.skip("this machine has GPUs")
    call = sandbox.needs_h100.spawn()
    with pytest.raises(ExecutionError, match=r"gpu='H100' can never run here: this machine has no GPUs.*"
                                             r"SHOAL_GPU_FALLBACK=cpu"):
        call.get(timeout=60)
    assert wait_for(lambda: not containers_of(sandbox.needs_h100)), containers_of(sandbox.needs_h100)


def test_rm_rf_root_leaves_host_and_next_container_intact(sandbox_available, tmp_path: Path,
                                                          host_canary: Path) -> None:
    """On a control plane of its own that shares nothing writable with its containers."""
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home", env={"SHOAL_SANDBOX_SHARE": ""}).start()
    _use_home(cp.home)
    try:
        import sandbox_private_app as sandbox_app

        with sandbox_app.app.run(quiet=True):
            info = sandbox_app.isolation.remote()
            assert info["uid_map"] != ["0", "0", "4294967295"], "not sandboxed: refusing to run rm -rf /"
            result = sandbox_app.destroy.remote()
            assert not result.get("refused"), f"the container was not sandboxed: {result}"
            assert result["rc"] != 0  # plenty it could not remove
            if debian_slim_mode() == "venv":
                assert result["usr_bin"] > 10  # the host's /usr, read-only (a root filesystem's goes, in its upper)
            assert sandbox_app.double.remote(21) == 42  # a fresh container works
            assert sandbox_app.isolation.remote()["source_here"]
        assert host_canary.read_text() == "host secret"
        assert (cp.schema or (cp.home / "state.db").exists()) and (cp.home / "token").exists()
        assert Path("/usr/bin/env").exists()
    finally:
        cp.stop()
        if previous:
            _use_home(Path(previous))


def test_process_isolation_runs_unsandboxed_and_says_so(tmp_path: Path) -> None:
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home", env={"SHOAL_ISOLATION": "process"}).start()
    _use_home(cp.home)
    try:
        import sandbox_private_app as sandbox_app

        with sandbox_app.app.run(quiet=True):
            info = sandbox_app.isolation.remote()
            sandbox_app.double.remote(1)
        assert info["uid_map"] == ["0", "0", "4294967295"]  # the host's user namespace
        assert info["cwd"] != "/root" and info["pid"] > 1
        log = (cp.home / "server.log").read_text()
        assert log.count("isolation=process: containers are not sandboxed") == 1, log
    finally:
        cp.stop()
        if previous:
            _use_home(Path(previous))
