"""A container is a boundary: it holds a credential of its own, never the admin token, and with it may do what
code in a Modal container does (calls, spawns, lookups, Dicts, Queues, ephemeral apps) and nothing else:
controlplane/access.py's table, applied by controlplane/gate.py. The API takes only `Authorization: Bearer`."""

from __future__ import annotations

import os
import uuid

import httpx
import msgpack
import msgspec
import pytest

from shoal.exception import AlreadyExistsError

from ..conftest import run_cli, wait_for
from .test_replicas import _postgres_reachable, replicas  # noqa: F401 - the fixture: two replicas, one schema


def _api(cp, method: str, path: str, token: str, body: object = None, raw_header: str | None = None):
    headers = {"Authorization": raw_header if raw_header is not None else f"Bearer {token}",
               "Content-Type": "application/msgpack"}
    return httpx.request(method, cp.url + path, headers=headers, timeout=60,
                         content=msgpack.packb(body) if body is not None else None)


def _definitions(app) -> list:
    """An app's function definitions as its registration sends them (sources uploaded with the admin token)."""
    return msgspec.to_builtins(app._definitions())


@pytest.fixture(scope="module")
def other_secret(control_plane):
    out = run_cli("secret", "create", "shoal-security-other", "OTHER_SECRET=not-for-you", "--force")
    assert out.returncode == 0, out.stderr
    return control_plane


def test_a_container_holds_its_own_credential_which_ends_with_it(control_plane) -> None:
    import security_app

    admin = (control_plane.home / "token").read_text().strip()
    with security_app.app.run(quiet=True):
        credential = security_app.credential.remote()
        assert credential and credential != admin and admin not in credential
        assert _api(control_plane, "GET", "/v1/functions/lookup?app_name=security&tag=double",
                    credential).status_code == 200
    # Once its container has ended (the app stopped), the credential is void.
    assert wait_for(lambda: _api(control_plane, "GET", "/v1/functions/lookup?app_name=security&tag=double",
                                 credential).status_code == 401)


def test_what_an_attacker_in_a_container_tries_is_refused(other_secret) -> None:
    import security_app

    with security_app.app.run(quiet=True), security_app.child.run(quiet=True) as other:
        definition = {"tag": "planted", "serialized_fn": b"x",
                      "secrets": [{"name": "shoal-security-other"}]}
        got = security_app.forbidden.remote(other.app_id, definition, _definitions(security_app.builder),
                                            _definitions(security_app.stealer),
                                            _definitions(security_app.registry_stealer))
        # The other app was not stopped.
        assert security_app.child_double.remote(2) == 4
    assert not os.path.exists(security_app.BUILD_MARK)  # on the host, where build steps run
    assert got.pop("bare credential")[0] == 401
    for what, (status, message) in got.items():
        assert status == 403, f"{what}: {status} {message}"
        assert message.startswith("containers may not"), (what, message)
    assert "'shoal-security-other'" in got["attach a secret it does not hold"][1]
    assert "'shoal-security-other'" in got["pull with a secret it does not hold"][1]
    assert "build images" in got["build an image"][1]
    # Nothing the refused requests asked for happened.
    admin = (other_secret.home / "token").read_text().strip()
    names = [s["name"] for s in msgpack.unpackb(_api(other_secret, "GET", "/v1/secrets", admin).content)["secrets"]]
    assert "shoal-security-other" in names and "planted" not in names
    apps = msgpack.unpackb(_api(other_secret, "GET", "/v1/apps", admin).content)["apps"]
    assert not [a for a in apps if a["name"] == "planted"]


def test_what_code_in_a_container_does_still_works(control_plane) -> None:
    import security_app

    with security_app.app.run(quiet=True):
        got = security_app.allowed.remote(f"security-{uuid.uuid4().hex[:8]}", _definitions(security_app.child))
    assert got == {"nested": 42, "spawned": 10, "with_options": 8, "dict": "v", "queue": "item", "lookup": 2,
                   "child app": 16, "child stopped": 200}


def test_the_api_takes_only_bearer_credentials(control_plane) -> None:
    admin = (control_plane.home / "token").read_text().strip()
    assert _api(control_plane, "GET", "/v1/apps", admin).status_code == 200
    for header in (admin, f"Token {admin}", f"Bearer  {admin}", "", f"Bearer {admin}x"):
        resp = _api(control_plane, "GET", "/v1/apps", admin, raw_header=header)
        assert resp.status_code == 401, header
        assert msgpack.unpackb(resp.content)["type"] == "AuthError"
    assert httpx.get(control_plane.url + "/v1/health", timeout=30).status_code == 200


def test_a_web_label_stays_with_the_app_that_holds_it(control_plane) -> None:
    import label_holder_app as apps

    with apps.holder.run(quiet=True):
        url = apps.held.get_web_url()
        assert url and httpx.get(url, timeout=120).text == "holder"
        with pytest.raises(AlreadyExistsError) as refused:
            with apps.taker.run(quiet=True):
                pass
        message = str(refused.value)
        assert "security-shared-label" in message and "label-holder" in message
        assert apps.held.get_web_url() == url
        assert httpx.get(url, timeout=120).text == "holder"
    # Once the holder has stopped, the label is free.
    with apps.taker.run(quiet=True):
        url = apps.taken.get_web_url()
        assert url and httpx.get(url, timeout=120).text == "taker"


def test_a_deployed_label_is_taken_over_only_by_a_new_version_of_its_app(control_plane) -> None:
    import label_holder_app as apps

    try:
        apps.holder.deploy()
        url = apps.held.get_web_url()
        with pytest.raises(AlreadyExistsError, match="label-holder"):
            apps.taker.deploy()
        assert not [a for a in msgpack.unpackb(_admin(control_plane, "GET", "/v1/apps").content)["apps"]
                    if a["name"] == "label-taker" and a["state"] == "running"]
        apps.holder.deploy()  # its next version keeps the label
        assert apps.held.get_web_url() == url
        assert httpx.get(url, timeout=120).text == "holder"
    finally:
        run_cli("app", "stop", "label-holder")
        run_cli("app", "stop", "label-taker")


def _admin(cp, method: str, path: str):
    return _api(cp, method, path, (cp.home / "token").read_text().strip())


@pytest.mark.skipif(_postgres_reachable() is not None, reason=_postgres_reachable() or "")
def test_a_container_request_forwarded_to_another_replica_keeps_its_identity(replicas) -> None:  # noqa: F811
    """Replicas: the app a function calls is owned by the other control plane; the call is forwarded with the
    container's identity, vouched for by the replica that knows its credential, and refused there as here."""
    import security_app

    from shoal._client.transport import reset_client

    a, b = replicas
    with security_app.child.run(quiet=True) as other:  # created through A: A owns it
        os.environ["SHOAL_SERVER_URL"] = f"{b.url},{a.url}"
        reset_client()
        with security_app.app.run(quiet=True):  # created through B: its containers talk to B
            got = security_app.through_another_replica.remote("security-child", other.app_id)
        assert got == {"call": 42, "stop": 403}
        assert security_app.child_double.remote(1) == 2  # not stopped
