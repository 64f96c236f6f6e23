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

from ..conftest import ControlPlane, wait_for


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


def test_stdin_drives_an_interactive_process(app_id: str) -> None:
    sid = create(app_id, "python3", "-u", "-i", "-q")
    path = f"/v1/sandboxes/{sid}"
    offset = 0
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
