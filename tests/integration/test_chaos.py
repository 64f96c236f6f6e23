"""The control plane SIGKILLed under a client, with nobody else around: the client starts it again and goes on,
and nothing acknowledged is lost or doubled (idempotent writes: a resend after a lost reply is done once).

Also: an unreachable remote control plane fails within SHOAL_CONNECT_TIMEOUT, and the auto-started control plane
does not depend on the caller's working directory.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import msgpack
import pytest

import shoal
from shoal.exception import ConnectionError as ShoalConnectionError

from ..conftest import APPS_DIR, PYTHON, TEST_DATABASE_URL, ControlPlane, drop_schema, run_script, wait_for


class AutoStarted:
    """A state directory whose control plane only clients start (the SDK's auto-start), and the test kills."""

    def __init__(self, base: Path) -> None:
        self.home = base / "home"
        self.env = {**os.environ, "SHOAL_HOME": str(self.home), "SHOAL_WEB_PORT": "0", "SHOAL_SESSION_GRACE_S": "10"}
        self.env.pop("SHOAL_SERVER_URL", None)
        self.schema = None
        if TEST_DATABASE_URL:
            self.schema = f"t_{uuid.uuid4().hex[:12]}"
            self.env.update(SHOAL_DATABASE_URL=TEST_DATABASE_URL, SHOAL_DATABASE_SCHEMA=self.schema)

    def info(self) -> dict | None:
        try:
            return json.loads((self.home / "server.json").read_text())
        except (OSError, ValueError):
            return None

    def answering(self, not_pid: int | None = None) -> bool:
        info = self.info()
        if info is None or info["pid"] == not_pid:
            return False
        try:
            with urllib.request.urlopen(info["url"] + "/v1/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def kill(self) -> int:
        pid = self.info()["pid"]
        os.kill(pid, signal.SIGKILL)  # the control plane alone, as a crash: its containers are orphaned
        return pid

    def stop(self) -> None:
        info = self.info()
        if info is not None:
            try:
                os.kill(info["pid"], signal.SIGTERM)
                if not wait_for(lambda: self.info() is None, timeout=30):
                    os.kill(info["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.schema is not None:
            drop_schema(TEST_DATABASE_URL, self.schema)


@pytest.fixture
def auto(tmp_path: Path):
    a = AutoStarted(tmp_path)
    yield a
    a.stop()


def test_mixed_workload_survives_sigkills_of_its_control_plane(auto: AutoStarted, tmp_path: Path) -> None:
    """Maps of 2,000, spawns, queue puts and gets, Dict puts inside `app.run()` while the control plane is SIGKILLed
    three times at random moments: every acknowledged write exactly once, every result exactly once."""
    out = tmp_path / "out"
    out.mkdir()
    client = subprocess.Popen([PYTHON, str(APPS_DIR / "chaos_app.py"), str(out)], env=auto.env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: (out / "started").exists() or client.poll() is not None, timeout=120)
        assert client.poll() is None, client.stdout.read()
        rng = random.Random()
        kills: list[tuple[float, float]] = []  # (killed at, answering again at)
        for _ in range(3):
            time.sleep(rng.uniform(0.5, 3.0))
            killed = auto.kill()
            at = time.time()
            # Nobody but the client restarts it.
            assert wait_for(lambda k=killed: auto.answering(not_pid=k), timeout=60), "the client did not restart it"
            kills.append((at, time.time()))
        time.sleep(2)
        (out / "stop").write_text("1")
        try:
            stdout, _ = client.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            client.send_signal(signal.SIGUSR1)  # its threads' stacks, to say where it hangs
            time.sleep(1)
            client.kill()
            pytest.fail(f"the workload did not finish: {client.communicate()[0]}")
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, stdout
    r = json.loads((out / "result.json").read_text())
    assert r["errors"] == []
    assert r["maps"]["bad"] == [] and r["maps"]["inputs"] >= 2000
    got, acked = Counter(r["got"]), r["put_acked"]
    assert [x for x, n in got.items() if n > 1] == [], "queue items taken twice"
    assert sorted(got) == sorted(acked), "acknowledged queue items lost, or unacknowledged ones appeared"
    assert all(r["spawn_results"][call_id] == 3 * i for i, call_id in r["spawned"])
    assert r["dict_stored"] == r["dict_acked"]
    acks = [(float(t), kind) for t, kind in (line.split() for line in (out / "acks").read_text().splitlines())]
    print(f"\nchaos: {len(kills)} SIGKILLs; acknowledged: {r['maps']['inputs']} map inputs, {len(r['spawned'])} "
          f"spawns, {len(acked)} queue items put ({len(r['got'])} taken), {len(r['dict_acked'])} Dict puts; "
          "0 lost, 0 doubled")
    for killed_at, back_at in kills:
        after = [t for t, _ in acks if t > back_at]
        print(f"chaos: SIGKILL → control plane answering again in {back_at - killed_at:.2f}s, workload "
              f"acknowledging again in {(min(after) if after else float('nan')) - killed_at:.2f}s")


def _post(url: str, token: str, path: str, body: dict, key: str, resend: bool = False) -> dict:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack", "Idempotency-Key": key}
    if resend:
        headers["Shoal-Retry"] = "1"
    conn.request("POST", path, body=msgpack.packb(body), headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    assert resp.status == 200, payload
    return msgpack.unpackb(payload)


def test_a_resent_write_is_done_once_even_across_a_sigkill(private_control_plane: ControlPlane) -> None:
    """What a client does when the reply to a write is lost (the control plane died after committing it): send it
    again with the same idempotency key. A queue put_many is not doubled, a get returns the same items and takes
    no more, a Dict pop returns the value it removed."""
    cp = private_control_plane
    token = (cp.home / "token").read_text().strip()
    q = shoal.Queue.from_name("idem-q", create_if_missing=True)
    d = shoal.Dict.from_name("idem-d", create_if_missing=True)
    d["k"] = "v"
    assert q.len() == 0
    qid, did = q.object_id, d.object_id
    put, get, pop = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    batch = [shoal._serialization.dumps(i) for i in range(10)]
    _post(cp.url, token, f"/v1/queues/{qid}/put", {"values": batch}, put)
    first = _post(cp.url, token, f"/v1/queues/{qid}/get", {"n": 3}, get)["values"]
    popped = _post(cp.url, token, f"/v1/dicts/{did}/pop", {"key": shoal._serialization.dumps("k")}, pop)
    cp.kill()  # committed, acknowledged (or not: the reply may have been lost): the client sends them again
    cp.start()
    _post(cp.url, token, f"/v1/queues/{qid}/put", {"values": batch}, put, resend=True)
    again = _post(cp.url, token, f"/v1/queues/{qid}/get", {"n": 3}, get, resend=True)["values"]
    assert again == first == batch[:3]
    assert _post(cp.url, token, f"/v1/dicts/{did}/pop", {"key": shoal._serialization.dumps("k")}, pop,
                 resend=True) == popped
    assert popped["found"] and shoal._serialization.loads(popped["value"]) == "v"
    assert q.len() == 7  # 10 put once, 3 taken once
    assert q.get_many(10) == list(range(3, 10))
    # Another key is another write.
    _post(cp.url, token, f"/v1/queues/{qid}/put", {"values": batch}, uuid.uuid4().hex)
    assert q.len() == 10


def test_a_resent_call_finished_before_a_restart_does_not_run_again(private_control_plane: ControlPlane,
                                                                   tmp_path: Path) -> None:
    """A spawn whose reply was lost, sent again after the control plane finished it and restarted (it holds the call
    in memory no more): the call is not run a second time, and its result is the first one."""
    import chaos_app

    cp = private_control_plane
    token = (cp.home / "token").read_text().strip()
    runs = tmp_path / "runs"
    with chaos_app.app.run(quiet=True):
        fid = chaos_app.mark.object_id
        call_id, key = f"fc-{uuid.uuid4().hex[:20]}", uuid.uuid4().hex
        body = {"kind": "spawn", "call_id": call_id, "args": shoal._serialization.dumps_args((str(runs), 7), {})}
        _post(cp.url, token, f"/v1/functions/{fid}/calls", body, key)
        assert shoal.FunctionCall.from_id(call_id).get(timeout=60) == 7
        cp.kill()
        cp.start()
        again = _post(cp.url, token, f"/v1/functions/{fid}/calls", body, key, resend=True)
        assert again["call_id"] == call_id and shoal._serialization.loads(again["data"]) == 7
        assert chaos_app.mark.remote(str(runs), 8) == 8  # queued after a second run of 7, were there one
    assert sorted(runs.read_text().split()) == ["7", "8"]


def test_a_resent_last_map_batch_after_the_map_finished_and_a_restart_is_accepted(
        private_control_plane: ControlPlane, tmp_path: Path) -> None:
    """A map's last batch whose reply was lost as the control plane died, after the map had finished: sent again
    to the restarted control plane (which holds the finished call in memory no more), it is accepted, and its
    results are the first ones (seen in the mixed workload as a NotFoundError that failed the map)."""
    import chaos_app

    cp = private_control_plane
    token = (cp.home / "token").read_text().strip()
    runs = tmp_path / "runs"
    with chaos_app.app.run(quiet=True):
        fid = chaos_app.mark.object_id
        call_id = f"fc-{uuid.uuid4().hex[:20]}"
        _post(cp.url, token, f"/v1/functions/{fid}/calls", {"kind": "map", "call_id": call_id}, uuid.uuid4().hex)
        batch = {"items": [[i, shoal._serialization.dumps_args((str(runs), i), {})] for i in range(3)], "last": True}
        key = uuid.uuid4().hex
        _post(cp.url, token, f"/v1/calls/{call_id}/inputs", batch, key)
        assert sorted(shoal.FunctionCall.from_id(call_id).iter()) == [0, 1, 2]  # finished, results committed
        cp.kill()
        cp.start()
        assert _post(cp.url, token, f"/v1/calls/{call_id}/inputs", batch, key, resend=True) == {"ok": True}
    assert sorted(runs.read_text().split()) == ["0", "1", "2"]  # nothing ran again


def test_put_many_in_flight_at_a_sigkill_is_never_doubled(auto: AutoStarted, tmp_path: Path) -> None:
    """A stream of put_many batches against the auto-started control plane, SIGKILLed at random moments: each
    acknowledged batch is in the queue exactly once and none appears twice."""
    script = tmp_path / "stream.py"
    script.write_text(
        "import sys, shoal\n"
        "from pathlib import Path\n"
        "out = Path(sys.argv[1])\n"
        "q = shoal.Queue.from_name('stream', create_if_missing=True)\n"
        "n = 0\n"
        "while not (out / 'stop').exists():\n"
        "    q.put_many(list(range(n, n + 200)), partition=f'p{n // 4800}')  # (a partition holds 5,000)\n"
        "    n += 200\n"
        "    (out / 'acked').write_text(str(n))\n"
        "items = []\n"
        "for p in range((n + 4799) // 4800):\n"
        "    while batch := q.get_many(1000, block=False, partition=f'p{p}'):\n"
        "        items.extend(batch)\n"
        "print(n, len(items), len(set(items)), sorted(items) == list(range(n)))\n")
    out = tmp_path / "out"
    out.mkdir()
    client = subprocess.Popen([PYTHON, str(script), str(out)], env=auto.env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            assert wait_for(lambda: (out / "acked").exists() or client.poll() is not None, timeout=120)
            assert client.poll() is None, client.communicate()[1]
            time.sleep(random.uniform(0.2, 1.5))
            killed = auto.kill()
            assert wait_for(lambda k=killed: auto.answering(not_pid=k), timeout=60), "the client did not restart it"
        (out / "stop").write_text("1")
        stdout, stderr = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, stderr
    acked, count, distinct, exact = stdout.split()
    assert exact == "True", f"{acked} put, {count} in the queue, {distinct} distinct"


def test_unreachable_remote_control_plane_fails_within_the_connect_timeout(tmp_path: Path) -> None:
    """A remote control plane nobody answers at: a clear ConnectionError after SHOAL_CONNECT_TIMEOUT, and leaving
    `app.run()` after it does not wait that long again."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "remote.py"
    script.write_text(
        "import time, shoal\n"
        "from shoal.exception import ConnectionError\n"
        "try:\n"
        "    shoal.Dict.from_name('x', create_if_missing=True).put(1, 2)\n"
        "except ConnectionError as exc:\n"
        "    print('first:', exc)\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    shoal.Queue.from_name('y', create_if_missing=True).len()\n"
        "except ConnectionError as exc:\n"
        "    print('again:', exc)\n")
    out = run_script(script, env={"SHOAL_SERVER_URL": f"http://127.0.0.1:{port}", "SHOAL_CONNECT_TIMEOUT": "2",
                                  "SHOAL_HOME": str(tmp_path / "home")}, timeout=50)
    assert out.returncode == 0, out.stderr
    assert f"first: cannot reach the shoal control plane at http://127.0.0.1:{port}" in out.stdout
    assert "SHOAL_CONNECT_TIMEOUT" in out.stdout
    assert "again: cannot reach the shoal control plane" in out.stdout and "unreachable moments ago" in out.stdout
    assert not (tmp_path / "home" / "server.json").exists()  # a remote one is never started locally


def test_remote_control_plane_dying_inside_app_run_fails_within_the_connect_timeout(
        private_control_plane: ControlPlane, tmp_path: Path) -> None:
    """A remote control plane that dies while `app.run()` is open: the next call fails with ConnectionError after
    SHOAL_CONNECT_TIMEOUT, and leaving `app.run()` after it does not wait that long again."""
    script = tmp_path / "remote_run.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from shoal.exception import ConnectionError\n"
        "import chaos_app\n"
        "out = Path(sys.argv[1])\n"
        "try:\n"
        "    with chaos_app.app.run(quiet=True):\n"
        "        assert chaos_app.square.remote(3) == 9\n"
        "        (out / 'running').write_text('1')\n"
        "        while not (out / 'killed').exists():\n"
        "            time.sleep(0.05)\n"
        "        t = time.monotonic()\n"
        "        try:\n"
        "            chaos_app.square.remote(4)\n"
        "        finally:\n"
        "            print(f'call failed after {time.monotonic() - t:.1f}s', flush=True)\n"
        "            t = time.monotonic()\n"
        "except ConnectionError as exc:\n"
        "    print(f'left app.run() in {time.monotonic() - t:.1f}s: {exc}')\n")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "SHOAL_SERVER_URL": private_control_plane.url, "SHOAL_CONNECT_TIMEOUT": "2",
           "PYTHONPATH": os.pathsep.join([str(APPS_DIR), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([PYTHON, str(script), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert wait_for(lambda: (out / "running").exists() or proc.poll() is not None, timeout=120)
        private_control_plane.kill()
        (out / "killed").write_text("1")
        stdout, stderr = proc.communicate(timeout=45)  # before: 60 s for the call, 60 s more to leave app.run()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "call failed after" in stdout
    assert "left app.run() in" in stdout and "cannot reach the shoal control plane" in stdout, stdout
    print(stdout)


def test_bad_connect_timeout_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal._client.transport import connect_timeout
    from shoal.exception import InvalidError

    monkeypatch.setenv("SHOAL_CONNECT_TIMEOUT", "soon")
    with pytest.raises(InvalidError, match="SHOAL_CONNECT_TIMEOUT"):
        connect_timeout()
    monkeypatch.setenv("SHOAL_CONNECT_TIMEOUT", "2.5")
    assert connect_timeout() == 2.5


def test_up_in_background_ignores_a_shoal_folder_in_the_working_directory(auto: AutoStarted, tmp_path: Path) -> None:
    """`shoal up -d` from a project with a `shoal/` folder of its own: the control plane imports the caller's shoal,
    not that folder, and runs in its state directory."""
    project = tmp_path / "project"
    (project / "shoal").mkdir(parents=True)
    (project / "shoal" / "__init__.py").write_text("raise ImportError('the project folder was imported')\n")
    # As the `shoal` console script runs: from a file outside the working directory.
    launcher = tmp_path / "bin" / "shoal-cli"
    launcher.parent.mkdir()
    launcher.write_text("import sys\nfrom shoal.cli import main\nsys.exit(main())\n")
    out = subprocess.run([PYTHON, str(launcher), "up", "-d"], env=auto.env, cwd=project, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    info = auto.info()
    assert info is not None and auto.answering()
    assert Path(f"/proc/{info['pid']}/cwd").resolve() == auto.home.resolve()
    assert "the project folder was imported" not in (auto.home / "server.log").read_text()


def test_a_client_does_not_start_a_control_plane_someone_else_started(private_control_plane: ControlPlane,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an auto-started control plane is started again by clients: one started otherwise (here by the test, as
    `shoal up` in a terminal would) is waited for, so whoever started it can start it again."""
    from shoal._client import transport

    cp = private_control_plane
    client = transport.get_client()
    client.call("GET", "/v1/apps")
    killed = cp.proc.pid
    cp.kill()
    monkeypatch.setattr(transport, "RECONNECT_WINDOW_S", 2.0)
    with pytest.raises(ShoalConnectionError, match="cannot reach the shoal control plane"):
        client.call("GET", "/v1/apps")
    assert json.loads((cp.home / "server.json").read_text())["pid"] == killed  # nobody started another
    cp.start()  # its starter can
    assert "apps" in client.call("GET", "/v1/apps")
