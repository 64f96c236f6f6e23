"""Servers (`@app.server()`) against real containers: the guide's file server (503 at zero, then 200), proxy auth
(401 without tokens, and no container started for it), 429 over `max_concurrency`, containers that never become
ready (no listener; 127.0.0.1 only), a dead server process replaced after failed health checks, sticky sessions
(`Modal-Session-ID`), the drain of `exit_grace_period` (rolling redeploy, graceful stop), and `Server.from_name`
with the `shoal server` CLI.

Waits are bounded (deadlines, never timings): a first container start may include an image build."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import shoal as modal
from shoal._client.transport import get_client
from shoal.controlplane.ingress_policy import INVALID_CREDENTIALS, MISSING_CREDENTIALS

from ..conftest import APPS_DIR, ControlPlane, _use_home, run_cli, run_script, wait_for

FIRST_S = 180.0  # a first container start may include an image build: a deadline, not a timing
HTTP_TIMEOUT = (10, 90)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def get(url: str, session: requests.Session | None = None, **kwargs: Any) -> requests.Response:
    return (session or requests).get(url, timeout=kwargs.pop("timeout", HTTP_TIMEOUT), **kwargs)


def until_served(url: str, timeout: float = FIRST_S, **kwargs: Any) -> tuple[requests.Response, list[int]]:
    """GET `url` until it is answered 200 (a Server at zero answers 503 while its container starts); returns that
    response and the statuses before it. Anything but 503 before the 200 fails the test."""
    before: list[int] = []
    answer: list[requests.Response] = []

    def served() -> bool:
        r = get(url, **kwargs)
        if r.status_code == 200:
            answer.append(r)
            return True
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.headers.get("retry-after") == "1", r.headers
        before.append(r.status_code)
        return False

    assert wait_for(served, timeout=timeout, interval=0.1), f"{url} still answers {before[-1:]} after {timeout}s"
    return answer[0], before


def needs_own_network(cp: ControlPlane) -> None:
    """Two containers of one Server both listen on port 8000: only sandboxed containers (each in its own network
    namespace) can; under isolation=process they would share the host's port."""
    log = (cp.home / "server.log").read_text() if (cp.home / "server.log").exists() else ""
    if "isolation=process" in log:
        pytest.skip("several containers of a Server on one port need sandboxed containers (isolation=process here)")


def containers_of(function_id: str | None) -> list[dict[str, Any]]:
    assert function_id
    return [c for c in get_client().call("GET", "/v1/containers")["containers"] if c["function_id"] == function_id]


def ready_ids(function_id: str | None) -> set[str]:
    return {c["container_id"] for c in containers_of(function_id) if c["state"] == "ready"}


def app_log(app_id: str | None) -> list[dict[str, Any]]:
    return get_client().call("GET", f"/v1/apps/{app_id}/logs?after=-1&timeout=0")["entries"]


def create_token(*apps: str) -> tuple[str, str]:
    args = [a for app in apps for a in ("--app", app)]
    data = json.loads(ok(run_cli("workspace", "proxy-tokens", "create", *args, "--json")).stdout)
    return data["token_id"], data["token_secret"]


@pytest.fixture
def stop_after() -> Iterator[list[str]]:
    """Names of deployed apps to stop when the test ends."""
    names: list[str] = []
    yield names
    for name in names:
        run_cli("app", "stop", name, "-y")


def deploy(name: str, version: int, *args: str) -> None:
    ok(run_cli("deploy", str(APPS_DIR / "server_versioned_app.py"), "--name", name, *args,
               env={"SERVER_APP_VERSION": str(version)}, cwd=APPS_DIR))


def deploy_versioned(cp: ControlPlane, stop_after: list[str], prefix: str) -> tuple[str, modal.Server, str]:
    """Deploy version 1 of server_versioned_app.py under a new name (stopped when the test ends): the name, its
    Server `Versioned` looked up, and that Server's URL."""
    needs_own_network(cp)
    name = unique(prefix)
    stop_after.append(name)
    deploy(name, 1)
    server = modal.Server.from_name(name, "Versioned")
    url = server.get_url()
    assert url
    return name, server, url


