"""Web endpoints as the user guide shows them (seed "Web endpoints"), each snippet a test app in tests/apps/web_*.py
run with `import shoal as modal` and hit over real HTTP through the ingress proxy: `fastapi_endpoint` (plain,
query parameters, POST bodies, Pydantic models, HTML responses, `docs=True`), `asgi_app`, `wsgi_app`,
`web_server`, a parametrized class (one container pool per parameter value), bearer-token auth with a named
secret, the client's IP address, `get_web_url()` across processes, and a web URL fetched from inside a container.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import shoal as modal
from shoal._client.transport import get_client

from ..conftest import ControlPlane, run_cli, run_script, wait_for

pytestmark = pytest.mark.usefixtures("control_plane")

FIRST_S = 180.0  # a cold start may include a first image build: a deadline, not a timing
HTTP_TIMEOUT = (10, FIRST_S)  # (connect, read) — the first request waits for its container


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def get(url: str, **kwargs: Any) -> requests.Response:
    return requests.get(url, timeout=HTTP_TIMEOUT, **kwargs)


def post(url: str, **kwargs: Any) -> requests.Response:
    return requests.post(url, timeout=HTTP_TIMEOUT, **kwargs)


def web_port(cp: ControlPlane) -> int:
    return json.loads((cp.home / "server.json").read_text())["web_port"]


def containers_of(app_id: str) -> list[dict[str, Any]]:
    return [c for c in get_client().call("GET", "/v1/containers")["containers"] if c["app_id"] == app_id]


@pytest.fixture
def stop_after() -> Iterator[list[str]]:
    """Names of deployed apps to stop when the test ends."""
    names: list[str] = []
    yield names
    for name in names:
        run_cli("app", "stop", name, "-y")


# -- simple endpoints ---------------------------------------------------------------------------------------------
def test_simple_endpoint_returns_hello_world(control_plane: ControlPlane) -> None:
    import web_simple_app

    with web_simple_app.app.run(quiet=True):
        url = web_simple_app.f.get_web_url()
        assert url and url.startswith("http://127.")
        r = get(url)
        assert r.status_code == 200, r.text
        assert r.content == b'"Hello world!"'
        assert r.headers["content-type"] == "application/json"
        assert get(url).json() == "Hello world!"  # a warm container answers the same
        assert web_simple_app.f.get_web_url() == url
        # The same route by Host name on the proxy's main address (`<label>.localhost`; ephemeral: `-dev`).
        by_host = get(f"http://127.0.0.1:{web_port(control_plane)}/",
                      headers={"Host": f"shoal--web-simple-f-dev.localhost:{web_port(control_plane)}"})
        assert by_host.status_code == 200 and by_host.json() == "Hello world!"

    def gone() -> bool:
        try:
            return get(url).status_code == 404
        except requests.ConnectionError:
            return True

    assert wait_for(gone, timeout=30), "the URL still answers after its app stopped"


def test_unknown_address_is_404(control_plane: ControlPlane) -> None:
    r = get(f"http://127.0.0.1:{web_port(control_plane)}/")
    assert r.status_code == 404
    assert "no web endpoint" in r.text
    r = get(f"http://127.0.0.1:{web_port(control_plane)}/", headers={"Host": "shoal--no-such-label.localhost"})
    assert r.status_code == 404


def test_query_parameter_becomes_an_argument() -> None:
    import web_query_app

    with web_query_app.app.run(quiet=True):
        url = web_query_app.square.get_web_url()
        r = get(url + "?x=42")
        assert r.status_code == 200, r.text
        assert r.content == b'{"square":1764}'
        assert get(url, params={"x": 7}).json() == {"square": 49}
        missing = get(url)
        assert missing.status_code == 422
        assert get(url + "?x=notanint").status_code == 422
        assert post(url + "?x=1").status_code == 405  # method defaults to GET


def test_post_endpoint_takes_a_json_dict() -> None:
    import web_post_app

    with web_post_app.app.run(quiet=True):
        url = web_post_app.square.get_web_url()
        r = post(url, data=b'{"x": 42}', headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.content == b'{"square":1764}'
        assert get(url).status_code == 405


def test_pydantic_model_and_html_response() -> None:
    import web_pydantic_app

    with web_pydantic_app.app.run(quiet=True):
        url = web_pydantic_app.f.get_web_url()
        data = {"name": "Erik", "qty": 10}
        r = post(url, json=data)
        assert r.status_code == 200, r.text
        assert r.text == "<html>Hello, Erik!</html>"
        assert r.headers["content-type"].startswith("text/html")
        assert post(url, json={"name": "Ann"}).text == "<html>Hello, Ann!</html>"  # qty defaults to 42
        bad = post(url, json={"qty": "many"})
        assert bad.status_code == 422
        assert {tuple(e["loc"]) for e in bad.json()["detail"]} >= {("body", "name"), ("body", "qty")}


def test_docs_true_serves_docs_and_openapi() -> None:
    import web_misc_app

    with web_misc_app.app.run(quiet=True):
        url = web_misc_app.documented.get_web_url()
        assert get(url, params={"name": "Erik"}).json() == {"hello": "Erik"}
        docs = get(url + "/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        spec = get(url + "/openapi.json").json()
        assert "/" in spec["paths"] and "get" in spec["paths"]["/"]


def test_docs_are_off_by_default() -> None:
    import web_simple_app

    with web_simple_app.app.run(quiet=True):
        url = web_simple_app.f.get_web_url()
        assert get(url).status_code == 200
        assert get(url + "/docs").status_code == 404
        assert get(url + "/openapi.json").status_code == 404


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_guides_curl_commands(tmp_path: Path) -> None:
    """The guide's own `curl` lines, and a body sent after `Expect: 100-continue` (curl's habit for big bodies)."""
    import web_asgi_app
    import web_post_app
    import web_query_app

    def curl(*args: str) -> str:
        return ok(subprocess.run(["curl", "-sS", "--fail-with-body", "--max-time", str(int(FIRST_S)), *args],
                                 capture_output=True, text=True, timeout=FIRST_S + 10)).stdout

    with web_query_app.app.run(quiet=True), web_post_app.app.run(quiet=True), web_asgi_app.app.run(quiet=True):
        assert curl(web_query_app.square.get_web_url() + "?x=42") == '{"square":1764}'
        assert curl("-X", "POST", "-H", "Content-Type: application/json", "--data-binary", '{"x": 42}',
                    web_post_app.square.get_web_url()) == '{"square":1764}'
        body = tmp_path / "body.json"
        body.write_text(json.dumps({"data": "x" * 300_000}))
        echoed = curl("-X", "POST", "-H", "Content-Type: application/json", "-H", "Expect: 100-continue",
                      "--data-binary", f"@{body}", web_asgi_app.fastapi_app.get_web_url() + "/echo")
        assert json.loads(echoed) == {"data": "x" * 300_000}


# -- ASGI and WSGI apps -------------------------------------------------------------------------------------------
def test_asgi_fastapi_echo() -> None:
    import web_asgi_app

    with web_asgi_app.app.run(quiet=True):
        url = web_asgi_app.fastapi_app.get_web_url()
        body = {"hello": "world", "n": [1, 2, 3]}
        r = post(url + "/echo", json=body)
        assert r.status_code == 200, r.text
        assert r.json() == body
        assert get(url + "/echo").status_code == 405
        assert get(url + "/nope").status_code == 404


def test_allow_concurrent_inputs_is_deprecated() -> None:
    """The seed's `allow_concurrent_inputs=1000` is an error in Modal 1.6 (renamed `@modal.concurrent`)."""
    app = modal.App(unique("web-deprecated"))
    image = modal.Image.debian_slim().pip_install("fastapi[standard]")
    with pytest.raises(modal.exception.DeprecationError, match="concurrent"):
        @app.function(image=image, allow_concurrent_inputs=1000)
        @modal.asgi_app()
        def fastapi_app():  # pragma: no cover - never decorated
            raise AssertionError
    with pytest.raises(modal.exception.DeprecationError):
        @app.cls(allow_concurrent_inputs=1000)
        class Server:  # pragma: no cover
            pass
    with pytest.raises(modal.exception.DeprecationError, match="fastapi_endpoint"):
        modal.web_endpoint()


