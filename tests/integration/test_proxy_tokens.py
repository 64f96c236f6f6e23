"""Proxy auth tokens against a real control plane: CLI round trip, secrets never stored or listed, durability
across a SIGKILL, and 400/404 on bad requests."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import msgpack
import pytest

from shoal._client.transport import get_client
from shoal.controlplane.ingress_policy import INVALID_CREDENTIALS, check_proxy_auth, hash_secret

from ..conftest import ControlPlane, run_cli


def create(*apps: str) -> tuple[str, str]:
    """`shoal workspace proxy-tokens create`, parsed from its human output."""
    args = [a for app in apps for a in ("--app", app)]
    out = run_cli("workspace", "proxy-tokens", "create", *args)
    assert out.returncode == 0, out.stderr
    fields = dict(line.split(":", 1) for line in out.stdout.splitlines() if line.startswith("Token "))
    token_id, secret = fields["Token ID"].strip(), fields["Token secret"].strip()
    assert token_id.startswith("wk-") and secret.startswith("ws-")
    assert f"Modal-Key: {token_id}" in out.stdout and f"Modal-Secret: {secret}" in out.stdout
    return token_id, secret


def listed() -> dict[str, dict]:
    out = run_cli("workspace", "proxy-tokens", "list", "--json")
    assert out.returncode == 0, out.stderr
    return {t["token_id"]: t for t in json.loads(out.stdout)}


def raw(method: str, path: str, body: object = None, data: bytes | None = None) -> tuple[int, dict]:
    payload = data if data is not None else (msgpack.packb(body) if body is not None else None)
    status, reply = get_client().request_raw(method, path, payload)
    return status, msgpack.unpackb(reply) if reply else {}


def test_cli_create_list_allow_revoke_delete(control_plane: ControlPlane) -> None:
    token_id, secret = create("web", "api")
    assert listed()[token_id]["scope"] == ["web", "api"]

    table = run_cli("workspace", "proxy-tokens", "list")
    json_list = run_cli("workspace", "proxy-tokens", "list", "--json")
    assert token_id in table.stdout and "web, api" in table.stdout
    for out in (table, json_list):
        assert secret not in out.stdout and hash_secret(secret) not in out.stdout
    assert set(listed()[token_id]) == {"token_id", "scope", "created_at"}

    db = control_plane.state_bytes()
    assert secret.encode() not in db, "the token secret is stored in plain text"
    assert hash_secret(secret).encode() in db, "the secret's hash should be what is stored"

    allow = run_cli("workspace", "proxy-tokens", "allow", token_id, "docs")
    assert allow.returncode == 0 and "web, api, docs" in allow.stdout, allow.stderr
    revoke = run_cli("workspace", "proxy-tokens", "revoke", token_id, "web")
    assert revoke.returncode == 0 and "api, docs" in revoke.stdout, revoke.stderr
    assert listed()[token_id]["scope"] == ["api", "docs"]

    assert run_cli("workspace", "proxy-tokens", "delete", token_id, "-y").returncode == 0
    assert token_id not in listed()
    again = run_cli("workspace", "proxy-tokens", "delete", token_id, "-y")
    assert again.returncode == 1 and "not found" in again.stderr


def test_unscoped_token_and_its_edits(control_plane: ControlPlane) -> None:
    token_id, _ = create()
    assert listed()[token_id]["scope"] == []
    assert "every app" in run_cli("workspace", "proxy-tokens", "list").stdout
    assert raw("POST", f"/v1/proxy-tokens/{token_id}/allow", {"app": "web"}) == (
        200, {"token_id": token_id, "scope": [], "created_at": listed()[token_id]["created_at"]})
    status, body = raw("POST", f"/v1/proxy-tokens/{token_id}/revoke", {"app": "web"})
    assert status == 400 and "every app" in body["error"]
    assert raw("DELETE", f"/v1/proxy-tokens/{token_id}")[0] == 200


def test_bad_requests(control_plane: ControlPlane) -> None:
    for body in ({"scope": "web"}, {"scope": [1]}, {"scope": ["has space"]}, {"scope": [""]}, ["web"]):
        status, reply = raw("POST", "/v1/proxy-tokens", body)
        assert status == 400 and reply["error"], body
    assert raw("POST", "/v1/proxy-tokens", data=b"\xc1")[0] == 400  # not msgpack

    assert raw("DELETE", "/v1/proxy-tokens/wk-nope")[0] == 404
    assert raw("POST", "/v1/proxy-tokens/wk-nope/allow", {"app": "web"})[0] == 404
    assert raw("POST", "/v1/proxy-tokens/wk-nope/revoke", {"app": "web"})[0] == 404

    token_id, _ = create("web")
    status, reply = raw("POST", f"/v1/proxy-tokens/{token_id}/allow", {})
    assert status == 400 and "app" in reply["error"]
    assert raw("POST", f"/v1/proxy-tokens/{token_id}/allow", {"app": 3})[0] == 400
    status, reply = raw("POST", f"/v1/proxy-tokens/{token_id}/revoke", {"app": "web"})
    assert status == 400 and "delete the token" in reply["error"]  # would widen it to every app
    assert listed()[token_id]["scope"] == ["web"]

    cli = run_cli("workspace", "proxy-tokens", "allow", "wk-nope", "web")
    assert cli.returncode == 1 and "not found" in cli.stderr and "Traceback" not in cli.stderr


def test_proxy_token_api_needs_the_control_plane_token(control_plane: ControlPlane) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{control_plane.url}/v1/proxy-tokens", timeout=10)
    assert refused.value.code == 401


def test_tokens_survive_a_sigkill(private_control_plane: ControlPlane) -> None:
    token_id, secret = create("web")
    assert run_cli("workspace", "proxy-tokens", "allow", token_id, "api").returncode == 0
    deleted, _ = create()
    assert run_cli("workspace", "proxy-tokens", "delete", deleted, "-y").returncode == 0
    private_control_plane.kill()  # acknowledged means committed: no clean shutdown needed
    private_control_plane.start()
    tokens = listed()
    assert tokens[token_id]["scope"] == ["web", "api"] and deleted not in tokens
    private_control_plane.stop(keep_state=True)
    assert reloaded_check(private_control_plane, token_id, secret)


def reloaded_check(cp: ControlPlane, token_id: str, secret: str) -> bool:
    """What the proxy would see after a restart: `lookup` from the reloaded store, checked by the policy."""
    from shoal.controlplane.proxy_tokens import ProxyTokens

    async def run() -> bool:
        store = cp.store()
        await store.open()
        try:
            tokens = ProxyTokens(store)
            assert check_proxy_auth(token_id, secret, tokens.lookup, "api") is None
            assert check_proxy_auth(token_id, secret + "x", tokens.lookup, "api") == (401, INVALID_CREDENTIALS)
            assert check_proxy_auth(token_id, secret, tokens.lookup, "other")[0] == 403  # type: ignore[index]
            return True
        finally:
            await store.close()

    return asyncio.run(run())


def test_token_info_names_the_control_plane_not_the_token(control_plane: ControlPlane) -> None:
    out = run_cli("token", "info")
    assert out.returncode == 0, out.stderr
    assert f"{control_plane.url} (answering)" in out.stdout
    assert (control_plane.home / "token").read_text().strip() not in out.stdout