class Held:
    """GET requests held by the handler (`/slow?release=PATH`) in threads, until `release()` creates PATH."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.release_file = tmp_path / f"release-{uuid.uuid4().hex[:8]}"
        self.url = f"{url}/slow?s=60&release={self.release_file}"
        self.pool = concurrent.futures.ThreadPoolExecutor(8)

    def start(self) -> concurrent.futures.Future:
        return self.pool.submit(get, self.url)

    def release(self) -> None:
        self.release_file.touch()

    def close(self) -> None:
        self.release()
        self.pool.shutdown(wait=True)


# -- 1. the guide's example -------------------------------------------------------------------------------------------
def test_seed_file_server_answers_503_at_zero_then_lists_the_root(control_plane: ControlPlane) -> None:
    import server_seed_app

    with server_seed_app.app.run(quiet=True):
        url = server_seed_app.Server.get_url()
        assert url and url.startswith("http://")
        first = get(url)  # no container yet: no queue, an immediate 503, and a container starts
        assert first.status_code == 503, first.text
        assert first.headers["retry-after"] == "1"
        assert containers_of(server_seed_app.Server.object_id)  # the request started one
        r, _ = until_served(url)
        assert "Directory listing for /" in r.text
        for entry in ("etc/", "usr/", "tmp/"):
            assert f'href="{entry}"' in r.text
        assert get(url + "/etc/").status_code == 200  # root-relative links work
        assert "Directory listing for /etc/" in get(url + "/etc/").text


# -- 2. proxy auth ----------------------------------------------------------------------------------------------------
def test_authenticated_server_needs_proxy_tokens_and_rejected_requests_start_nothing(
        control_plane: ControlPlane) -> None:
    import server_http_app

    good_id, good_secret = create_token()
    other_id, other_secret = create_token("other-app")
    try:
        with server_http_app.app.run(quiet=True):
            server = server_http_app.Private
            url = server.get_url()
            for _ in range(3):
                r = get(url)
                assert r.status_code == 401 and r.text == MISSING_CREDENTIALS
            wrong = get(url, headers={"Modal-Key": good_id, "Modal-Secret": "ws-wrong"})
            assert wrong.status_code == 401 and wrong.text == INVALID_CREDENTIALS
            scoped = get(url, headers={"Modal-Key": other_id, "Modal-Secret": other_secret})
            assert scoped.status_code == 403 and "server-http" in scoped.text
            # A request at zero starts a container at once (it is listed right away), so none listed now means
            # the rejected requests started none: they never reach the Server's pool.
            assert containers_of(server.object_id) == []
            listed = ok(run_cli("container", "list", "--app-id", server_http_app.app.app_id)).stdout
            assert listed.strip() == "No containers.", listed

            creds = {"Modal-Key": good_id, "Modal-Secret": good_secret}
            r, before = until_served(url, headers=creds)
            assert before  # the first authenticated request found no container
            assert r.json()["saw_credentials"] is False  # the proxy removes its own headers
            assert len(containers_of(server.object_id)) == 1
            assert get(url).status_code == 401  # still required once a container is up
    finally:
        for token_id in (good_id, other_id):
            run_cli("workspace", "proxy-tokens", "delete", token_id, "-y")


# -- 3. max_concurrency ---------------------------------------------------------------------------------------------
def test_requests_over_max_concurrency_get_429(control_plane: ControlPlane, tmp_path: Path) -> None:
    import server_http_app

    with server_http_app.app.run(quiet=True):
        server = server_http_app.Capped  # max_concurrency=2, max_containers=1
        url = server.get_url()
        until_served(url)
        held = Held(url, tmp_path)
        try:
            futures = [held.start() for _ in range(3)]
            assert wait_for(lambda: any(f.done() for f in futures), timeout=60)
            done = [f.result() for f in futures if f.done()]
            assert [r.status_code for r in done] == [429], [(r.status_code, r.text) for r in done]
            assert "max_concurrency" in done[0].text
            [container] = containers_of(server.object_id)
            assert container["running_inputs"] == 2  # the two others are held in the one container
            assert get(url).status_code == 429  # a fast request too: every slot is taken
            held.release()
            statuses = sorted(f.result().status_code for f in futures)
            assert statuses == [200, 200, 429]
        finally:
            held.close()
        assert get(url).status_code == 200  # slots free again
        assert len(containers_of(server.object_id)) == 1  # max_containers=1: a 429 starts no other


# -- 4. containers that never become ready ----------------------------------------------------------------------------
@pytest.mark.parametrize("server_name", ["NeverListens", "LoopbackOnly"])
def test_a_server_that_does_not_listen_on_0000_fails_its_start_with_the_reason(
        control_plane: ControlPlane, server_name: str) -> None:
    import server_http_app

    server = getattr(server_http_app, server_name)  # startup_timeout=2; no listener / 127.0.0.1 only
    with server_http_app.app.run(quiet=True):
        url = server.get_url()
        first = get(url)
        assert first.status_code == 503
        [started] = containers_of(server.object_id)
        cid = started["container_id"]
        assert wait_for(lambda: cid not in {c["container_id"] for c in containers_of(server.object_id)},
                        timeout=FIRST_S)  # failed and gone, never ready
        # Once a start has failed, the 503 says why: the runtime's "did not listen on 0.0.0.0:8000 within 2s
        # (startup_timeout)", or the control plane's "did not become ready within 2s" where its own deadline came
        # first. Requests go on starting containers, which fail the same way.
        bodies: list[str] = []

        def says_why() -> bool:
            r = get(url)
            assert r.status_code == 503, r.text
            bodies.append(r.text)
            return "last container start failed" in r.text and "within 2s" in r.text

        assert wait_for(says_why, timeout=60, interval=0.2), bodies[-3:]
        # The container's own reason, in the app's log (the runtime's check usually ends it first).
        reason = "did not listen on 0.0.0.0:8000 within 2s (startup_timeout)"

        def logged() -> bool:
            get(url)  # keep starting containers, should the control plane's deadline win a few times
            return any(reason in e["data"] for e in app_log(server_http_app.app.app_id))

        assert wait_for(logged, timeout=FIRST_S, interval=0.5), app_log(server_http_app.app.app_id)
        assert not ready_ids(server.object_id)


# -- 5. health checks -------------------------------------------------------------------------------------------------
def test_a_container_whose_server_process_dies_is_replaced(control_plane: ControlPlane, tmp_path: Path) -> None:
    import server_http_app

    cp = ControlPlane(tmp_path / "home", env={"SHOAL_SERVER_HEALTH_INTERVAL_S": "0.5"}).start()
    _use_home(cp.home)
    try:
        with server_http_app.app.run(quiet=True):
            server = server_http_app.Mortal
            url = server.get_url()
            r, _ = until_served(url)
            first = r.json()["container"]
            assert first in ready_ids(server.object_id)
            with pytest.raises(requests.RequestException):  # the process ends mid-request...
                r = get(url + "/die")
                if r.status_code == 502:  # ...the proxy answers 502 when it saw the connection close
                    raise requests.ConnectionError(r.text)
            # ...but the container's runtime is still there: only the health checks notice.
            answers: list[Any] = []

            def served_elsewhere() -> bool:
                try:
                    r = get(url, timeout=(5, 10))
                except requests.RequestException as exc:
                    answers.append(repr(exc))
                    return False
                answers.append(r.status_code)
                return r.status_code == 200 and r.json()["container"] != first

            assert wait_for(served_elsewhere, timeout=60, interval=0.2), answers[-5:]
            assert set(answers) <= {502, 503, 200}, answers
            assert first not in {c["container_id"] for c in containers_of(server.object_id)}
            log = [e["data"] for e in app_log(server_http_app.app.app_id) if e["container_id"] == first]
            assert any("failed its health checks" in line for line in log), log
            for _ in range(5):
                assert get(url).status_code == 200
    finally:
        cp.stop()
        _use_home(control_plane.home)


def test_a_request_in_flight_when_its_container_stops_gets_502_and_is_not_replayed(
        control_plane: ControlPlane, tmp_path: Path) -> None:
    """Servers have no retries: a request cut by its container's end is answered 502 and goes nowhere else (it
    is not queued as a function input, which would start a container for it and send it to one)."""
    import server_http_app

    with server_http_app.app.run(quiet=True):
        server = server_http_app.Mortal  # min_containers=0
        url = server.get_url()
        r, _ = until_served(url)
        first = r.json()["container"]
        held = Held(url, tmp_path)
        try:
            slow = held.start()
            assert wait_for(lambda: any(c["running_inputs"] for c in containers_of(server.object_id)), timeout=30)
            ok(run_cli("container", "stop", first, "-y"))  # not graceful: it ends now
            # Nothing is waiting for a container, so none starts (min_containers=0).
            assert {c["container_id"] for c in containers_of(server.object_id)} <= {first}
            cut = slow.result(timeout=60)
            assert cut.status_code == 502, cut.text
            stats = get_client().call("GET", f"/v1/functions/{server.object_id}/stats")
            assert stats["backlog"] == 0, stats  # a Server has no queue: the cut request waits for nothing
            assert wait_for(lambda: containers_of(server.object_id) == [], timeout=30)
        finally:
            held.close()
        logged = get_client().call("GET", f"/v1/functions/{server.object_id}/requests")["requests"]
        assert [(e["path"], e["status"], e["container_id"]) for e in logged[-1:]] == [("/slow", 502, first)]
        r, before = until_served(url)  # the next request starts one, as at zero
        assert before and r.json()["container"] != first
        assert [c["running_inputs"] for c in containers_of(server.object_id)] == [0]


# -- 6. sticky sessions -------------------------------------------------------------------------------------------
def test_session_ids_stick_to_a_container_and_requests_spread_over_the_pool(control_plane: ControlPlane) -> None:
    needs_own_network(control_plane)
    import server_sticky_app

    with server_sticky_app.app.run(quiet=True):
        server = server_sticky_app.Sticky  # min_containers=2, target_concurrency unset
        url = server.get_url()
        assert wait_for(lambda: len(ready_ids(server.object_id)) == 2, timeout=FIRST_S), \
            containers_of(server.object_id)
        pool = ready_ids(server.object_id)
        s = requests.Session()
        abc = [get(url, s, headers={"Modal-Session-ID": "abc"}).json() for _ in range(100)]
        assert len({a["container"] for a in abc}) == 1, abc
        assert {a["session"] for a in abc} == {"abc"}  # the header reaches the process
        spread = {get(url, s, headers={"Modal-Session-ID": f"user-{i}"}).json()["container"] for i in range(40)}
        assert spread == pool
        for i in range(10):  # each session keeps its container
            key = f"user-{i}"
            assert len({get(url, s, headers={"Modal-Session-ID": key}).json()["container"] for _ in range(5)}) == 1
        plain = {get(url, s).json()["container"] for _ in range(20)}  # no session: spread over the pool
        assert plain == pool


# -- 7. drain ---------------------------------------------------------------------------------------------------------
def test_rolling_redeploy_drains_a_request_in_flight(control_plane: ControlPlane, stop_after: list[str],
                                                     tmp_path: Path) -> None:
    name, server, url = deploy_versioned(control_plane, stop_after, "server-drain")
    r, _ = until_served(url)
    old = r.json()
    assert old["version"] == "1"
    held = Held(url, tmp_path)
    try:
        slow = held.start()
        assert wait_for(lambda: any(c["running_inputs"] for c in containers_of(server.object_id)), timeout=30)

        deploy(name, 2)  # rolling: the old container serves until a new one is ready, then drains
        assert wait_for(lambda: get(url).json()["version"] == "2", timeout=FIRST_S)
        states = {c["container_id"]: c["state"] for c in containers_of(server.object_id)}
        assert states.get(old["container"]) == "draining", states  # busy: it finishes what it runs
        assert not slow.done()
        held.release()
        done = slow.result(timeout=60)
        assert done.status_code == 200, done.text
        assert done.json()["container"] == old["container"] and done.json()["version"] == "1"
    finally:
        held.close()
    assert wait_for(lambda: old["container"] not in {c["container_id"] for c in containers_of(server.object_id)},
                    timeout=30)
    after = [get(url).json() for _ in range(10)]
    assert {a["version"] for a in after} == {"2"}
    assert old["container"] not in {a["container"] for a in after}


def test_graceful_stop_takes_no_new_requests_and_ends_after_the_grace_period(
        control_plane: ControlPlane, stop_after: list[str], tmp_path: Path) -> None:
    name, server, url = deploy_versioned(control_plane, stop_after, "server-stop")
    r, _ = until_served(url)
    first = r.json()["container"]
    held = Held(url, tmp_path)
    try:
        finishes = held.start()
        assert wait_for(lambda: any(c["running_inputs"] for c in containers_of(server.object_id)), timeout=30)
        out = ok(run_cli("container", "stop", "--graceful", first, "-y")).stdout
        assert "draining" in out
        # New requests never reach the draining container: 503 until the replacement (min_containers=1) is up.
        r, _ = until_served(url)
        second = r.json()["container"]
        assert second != first
        states = {c["container_id"]: c["state"] for c in containers_of(server.object_id)}
        assert states.get(first) == "draining", states
        held.release()
        done = finishes.result(timeout=60)
        assert done.status_code == 200 and done.json()["container"] == first
        assert wait_for(lambda: first not in {c["container_id"] for c in containers_of(server.object_id)},
                        timeout=30)
    finally:
        held.close()

    # A request that outlives exit_grace_period (10 s) is cut when the container stops.
    held = Held(url, tmp_path)
    try:
        outlives = held.start()
        assert wait_for(lambda: any(c["running_inputs"] for c in containers_of(server.object_id)), timeout=30)
        ok(run_cli("container", "stop", "--graceful", second, "-y"))
        assert wait_for(outlives.done, timeout=60)
        try:
            cut = outlives.result()
            assert cut.status_code == 502, cut.text
        except requests.RequestException:
            pass  # the connection closed before the proxy could answer: cut too
        logged = json.loads(ok(run_cli("server", "requests", name, "Versioned", "--json")).stdout)
        assert [(e["path"], e["status"], e["container_id"]) for e in logged[-1:]] == [("/slow", 502, second)]
        r, _ = until_served(url)
        assert r.json()["container"] not in (first, second)
    finally:
        held.close()


# -- 8. lookups and the CLI -------------------------------------------------------------------------------------------
def test_server_from_name_and_the_server_cli(control_plane: ControlPlane, stop_after: list[str],
                                            tmp_path: Path) -> None:
    name, server, url = deploy_versioned(control_plane, stop_after, "server-cli")
    script = tmp_path / "lookup.py"
    script.write_text(textwrap.dedent(f"""
        import shoal as modal
        server = modal.Server.from_name({name!r}, "Versioned")
        print(server.get_url())
        print(server.info().port, server.info().app_name)
    """))
    out = ok(run_script(script)).stdout.split()
    assert out == [url, "8000", name]

    info = ok(run_cli("server", "info", name, "Versioned")).stdout
    assert url in info and "8000" in info and server.object_id in info
    as_json = json.loads(ok(run_cli("server", "info", name, "Versioned", "--json")).stdout)
    assert as_json["url"] == url and as_json["unauthenticated"] is True

    r, before = until_served(url)
    container = r.json()["container"]
    for path in ("/a", "/b?x=1"):
        assert get(url + path).status_code == 200
    listed = json.loads(ok(run_cli("server", "requests", name, "Versioned", "--json")).stdout)
    assert [(e["path"], e["status"]) for e in listed[-2:]] == [("/a", 200), ("/b", 200)]
    assert listed[-1]["container_id"] == container
    assert len(listed) == len(before) + 3
    assert all(e["status"] == 503 and e["container_id"] is None for e in listed[:len(before)])
    table = ok(run_cli("server", "requests", name, "Versioned")).stdout
    assert "/a" in table and "200" in table and container in table
    logs = ok(run_cli("server", "logs", name, "Versioned")).stdout
    assert "serving version 1" in logs, logs

    settings = ok(run_cli("server", "autoscaler", "settings", name, "Versioned")).stdout
    assert "min_containers" in settings and "no autoscaling" in settings
    updated = ok(run_cli("server", "autoscaler", "update", name, "Versioned", "--min-containers", "2",
                         "--target-concurrency", "4")).stdout
    assert "runtime override" in updated
    now = json.loads(ok(run_cli("server", "autoscaler", "settings", name, "Versioned", "--json")).stdout)
    assert now["settings"]["min_containers"] == 2 and now["settings"]["target_concurrency"] == 4
    assert server.autoscaler.settings().min_containers == 2
    assert wait_for(lambda: len(ready_ids(server.object_id)) == 2, timeout=FIRST_S)
    bad = run_cli("server", "autoscaler", "update", name, "Versioned", "--min-containers", "3",
                  "--max-containers", "1")
    assert bad.returncode != 0
    missing = run_cli("server", "info", name, "NoSuchServer")
    assert missing.returncode != 0 and "NoSuchServer" in (missing.stderr + missing.stdout)