def test_wsgi_flask_echo() -> None:
    import web_wsgi_app

    with web_wsgi_app.app.run(quiet=True):
        url = web_wsgi_app.flask_app.get_web_url()
        body = {"hello": "flask", "nested": {"a": 1}}
        r = post(url + "/echo", json=body)
        assert r.status_code == 200, r.text
        assert r.json() == body
        assert get(url + "/echo").status_code == 405
        assert get(url + "/missing").status_code == 404


# -- web servers --------------------------------------------------------------------------------------------------
def test_web_server_file_server_lists_the_root() -> None:
    import web_server_app

    with web_server_app.app.run(quiet=True):
        url = web_server_app.my_file_server.get_web_url()
        r = get(url)
        assert r.status_code == 200, r.text
        assert "Directory listing for /" in r.text
        for entry in ("etc/", "usr/", "tmp/"):
            assert f'href="{entry}"' in r.text, r.text
        sub = get(url + "/etc/")
        assert sub.status_code == 200 and "Directory listing for /etc/" in sub.text


def test_parametrized_class_gets_a_pool_per_parameter_value() -> None:
    import web_cls_app

    with web_cls_app.app.run(quiet=True):
        url = web_cls_app.Server().files.get_web_url()
        assert url and url.startswith("http://127.")
        default = get(url)
        assert default.status_code == 200, default.text
        root = get(url + "?root=%2F")
        assert root.status_code == 200, root.text
        assert default.text != root.text
        assert "Directory listing for /" in root.text and 'href="etc/"' in root.text
        assert 'href="web_cls_app.py"' in default.text  # "." is the container's working directory, with the source
        assert 'href="etc/"' not in default.text
        assert get(url + "?root=%2F").text == root.text  # the same pool again
        assert get(url).text == default.text

        app_id = web_cls_app.app.app_id
        assert wait_for(lambda: len({c["function_id"] for c in containers_of(app_id)}) >= 2, timeout=30)
        pools = {c["function_id"] for c in containers_of(app_id)}
        assert len(pools) == 2, containers_of(app_id)
        listed = ok(run_cli("container", "list")).stdout
        assert sum(app_id in line for line in listed.splitlines()) >= 2, listed

        bad = get(url + "?nope=1")  # unknown query keys are not parameters: the default pool
        assert bad.status_code == 200 and 'href="web_cls_app.py"' in bad.text


