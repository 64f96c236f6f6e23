"""`shoal.Sandbox` on the control plane, over its HTTP routes (docs/sandboxes.md): real control plane, real
containers, the real client transport."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from shoal import exception
from shoal._client.transport import get_client, reset_client

from ..conftest import ControlPlane, own_control_plane, wait_for
from .rootfs_images import rootfs_tars  # noqa: F401 - a fixture (the registry's images)
from .test_oci_images import reg  # noqa: F401 - a fixture: a registry on loopback with test images


def call(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return get_client().call(method, path, body)


def new_app() -> str:
    return call("POST", "/v1/apps/lookup", {"name": f"sbt-{secrets.token_hex(4)}", "create_if_missing": True})["app_id"]


def create(app_id: str, *command: str, **kw: Any) -> str:
    return call("POST", "/v1/sandboxes", {"app_id": app_id, "command": list(command), **kw})["sandbox_id"]


def read_all(path: str, fd: str = "stdout", timeout: float = 60.0) -> bytes:
    """Everything a stream holds, until its end."""
    out, offset, deadline = b"", 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = call("GET", f"{path}/output?fd={fd}&offset={offset}&timeout=20")
        out += r["data"]
        offset = r["offset"]
        if r["eof"]:
            return out
    raise AssertionError(f"{path} {fd} did not end; so far {out!r}")


def read_until(path: str, needle: bytes, offset: int = 0, fd: str = "stdout", timeout: float = 60.0
               ) -> tuple[bytes, int]:
    out, deadline = b"", time.monotonic() + timeout
    while needle not in out:
        assert time.monotonic() < deadline, f"no {needle!r} in {out!r}"
        r = call("GET", f"{path}/output?fd={fd}&offset={offset}&timeout=10")
        out += r["data"]
        offset = r["offset"]
        assert not (r["eof"] and needle not in out), f"ended without {needle!r}: {out!r}"
    return out, offset


def wait(sid: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = call("GET", f"/v1/sandboxes/{sid}/wait?timeout=20")
        if r["returncode"] is not None or r["reason"] is not None:
            return r
    raise AssertionError(f"sandbox {sid} still running")


def run_exec(sid: str, *argv: str, **kw: Any) -> tuple[int, bytes, bytes]:
    eid = call("POST", f"/v1/sandboxes/{sid}/exec", {"argv": list(argv), **kw})["exec_id"]
    out = read_all(f"/v1/execs/{eid}")
    err = read_all(f"/v1/execs/{eid}", "stderr")
    while True:
        r = call("GET", f"/v1/execs/{eid}/wait?timeout=20")
        if r["returncode"] is not None:
            return r["returncode"], out, err


@pytest.fixture
def app_id(control_plane: ControlPlane) -> str:
    return new_app()


def test_command_output_and_exit_code(app_id: str) -> None:
    sid = create(app_id, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert read_all(f"/v1/sandboxes/{sid}") == b"out\n"
    assert read_all(f"/v1/sandboxes/{sid}", "stderr") == b"err\n"
    assert wait(sid) == {"returncode": 3, "reason": "exited"}
    info = call("GET", f"/v1/sandboxes/{sid}")
    assert info["state"] == "terminated" and info["returncode"] == 3 and info["app_id"] == app_id
    assert info["container_id"].startswith("ta-")


def test_output_survives_control_plane_restart(private_control_plane: ControlPlane) -> None:
    app = new_app()
    done = create(app, "sh", "-c", "printf 'line1\\nline2\\n'")
    assert wait(done)["returncode"] == 0
    running = create(app, "sh", "-c", "echo started; sleep 300")
    read_until(f"/v1/sandboxes/{running}", b"started")
    code, _, _ = run_exec(running, "sh", "-c", "echo exec-out; exit 4")
    assert code == 4
    finished_exec = call("POST", f"/v1/sandboxes/{running}/exec", {"argv": ["echo", "kept"]})["exec_id"]
    assert call("GET", f"/v1/execs/{finished_exec}/wait?timeout=30")["returncode"] == 0
    private_control_plane.kill()
    private_control_plane.start()
    reset_client()
    # Output written before the restart is all there, from the files, with its end.
    assert read_all(f"/v1/sandboxes/{done}") == b"line1\nline2\n"
    assert call("GET", f"/v1/sandboxes/{done}")["returncode"] == 0
    # The sandbox whose process died with the old control plane is terminated, and says why.
    info = call("GET", f"/v1/sandboxes/{running}")
    assert info["state"] == "terminated" and info["reason"] == "control plane restarted"
    assert read_all(f"/v1/sandboxes/{running}") == b"started\n"
    # An exec's output and exit code too.
    assert read_all(f"/v1/execs/{finished_exec}") == b"kept\n"
    assert call("GET", f"/v1/execs/{finished_exec}/wait") == {"returncode": 0, "reason": "exited"}


def test_stdin_drives_an_interactive_process(app_id: str) -> None:
    sid = create(app_id, "python3", "-u", "-i", "-q")
    path = f"/v1/sandboxes/{sid}"
    sent = 0
    for i, line in enumerate([b"x = 20\n", b"print(x + 22)\n", b"print('a' * 3)\n"]):
        assert call("POST", f"{path}/stdin", {"offset": sent, "data": line})["offset"] == sent + len(line)
        if i == 0:  # the same chunk resent: written once
            assert call("POST", f"{path}/stdin", {"offset": sent, "data": line})["offset"] == sent + len(line)
        sent += len(line)
    got, _ = read_until(path, b"aaa\n")
    assert got == b"42\naaa\n"  # the resent first line ran once: no error, no repeat
    with pytest.raises(exception.InvalidError, match="offset"):
        call("POST", f"{path}/stdin", {"offset": sent + 5, "data": b"1\n"})
    call("POST", f"{path}/stdin", {"offset": sent, "data": b"", "eof": True})
    assert wait(sid)["returncode"] == 0


def test_cat_echoes_stdin_line_by_line(app_id: str) -> None:
    sid = create(app_id, "cat")
    path = f"/v1/sandboxes/{sid}"
    offset, sent = 0, 0
    for n in range(3):
        line = f"line {n}\n".encode()
        call("POST", f"{path}/stdin", {"offset": sent, "data": line})
        sent += len(line)
        got, offset = read_until(path, line, offset)
        assert got == line
    call("POST", f"{path}/stdin", {"offset": sent, "eof": True})
    assert wait(sid) == {"returncode": 0, "reason": "exited"}


def test_concurrent_execs_and_exec_stdin(app_id: str) -> None:
    sid = create(app_id)  # no command: it waits until terminated
    eids = [call("POST", f"/v1/sandboxes/{sid}/exec", {"argv": ["sh", "-c", f"sleep 0.5; echo exec {n}; "
                                                                           "echo $SHOAL_SANDBOX_ID"]})["exec_id"]
            for n in range(6)]
    for n, eid in enumerate(eids):
        assert read_all(f"/v1/execs/{eid}") == f"exec {n}\n{sid}\n".encode()
        assert call("GET", f"/v1/execs/{eid}/wait?timeout=30") == {"returncode": 0, "reason": "exited"}
    # An exec's stdin, and its workdir and env.
    eid = call("POST", f"/v1/sandboxes/{sid}/exec",
               {"argv": ["sh", "-c", "read x; echo \"$x $GREETING $(pwd)\""], "workdir": "/tmp",
                "env": {"GREETING": "hello"}})["exec_id"]
    call("POST", f"/v1/execs/{eid}/stdin", {"offset": 0, "data": b"typed\n", "eof": True})
    assert read_all(f"/v1/execs/{eid}") == b"typed hello /tmp\n"
    assert run_exec(sid, "sh", "-c", "exit 7")[0] == 7
    code, _, err = run_exec(sid, "no-such-command")
    assert code == 127 and b"no-such-command" in err
    call("POST", f"/v1/sandboxes/{sid}/terminate")
    assert wait(sid)["reason"] == "terminated"


def test_sandboxes_created_back_to_back_each_answer_an_exec_at_once(app_id: str) -> None:
    """Each sandbox's first exec starts its exec agent; several at once, right after creation (the sandboxes are
    still being set up), each gets its own output and end."""
    from concurrent.futures import ThreadPoolExecutor

    sids = [create(app_id) for _ in range(5)]

    def first_exec(sid: str) -> tuple[int, bytes, bytes]:
        return run_exec(sid, "sh", "-c", "echo $SHOAL_SANDBOX_ID $(pwd)")

    with ThreadPoolExecutor(len(sids)) as pool:
        results = list(pool.map(first_exec, sids))
    # (the sandbox's working directory: the runtime's own, not that of its init it was forked from)
    assert results == [(0, f"{sid} /root\n".encode(), b"") for sid in sids]
    for sid in sids:
        call("POST", f"/v1/sandboxes/{sid}/terminate")


def test_concurrent_first_execs_with_large_requests(app_id: str) -> None:
    """Requests larger than the agent's socket buffer, sent at once while its agent is still starting: each reaches
    the agent whole, with its own pipes (a request is never interleaved with another's)."""
    from concurrent.futures import ThreadPoolExecutor

    sid = create(app_id)
    env = {f"BIG{i}": chr(ord("a") + i) * 60000 for i in range(5)}

    def one(n: int) -> tuple[int, bytes, bytes]:
        return run_exec(sid, "sh", "-c", f'echo {n} ${{#BIG0}} ${{#BIG4}}; echo err {n} >&2', env=env)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert results == [(0, f"{n} 60000 60000\n".encode(), f"err {n}\n".encode()) for n in range(4)]
    call("POST", f"/v1/sandboxes/{sid}/terminate")


def test_exec_timeout_kills_only_the_exec(app_id: str) -> None:
    sid = create(app_id, "sh", "-c", "echo up; sleep 300")
    read_until(f"/v1/sandboxes/{sid}", b"up")
    eid = call("POST", f"/v1/sandboxes/{sid}/exec", {"argv": ["sleep", "300"], "timeout": 1})["exec_id"]
    deadline = time.monotonic() + 60
    while (r := call("GET", f"/v1/execs/{eid}/wait?timeout=20"))["returncode"] is None:
        assert time.monotonic() < deadline
    assert r["reason"] == "timeout" and r["returncode"] != 0
    assert call("GET", f"/v1/sandboxes/{sid}")["state"] == "running"
    assert run_exec(sid, "echo", "still here")[1] == b"still here\n"
    call("POST", f"/v1/sandboxes/{sid}/terminate")
    assert wait(sid)["reason"] == "terminated"


def test_sandbox_timeout_and_idle_timeout(app_id: str) -> None:
    sid = create(app_id, "sleep", "300", timeout=1)
    r = wait(sid)
    assert r["reason"] == "timeout" and r["returncode"] != 0
    idle = create(app_id, idle_timeout=1)
    assert wait(idle)["reason"] == "idle_timeout"
    # Exec'ing in a terminated sandbox is refused.
    with pytest.raises(exception.SandboxTerminatedError):
        call("POST", f"/v1/sandboxes/{sid}/exec", {"argv": ["true"]})


def test_tags_list_and_by_name(app_id: str) -> None:
    app_name = call("POST", "/v1/apps/lookup", {"name": app_id})["name"]
    a = create(app_id, name="first", tags={"team": "a", "kind": "x"})
    b = create(app_id, tags={"team": "b"})
    with pytest.raises(exception.AlreadyExistsError):
        create(app_id, name="first")
    assert call("GET", f"/v1/sandboxes/by-name?app_name={app_name}&name=first")["sandbox_id"] == a
    with pytest.raises(exception.NotFoundError):
        call("GET", f"/v1/sandboxes/by-name?app_name={app_name}&name=nobody")
    listed = {s["sandbox_id"] for s in call("GET", f"/v1/sandboxes?app_id={app_id}")["sandboxes"]}
    assert {a, b} <= listed
    only_a = call("GET", f"/v1/sandboxes?app_id={app_id}&tag=team=a")["sandboxes"]
    assert [s["sandbox_id"] for s in only_a] == [a]
    call("PUT", f"/v1/sandboxes/{b}/tags", {"tags": {"team": "a"}})
    assert call("GET", f"/v1/sandboxes/{b}")["tags"] == {"team": "a"}
    both = {s["sandbox_id"] for s in call("GET", f"/v1/sandboxes?app_id={app_id}&tag=team=a")["sandboxes"]}
    assert both == {a, b}
    for sid in (a, b):
        call("POST", f"/v1/sandboxes/{sid}/terminate")
        assert wait(sid)["reason"] == "terminated"
    # Terminated: no longer found by name; a new one may take the name.
    with pytest.raises(exception.NotFoundError):
        call("GET", f"/v1/sandboxes/by-name?app_name={app_name}&name=first")
    c = create(app_id, name="first")
    call("POST", f"/v1/sandboxes/{c}/terminate")


def test_bad_requests_name_the_field(app_id: str) -> None:
    with pytest.raises(exception.InvalidError, match="timeout"):
        call("POST", "/v1/sandboxes", {"app_id": app_id, "timeout": -1})
    with pytest.raises(exception.InvalidError, match="unencrypted_ports"):
        call("POST", "/v1/sandboxes", {"app_id": app_id, "unencrypted_ports": [70000]})
    with pytest.raises(exception.NotFoundError):
        call("POST", "/v1/sandboxes", {"app_id": "ap-nosuchapp"})
    with pytest.raises(exception.NotFoundError):
        call("GET", "/v1/sandboxes/sb-nosuch")


def test_tunnel_answers_http_from_a_server_in_the_sandbox(app_id: str) -> None:
    import urllib.request

    sid = create(app_id, "python3", "-m", "http.server", "8000", "--bind", "0.0.0.0", "--directory", "/tmp",
                 encrypted_ports=[8000])
    run_exec(sid, "sh", "-c", "echo tunnelled > /tmp/hello.txt")
    tunnel = call("GET", f"/v1/sandboxes/{sid}/tunnels")["tunnels"][8000]
    got: list[bytes] = []

    def fetch() -> bool:
        try:
            with urllib.request.urlopen(tunnel["url"] + "/hello.txt", timeout=5) as resp:
                got.append(resp.read())
            return True
        except OSError:
            return False

    assert wait_for(fetch, 30)
    assert got[-1] == b"tunnelled\n"
    # The URL works from inside other containers too (another sandbox here).
    client = create(app_id, "python3", "-c", "import sys, urllib.request; "
                    "sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=20).read())",
                    tunnel["url"] + "/hello.txt")
    assert read_all(f"/v1/sandboxes/{client}") == b"tunnelled\n"
    call("POST", f"/v1/sandboxes/{sid}/terminate")
    wait(sid)


def test_filesystem_operations_run_inside(app_id: str) -> None:
    sid = create(app_id)
    fs = f"/v1/sandboxes/{sid}/fs"
    call("POST", f"{fs}/mkdir", {"path": "/tmp/a/b", "parents": True})
    call("POST", f"{fs}/write", {"path": "/tmp/a/b/f.bin", "data": bytes(range(256))})
    assert call("POST", f"{fs}/read", {"path": "/tmp/a/b/f.bin"})["data"] == bytes(range(256))
    assert call("POST", f"{fs}/stat", {"path": "/tmp/a/b/f.bin"})["size"] == 256
    assert [e["name"] for e in call("POST", f"{fs}/list", {"path": "/tmp/a"})["entries"]] == ["b"]
    assert run_exec(sid, "cat", "/tmp/a/b/f.bin")[1] == bytes(range(256))  # the container's own file
    with pytest.raises(exception.NotFoundError):
        call("POST", f"{fs}/read", {"path": "/tmp/nope"})
    with pytest.raises(exception.InvalidError):
        call("POST", f"{fs}/remove", {"path": "/tmp/a"})  # not empty, not recursive
    call("POST", f"{fs}/remove", {"path": "/tmp/a", "recursive": True})
    with pytest.raises(exception.NotFoundError):
        call("POST", f"{fs}/stat", {"path": "/tmp/a"})
    with pytest.raises(exception.InvalidError, match="path"):
        call("POST", f"{fs}/read", {"path": "relative"})
    # A symlink to an absolute path resolves inside the container, never to the host's file.
    # (/root/inside.txt exists in the container only: through a host path the link would dangle.)
    assert run_exec(sid, "sh", "-c", "echo mine > /root/inside.txt && ln -s /root/inside.txt /tmp/link")[0] == 0
    assert not os.path.exists("/root/inside.txt")
    assert call("POST", f"{fs}/read", {"path": "/tmp/link"})["data"] == b"mine\n"
    with pytest.raises(exception.InvalidError, match="OCI"):
        call("POST", f"/v1/sandboxes/{sid}/snapshot")
    call("POST", f"/v1/sandboxes/{sid}/terminate")


# -- untrusted code ----------------------------------------------------------------------------------------------
@pytest.fixture
def unshared(tmp_path: Path) -> Any:
    """A control plane of this test alone that shares no host directory with its containers (the suite's shares
    its temporary root), for code that tries to destroy everything it can reach."""
    yield from own_control_plane(tmp_path / "home", {"SHOAL_SANDBOX_SHARE": "", "SHOAL_SANDBOX_PIDS_MAX": "200",
                                                     "SHOAL_SANDBOX_OUTPUT_MAX": str(1 << 20)})


def test_rm_rf_root_leaves_the_host_and_the_next_sandbox_intact(unshared: ControlPlane, tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("still here")
    app = new_app()
    sid = create(app, "sh", "-c", "rm -rf --no-preserve-root / 2>/dev/null; echo done; ls /usr/bin | head -1")
    assert read_all(f"/v1/sandboxes/{sid}").startswith(b"done\n")
    wait(sid)
    assert canary.read_text() == "still here"
    assert os.path.exists("/usr/bin/env") and (unshared.home / "token").exists()
    assert call("GET", f"/v1/sandboxes/{sid}")["state"] == "terminated"  # the store (SQLite or PostgreSQL) is intact
    nxt = create(app, "sh", "-c", "echo fine; test -x /usr/bin/env && echo tools")
    assert read_all(f"/v1/sandboxes/{nxt}") == b"fine\ntools\n"
    assert call("GET", "/v1/health")["ok"]


def test_a_sandbox_cannot_read_the_control_plane_or_other_sandboxes(unshared: ControlPlane) -> None:
    app = new_app()
    first = create(app)
    assert run_exec(first, "sh", "-c", "echo private > /tmp/mine; echo private > /root/mine")[0] == 0
    second = create(app)
    home = str(unshared.home)
    for argv in (["cat", "/tmp/mine"], ["cat", "/root/mine"], ["cat", f"{home}/token"], ["ls", home],
                 ["cat", f"{home}/state.db"], ["ls", f"{home}/sandboxes"]):
        code, out, _ = run_exec(second, *argv)
        assert code != 0 and b"private" not in out and out == b"", (argv, out)
    # Its processes are its own: the first sandbox's are not visible.
    _, ps, _ = run_exec(second, "sh", "-c", "ls /proc | grep -c '^[0-9]'")
    assert int(ps) < 10
    # No control-plane credential or address in a sandbox's environment.
    _, env, _ = run_exec(second, "env")
    names = {line.split(b"=", 1)[0] for line in env.splitlines()}
    assert not names & {b"SHOAL_TOKEN", b"SHOAL_CONTROL", b"SHOAL_SERVER_URL", b"SHOAL_CONTAINER_TOKEN"}
    assert b"SHOAL_SANDBOX_ID" in names and b"MODAL_SANDBOX_ID" in names
    for sid in (first, second):
        call("POST", f"/v1/sandboxes/{sid}/terminate")


def test_memory_hog_and_fork_bomb_are_contained(unshared: ControlPlane) -> None:
    app = new_app()
    hog = create(app, "python3", "-c", "x = bytearray(1 << 30); print('allocated')", memory=[64, 128])
    r = wait(hog)
    assert r["reason"] == "oom" and r["returncode"] != 0
    assert b"allocated" not in read_all(f"/v1/sandboxes/{hog}")
    # Processes are limited (here to 200: SHOAL_SANDBOX_PIDS_MAX): forking stops there.
    count = ("import os, time\nn = 0\ntry:\n    for _ in range(1000):\n        if os.fork() == 0:\n"
             "            time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError as e:\n"
             "    print('stopped', e.errno)\nprint(n)\n")
    counted = create(app, "python3", "-c", count, timeout=20)
    lines = read_all(f"/v1/sandboxes/{counted}").split()
    assert lines[:2] == [b"stopped", b"11"] and 100 < int(lines[-1]) < 200, lines  # EAGAIN
    call("POST", f"/v1/sandboxes/{counted}/terminate")
    # A fork bomb under cpu and memory limits; the machine and the next sandbox are fine.
    bomb = create(app, "sh", "-c", "b() { b | b & }; b; sleep 2", cpu=[0.1, 0.5], memory=[64, 128], timeout=8)
    r = wait(bomb, timeout=120)
    assert r["reason"] in ("timeout", "oom", "exited"), r
    nxt = create(app, "echo", "ok")
    assert read_all(f"/v1/sandboxes/{nxt}") == b"ok\n"


def test_block_network_reaches_nothing(app_id: str, control_plane: ControlPlane) -> None:
    import json

    # The ingress proxy's port is forwarded into every container that has a network (web URLs work inside).
    web_port = json.loads((control_plane.home / "server.json").read_text())["web_port"]
    probe = ("import socket, sys\n"
             f"for host, port in [('127.0.0.1', {web_port}), ('1.1.1.1', 53), ('169.254.53.53', 53)]:\n"
             "    try:\n"
             "        socket.create_connection((host, port), timeout=2).close(); print('reached', host)\n"
             "    except OSError as e:\n"
             "        print('no', host)\n"
             "print(len(open('/proc/net/route').read().splitlines()))\n")
    sid = create(app_id, "python3", "-c", probe, block_network=True)
    out = read_all(f"/v1/sandboxes/{sid}").decode().splitlines()
    assert out == ["no 127.0.0.1", "no 1.1.1.1", "no 169.254.53.53", "1"]  # a routing table with no route
    # Without block_network the same probe reaches the forwarded port: the probe can tell.
    sid = create(app_id, "python3", "-c", probe)
    assert read_all(f"/v1/sandboxes/{sid}").decode().splitlines()[0] == "reached 127.0.0.1"


def test_function_containers_manage_only_their_own_apps_sandboxes(app_id: str) -> None:
    import msgspec
    import sandbox_server_app

    import shoal

    other = create(app_id, "sleep", "300")
    secret = f"sbs-{secrets.token_hex(4)}"
    call("POST", "/v1/secrets", {"name": secret, "env": {"STOLEN": "yes"}})
    image = shoal.Image.debian_slim().run_commands(f"echo {secrets.token_hex(8)}").to_wire()
    with sandbox_server_app.app.run(quiet=True) as running:
        got = sandbox_server_app.manage.remote(running.app_id, app_id, other, secret,
                                               msgspec.to_builtins(image))
    assert got["own create"] == 200
    assert got["own wait"] == {"returncode": 0, "reason": "exited"}
    assert got["own output"] == b"from-fn\n"
    assert "'" + secret + "'" in got["secret it lacks"][1]["error"]
    assert "build images" in got["build an image"][1]["error"]
    for what in ("other create", "other exec", "other terminate", "other list", "list all", "secret it lacks",
                 "build an image", "exec with a secret it lacks"):
        status, body = got[what]
        assert status == 403 and body["error"].startswith("containers may not"), (what, body)
    assert call("GET", f"/v1/sandboxes/{other}")["state"] == "running"
    call("POST", f"/v1/sandboxes/{other}/terminate")


def test_volumes_mount_commit_and_reload(app_id: str) -> None:
    import shoal

    name = f"sbvol-{secrets.token_hex(4)}"
    vol = shoal.Volume.from_name(name, create_if_missing=True)
    with vol.batch_upload() as batch:
        batch.put_file(__file__, "/seed.txt")
    sid = create(app_id, volumes=[{"path": "/data", "volume_name": name}])
    assert run_exec(sid, "sh", "-c", "head -c 9 /data/seed.txt; echo made > /data/made.txt")[1] == b'"""`shoal'
    # reload_volumes: what the sandbox wrote is committed, and a change made outside becomes visible.
    with vol.batch_upload() as batch:
        batch.put_file(__file__, "/outside.txt")
    call("POST", f"/v1/sandboxes/{sid}/reload-volumes")
    assert b"made" in b"".join(vol.read_file("made.txt"))
    assert run_exec(sid, "test", "-f", "/data/outside.txt")[0] == 0
    with pytest.raises(exception.NotFoundError):
        create(app_id, volumes=[{"path": "/data", "volume_name": "no-such-volume-here"}])
    call("POST", f"/v1/sandboxes/{sid}/terminate")
    wait(sid)


def test_execs_survive_their_agent_being_killed_inside(app_id: str) -> None:
    """Execs run through an agent inside the sandbox: code there can kill it; the exec in flight then has no exit
    code (reason "exec agent died"), and the next exec starts a new agent."""
    sid = create(app_id)
    assert run_exec(sid, "true")[0] == 0  # the agent is up
    kill = ("for p in /proc/[0-9]*; do grep -q 'recv_''fds' $p/cmdline 2>/dev/null && kill -9 ${p#/proc/}; done; "
            "sleep 1; echo after")
    eid = call("POST", f"/v1/sandboxes/{sid}/exec", {"argv": ["sh", "-c", kill]})["exec_id"]
    assert read_all(f"/v1/execs/{eid}") == b"after\n"  # its own process lives on (its pipes are the control plane's)
    assert call("GET", f"/v1/execs/{eid}/wait?timeout=30") == {"returncode": None, "reason": "exec agent died"}
    assert run_exec(sid, "echo", "again") == (0, b"again\n", b"")
    call("POST", f"/v1/sandboxes/{sid}/terminate")


def test_sandboxes_show_in_the_container_list_and_take_container_exec(app_id: str) -> None:
    from ..conftest import run_cli

    sid = create(app_id)
    cid = call("GET", f"/v1/sandboxes/{sid}")["container_id"]
    rows = [c for c in call("GET", "/v1/containers")["containers"] if c["container_id"] == cid]
    assert len(rows) == 1 and rows[0]["app_id"] == app_id and rows[0]["sandbox_id"] == sid
    run_exec(sid, "sh", "-c", "echo via-api > /tmp/mark")
    out = run_cli("container", "exec", cid, "--", "cat", "/tmp/mark")
    assert out.returncode == 0 and out.stdout == "via-api\n", out.stderr
    call("POST", f"/v1/sandboxes/{sid}/terminate")
    wait(sid)
    assert cid not in {c["container_id"] for c in call("GET", "/v1/containers")["containers"]}


def test_exec_with_a_terminal(app_id: str) -> None:
    sid = create(app_id)
    script = "tty; test -t 0 && echo interactive; read x; echo got $x"
    eid = call("POST", f"/v1/sandboxes/{sid}/exec", {"argv": ["sh", "-c", script], "pty": True})["exec_id"]
    out, _ = read_until(f"/v1/execs/{eid}", b"interactive")
    assert out.splitlines()[0].startswith(b"/dev/pts/")
    call("POST", f"/v1/execs/{eid}/stdin", {"offset": 0, "data": b"typed\n"})
    read_until(f"/v1/execs/{eid}", b"got typed")
    assert call("GET", f"/v1/execs/{eid}/wait?timeout=30")["returncode"] == 0
    assert read_all(f"/v1/execs/{eid}", "stderr") == b""
    # ^D ends a terminal's input.
    eid = call("POST", f"/v1/sandboxes/{sid}/exec", {"argv": ["cat"], "pty": True})["exec_id"]
    call("POST", f"/v1/execs/{eid}/stdin", {"offset": 0, "data": b"abc\n", "eof": True})
    assert call("GET", f"/v1/execs/{eid}/wait?timeout=30")["returncode"] == 0
    assert b"abc" in read_all(f"/v1/execs/{eid}")
    call("POST", f"/v1/sandboxes/{sid}/terminate")


def test_secrets_env_and_workdir(app_id: str) -> None:
    name = f"sbs-{secrets.token_hex(4)}"
    call("POST", "/v1/secrets", {"name": name, "env": {"FROM_SECRET": "s3cret"}})
    sid = create(app_id, "sh", "-c", 'echo "$FROM_SECRET $PLAIN $(pwd)"', secret_names=[name],
                 env={"PLAIN": "value"}, workdir="/tmp")
    assert read_all(f"/v1/sandboxes/{sid}") == b"s3cret value /tmp\n"
    with pytest.raises(exception.NotFoundError, match="no-such-secret"):
        create(app_id, secret_names=["no-such-secret"])
    idle = create(app_id)
    assert run_exec(idle, "sh", "-c", "echo $FROM_SECRET", secret_names=[name])[1] == b"s3cret\n"
    with pytest.raises(exception.NotFoundError):
        call("POST", f"/v1/sandboxes/{idle}/exec", {"argv": ["true"], "secret_names": ["no-such-secret"]})
    call("POST", f"/v1/sandboxes/{idle}/terminate")


def test_an_image_of_the_callers(app_id: str) -> None:
    import msgspec

    import shoal

    image = shoal.Image.debian_slim().env({"FROM_IMAGE": "yes"}).workdir("/srv")
    sid = create(app_id, "sh", "-c", 'echo "$FROM_IMAGE $(pwd)"', image=msgspec.to_builtins(image.to_wire()))
    assert read_all(f"/v1/sandboxes/{sid}") == b"yes /srv\n"
    with pytest.raises(exception.InvalidError, match="image"):
        create(app_id, image={"image_id": "im-x", "steps": [{"kind": "no-such-step"}]})


def test_output_is_bounded(unshared: ControlPlane) -> None:
    """A sandbox cannot fill the control plane's disk with output (here 1 MiB a stream: SHOAL_SANDBOX_OUTPUT_MAX)."""
    app = new_app()
    sid = create(app, "sh", "-c", "head -c 5000000 /dev/zero; echo done >&2")
    out = read_all(f"/v1/sandboxes/{sid}")
    assert out.startswith(b"\0" * (1 << 20)) and out.endswith(b"bytes dropped]\n") and len(out) < (1 << 20) + 100
    assert read_all(f"/v1/sandboxes/{sid}", "stderr") == b"done\n"
    assert wait(sid)["returncode"] == 0  # its writes never blocked


@pytest.fixture
def warm_pool(tmp_path: Path) -> Any:
    """A control plane of this test alone keeping one warm sandbox per image (SHOAL_SANDBOX_WARM_POOL=1)."""
    yield from own_control_plane(tmp_path / "home", {"SHOAL_SANDBOX_WARM_POOL": "1"})


def test_warm_sandboxes_behave_as_cold_ones(warm_pool: ControlPlane) -> None:
    app = new_app()
    name = f"sbs-{secrets.token_hex(4)}"
    call("POST", "/v1/secrets", {"name": name, "env": {"FROM_SECRET": "s3cret"}})
    # A command's parent tells the two apart: a warm sandbox runs it from its exec agent, a cold one from init.
    parent = "tr '\\0' ' ' < /proc/$PPID/cmdline | grep -c 'recv_''fds'"
    first = create(app, "sh", "-c", parent)  # cold: the first of its image; a warm one starts after it
    assert read_all(f"/v1/sandboxes/{first}") == b"0\n"

    def served_warm() -> bool:
        sid = create(app, "sh", "-c", parent)
        return read_all(f"/v1/sandboxes/{sid}") == b"1\n"

    assert wait_for(served_warm, 60, 0.5)
    time.sleep(1.0)  # room for the next warm one to start (not a timing: a cold start passes too)
    script = 'echo "$FROM_SECRET $PLAIN $SHOAL_SANDBOX_ID $(pwd)"; read x; echo "got $x" >&2; exit 5'
    sid = create(app, "sh", "-c", script, secret_names=[name], env={"PLAIN": "value"}, workdir="/tmp")
    out, _ = read_until(f"/v1/sandboxes/{sid}", b"\n")
    assert out == f"s3cret value {sid} /tmp\n".encode()
    assert run_exec(sid, "sh", "-c", "echo $FROM_SECRET $SHOAL_SANDBOX_ID $(pwd)")[1] == f"s3cret {sid} /tmp\n".encode()
    call("POST", f"/v1/sandboxes/{sid}/stdin", {"offset": 0, "data": b"typed\n", "eof": True})
    assert wait(sid) == {"returncode": 5, "reason": "exited"}
    assert read_all(f"/v1/sandboxes/{sid}", "stderr") == b"got typed\n"
    assert call("GET", f"/v1/sandboxes/{sid}")["state"] == "terminated"
    # Timeouts and terminate end it as a cold one's.
    time.sleep(1.0)
    slow = create(app, "sleep", "300", timeout=1)
    assert wait(slow)["reason"] == "timeout"
    time.sleep(1.0)
    idle = create(app)
    call("POST", f"/v1/sandboxes/{idle}/terminate")
    assert wait(idle)["reason"] == "terminated"


def test_a_warm_sandbox_on_an_oci_image_snapshots_too(warm_pool: ControlPlane, reg: str) -> None:  # noqa: F811
    """A warm container of an OCI image has its writable layer on the host as well: the sandbox that takes it can
    snapshot, and the layer goes when that sandbox ends."""
    import msgspec

    import shoal

    app = new_app()
    image = msgspec.to_builtins(shoal.Image.from_registry(f"{reg}/test/python:v1").to_wire())
    call("POST", f"/v1/sandboxes/{create(app, image=image, timeout=60)}/terminate")  # cold: fills the pool
    warm_dir = Path(warm_pool.home) / "sandboxes" / "warm"
    made: list[str] = []

    def served_warm() -> bool:  # (a cold sandbox's layer is under its own directory instead)
        made.append(create(app, image=image, timeout=120))
        return (warm_dir / call("GET", f"/v1/sandboxes/{made[-1]}")["container_id"] / "upper").is_dir()

    assert wait_for(served_warm, 120, 0.5)
    sid = made[-1]
    taken = call("GET", f"/v1/sandboxes/{sid}")["container_id"]
    call("POST", f"/v1/sandboxes/{sid}/fs/write", {"path": "/etc/warm", "data": b"warm\n"})
    snap = call("POST", f"/v1/sandboxes/{sid}/snapshot")["image_id"]
    other = create(app, "cat", "/etc/warm", image={"image_id": snap}, timeout=60)
    assert read_all(f"/v1/sandboxes/{other}") == b"warm\n"
    call("POST", f"/v1/sandboxes/{sid}/terminate")
    wait(sid)
    assert wait_for(lambda: not (warm_dir / taken).exists(), 30)


def test_a_sandbox_on_an_oci_image(app_id: str, reg: str) -> None:  # noqa: F811 - the fixture
    """An image from a registry is the sandbox's root: its command, execs and filesystem operations see the
    image's files, not the host's."""
    import msgspec

    import shoal

    image = shoal.Image.from_registry(f"{reg}/test/python:v1")
    sid = create(app_id, "sh", "-c", "test -e /usr/bin/skopeo || echo image-root; python3 -c 'print(6*7)'",
                 image=msgspec.to_builtins(image.to_wire()), timeout=120)
    assert read_all(f"/v1/sandboxes/{sid}", timeout=300) == b"image-root\n42\n"
    idle = create(app_id, image=msgspec.to_builtins(image.to_wire()))
    assert run_exec(idle, "python3", "-c", "import sys; print(sys.version_info[:2])")[0] == 0
    call("POST", f"/v1/sandboxes/{idle}/fs/write", {"path": "/tmp/f.txt", "data": b"in the image"})
    assert run_exec(idle, "cat", "/tmp/f.txt")[1] == b"in the image"
    call("POST", f"/v1/sandboxes/{idle}/terminate")


def test_a_snapshot_of_a_sandbox_on_an_oci_image(app_id: str, reg: str, control_plane: ControlPlane  # noqa: F811
                                                 ) -> None:
    """snapshot_filesystem: the sandbox's writes and deletions as they are at the snapshot become an image new
    sandboxes start from; what it writes later is not in it; its writable layer is gone when it ends."""
    import msgspec

    import shoal

    image = shoal.Image.from_registry(f"{reg}/test/python:v1")
    first = create(app_id, image=msgspec.to_builtins(image.to_wire()), timeout=300)
    assert run_exec(first, "sh", "-c", "test -e /etc/os-release && echo x-content > /etc/x && rm /etc/os-release"
                    " && mkdir -p /opt/new && echo y > /opt/new/y")[0] == 0
    snap = call("POST", f"/v1/sandboxes/{first}/snapshot")["image_id"]
    assert snap.startswith("im-") and len(snap) == 67
    assert run_exec(first, "sh", "-c", "echo later > /etc/later")[0] == 0
    layer = Path(control_plane.home) / "sandboxes" / first / "rootfs" / "upper"
    assert (layer / "etc" / "later").is_file()  # (the writable layer is a host directory now)
    assert "/run/shoal" in (layer.parent / "mountpoints").read_text().split("\n")  # (left out of snapshots)
    import json

    top = Path(json.loads((Path(control_plane.home) / "images" / snap / "manifest.json").read_text())["lowerdirs"][0])
    assert (top / "etc" / "x").is_file() and not (top / "etc" / "later").exists()
    assert not (top / ".shoal").exists() and not (top / "run" / "shoal").exists()

    second = create(app_id, image=msgspec.to_builtins(shoal.Image.from_id(snap).to_wire()), timeout=300)
    rc, out, _ = run_exec(second, "sh", "-c", "cat /etc/x /opt/new/y; test -e /etc/os-release || echo gone; "
                          "test -e /etc/later || echo not-later; test -d /proc/self && echo proc")
    assert (rc, out) == (0, b"x-content\ny\ngone\nnot-later\nproc\n")
    # A snapshot of a snapshot: the layers stack.
    assert run_exec(second, "sh", "-c", "rm /etc/x && echo z > /etc/z")[0] == 0
    snap2 = call("POST", f"/v1/sandboxes/{second}/snapshot")["image_id"]
    assert snap2 != snap
    third = create(app_id, "sh", "-c", "test -e /etc/x || cat /opt/new/y /etc/z",
                   image={"image_id": snap2}, timeout=120)
    assert read_all(f"/v1/sandboxes/{third}") == b"y\nz\n"
    for sid in (first, second):
        call("POST", f"/v1/sandboxes/{sid}/terminate")
        wait(sid)
    assert wait_for(lambda: not layer.parent.exists(), timeout=30)
    with pytest.raises(exception.InvalidError, match="not stored"):
        create(app_id, image={"image_id": "im-" + "0" * 64})