# -- authentication -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_secret(control_plane):
    out = run_cli("secret", "create", "my-web-auth-token", "AUTH_TOKEN=secret-random-token", "--force")
    assert out.returncode == 0, out.stderr
    yield
    run_cli("secret", "delete", "my-web-auth-token", "-y")


def test_bearer_token_auth_with_a_named_secret(auth_secret) -> None:
    import web_auth_app

    with web_auth_app.app.run(quiet=True):
        url = web_auth_app.f.get_web_url()
        good = get(url, headers={"Authorization": "Bearer secret-random-token"})
        assert good.status_code == 200, good.text
        assert good.json() == "success!"
        wrong = get(url, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        assert wrong.json() == {"detail": "Incorrect bearer token"}
        assert wrong.headers["www-authenticate"] == "Bearer"
        missing = get(url)
        assert missing.status_code == 401, missing.text  # FastAPI >= 0.122; older FastAPI answered 403


def test_client_ip_address() -> None:
    import web_ip_app

    with web_ip_app.app.run(quiet=True):
        r = get(web_ip_app.get_ip_address.get_web_url())
        assert r.status_code == 200, r.text
        assert r.json() == "Your IP address is 127.0.0.1"


# -- URLs ---------------------------------------------------------------------------------------------------------
def test_get_web_url_is_the_same_from_another_process(stop_after, tmp_path: Path) -> None:
    import web_simple_app

    name = unique("web-url")
    stop_after.append(name)
    web_simple_app.app.deploy(name=name)
    url = web_simple_app.f.get_web_url()
    assert url and url.startswith("http://127.")
    script = tmp_path / "url_script.py"
    script.write_text(textwrap.dedent(f"""
        import shoal as modal
        f = modal.Function.from_name({name!r}, "f")
        print(f.get_web_url())
        print(modal.Function.from_name({name!r}, "f").get_web_url())
    """))
    lines = ok(run_script(script)).stdout.split()
    assert lines == [url, url]
    assert modal.Function.from_name(name, "f").get_web_url() == url
    assert get(url).json() == "Hello world!"


def test_non_web_function_has_no_web_url() -> None:
    import web_misc_app

    with web_misc_app.app.run(quiet=True):
        assert web_misc_app.fetch.get_web_url() is None


def test_web_url_fetched_from_inside_a_container() -> None:
    import web_misc_app

    with web_misc_app.app.run(quiet=True):
        url = web_misc_app.documented.get_web_url()
        status, body = web_misc_app.fetch.remote(url + "?name=inside")
        assert status == 200
        assert json.loads(body) == {"hello": "inside"}


# -- containers that cannot serve ---------------------------------------------------------------------------------
def test_a_web_container_that_cannot_start_answers_503_with_the_reason() -> None:
    import web_broken_app

    with web_broken_app.app.run(quiet=True):
        r = get(web_broken_app.never_listens.get_web_url())
        assert r.status_code == 503, r.text
        assert "could not start" in r.text and "8000" in r.text and "startup_timeout" in r.text
        r = get(web_broken_app.failing_lifespan.get_web_url())
        assert r.status_code == 503, r.text
        assert "the database is unreachable" in r.text  # the lifespan's own error


# -- a newer app claiming a label takes it over -------------------------------------------------------------------
TAKEOVER_APP = '''
import sys
import time

import shoal as modal

app = modal.App("{name}")


@app.function()
@modal.asgi_app()
def page():
    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}})
        await send({{"type": "http.response.body", "body": b"{which}"}})
    return asgi


if __name__ == "__main__":
    with app.run():
        print(page.get_web_url(), flush=True)
        time.sleep(float(sys.argv[1]))
'''


def test_a_newer_ephemeral_app_takes_its_label_over(tmp_path: Path) -> None:
    """Two runs of one app (as two `shoal serve`s would be): one `-dev` URL, answered by the newer run; once that
    stops, by the older one again (the only app left holding the label)."""
    name = unique("web-takeover")
    procs, urls = [], []
    try:
        for which in ("older", "newer"):
            script = tmp_path / which / "takeover_app.py"
            script.parent.mkdir()
            script.write_text(TAKEOVER_APP.format(name=name, which=which))
            procs.append(subprocess.Popen([sys.executable, str(script), "120"], stdout=subprocess.PIPE, text=True))
            urls.append(procs[-1].stdout.readline().strip())  # type: ignore[union-attr]
            assert wait_for(lambda w=which: get(urls[0]).text == w, timeout=FIRST_S, interval=0.3), which
        assert urls[1] == urls[0]  # the same label, so the same URL
        procs[1].terminate()
        procs[1].wait(30)
        assert wait_for(lambda: get(urls[0]).text == "older", timeout=60, interval=0.3)
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
