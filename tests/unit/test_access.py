"""What a container may do on the control plane's API (controlplane/access.py), and its credentials
(controlplane/credentials.py)."""

from __future__ import annotations

from types import SimpleNamespace

from aiohttp import web

from shoal.controlplane.access import ADMIN, ROUTES, Facts, Identity, decide
from shoal.controlplane.credentials import (
    bearer,
    container_credential,
    forwarded,
    parse_container,
    verify_forwarded,
)

ME = Identity(container_id="ta-1", app_id="ap-mine", function="f", secrets=frozenset({"db"}),
              created=frozenset({"ap-child"}))


def test_the_admin_may_do_everything() -> None:
    for method, route in [*ROUTES, ("GET", "/v1/not-a-route")]:
        assert decide(ADMIN, method, route).allowed


def test_what_code_in_a_container_does_is_allowed() -> None:
    for method, route in [("POST", "/v1/functions/{function_id}/calls"), ("GET", "/v1/functions/lookup"),
                          ("GET", "/v1/calls/{call_id}/result"), ("GET", "/v1/calls/{call_id}/outputs"),
                          ("POST", "/v1/calls/{call_id}/cancel"), ("POST", "/v1/objects"),
                          ("POST", "/v1/dicts/{object_id}/get"), ("POST", "/v1/queues/{object_id}/put"),
                          ("POST", "/v1/volumes/{volume_id}/commit"), ("PUT", "/v1/blobs/{sha}"),
                          ("GET", "/v1/functions/{function_id}/web_url")]:
        assert decide(ME, method, route, Facts(app_id="ap-other")).allowed, route


def test_operator_and_secret_routes_are_refused_with_what_was_refused() -> None:
    cases = {("GET", "/v1/apps"): "containers may not list apps",
             ("GET", "/v1/secrets"): "containers may not list secrets",
             ("POST", "/v1/secrets"): "containers may not create or change secrets",
             ("DELETE", "/v1/secrets/{name}"): "containers may not delete secrets",
             ("POST", "/v1/proxy-tokens"): "containers may not create proxy auth tokens",
             ("POST", "/v1/shutdown"): "containers may not shut down the control plane",
             ("POST", "/v1/apps/deploy"): "containers may not deploy apps",
             ("GET", "/v1/containers/{container_id}"): "containers may not inspect containers",
             ("POST", "/v1/functions/{function_id}/shell"): "containers may not start shells",
             ("GET", "/v1/objects"): "containers may not list stored objects"}
    for (method, route), message in cases.items():
        decision = decide(ME, method, route, Facts(app_id="ap-mine"))
        assert not decision.allowed and decision.reason == message


def test_a_route_not_in_the_table_is_refused() -> None:
    decision = decide(ME, "POST", "/v1/something-new")
    assert not decision.allowed and "containers may not" in decision.reason
    assert not decide(ME, "HEAD", "/v1/apps").allowed  # aiohttp's HEAD of a GET route is a route of its own


def test_apps_a_container_may_manage_are_its_own_and_those_its_app_created() -> None:
    stop = ("POST", "/v1/apps/{app_id}/stop")
    assert decide(ME, *stop, Facts(app_id="ap-mine")).allowed
    assert decide(ME, *stop, Facts(app_id="ap-child")).allowed
    refused = decide(ME, *stop, Facts(app_id="ap-other"))
    assert not refused.allowed and refused.reason == "containers may not stop other apps"
    assert not decide(ME, *stop, Facts(app_id=None)).allowed  # an app it cannot be shown to own
    autoscaler = ("POST", "/v1/functions/{function_id}/autoscaler")
    assert decide(ME, *autoscaler, Facts(app_id="ap-mine")).allowed
    assert not decide(ME, *autoscaler, Facts(app_id="ap-other")).allowed


def test_functions_are_registered_only_in_apps_it_created() -> None:
    register = ("POST", "/v1/apps/{app_id}/functions")
    assert decide(ME, *register, Facts(app_id="ap-child")).allowed
    assert not decide(ME, *register, Facts(app_id="ap-mine")).allowed  # its own (maybe deployed) app
    assert not decide(ME, *register, Facts(app_id="ap-other")).allowed


def test_only_ephemeral_apps_are_created() -> None:
    assert decide(ME, "POST", "/v1/apps", Facts(mode="ephemeral")).allowed
    assert not decide(ME, "POST", "/v1/apps", Facts(mode="deployed")).allowed
    taken = decide(ME, "POST", "/v1/apps", Facts(mode="ephemeral", name_taken=True))
    assert not taken.allowed and taken.reason == "containers may not create an app with the name of another running app"
    assert decide(ME, "POST", "/v1/apps/lookup", Facts()).allowed
    assert not decide(ME, "POST", "/v1/apps/lookup", Facts(create_if_missing=True)).allowed


def test_nothing_it_creates_holds_a_secret_it_does_not_hold() -> None:
    register = ("POST", "/v1/apps/{app_id}/functions")
    assert decide(ME, *register, Facts(app_id="ap-child", secrets=frozenset({"db"}))).allowed
    refused = decide(ME, *register, Facts(app_id="ap-child", secrets=frozenset({"db", "stripe"})))
    assert not refused.allowed and "'stripe'" in refused.reason and "'db'" not in refused.reason
    variants = ("POST", "/v1/functions/{function_id}/variants")
    assert decide(ME, *variants, Facts(app_id="ap-other", secrets=frozenset({"db"}))).allowed
    assert not decide(ME, *variants, Facts(app_id="ap-other", secrets=frozenset({"stripe"}))).allowed


def test_image_builds_are_refused() -> None:
    refused = decide(ME, "POST", "/v1/apps/{app_id}/functions", Facts(app_id="ap-child", builds_image=True))
    assert not refused.allowed and "containers may not build images" in refused.reason


def test_every_route_the_api_registers_is_in_the_table() -> None:
    """The table covers each route the control plane registers (else containers are refused it by default: safe,
    but a new route would then break silently inside containers)."""
    from shoal.controlplane import api, deploy, image_gc, objects, oci_serve, proxy_tokens, sandboxes, secrets, volumes

    class Handlers:
        """Stands in for the route owners: only their `add_routes` runs, which names a handler per route."""

        def __getattr__(self, name: str):
            async def handler(request: web.Request) -> web.Response:
                return web.Response()
            return handler

    stub = Handlers()
    stub.deployments = SimpleNamespace(add_routes=lambda r: None)  # type: ignore[attr-defined]  # below
    stub.core = SimpleNamespace(registry=None, store=None)  # type: ignore[attr-defined]  # the dashboard's views
    router = api.Api.app(stub).router  # type: ignore[arg-type]
    for owner in (objects.Objects, secrets.SecretStore, proxy_tokens.ProxyTokens, volumes.Volumes,
                  deploy.Deployments, oci_serve.ImageRegistry, image_gc.ImageCatalog, sandboxes.SandboxRoutes):
        owner.add_routes(stub, router)  # type: ignore[arg-type]
    registered = {(route.method, resource.canonical) for resource in router.resources() for route in resource}
    gets = {route for method, route in registered if method == "GET"}
    registered = {(m, r) for m, r in registered if not (m == "HEAD" and r in gets)}  # add_get's own HEAD
    registered.discard(("GET", "/v1/health"))  # needs no credential at all
    # The dashboard's pages answer to its session cookie, never to an API credential (dashboard/__init__.py).
    registered = {(m, r) for m, r in registered if not r.startswith("/dashboard/")}
    missing = registered - set(ROUTES)
    assert not missing, f"routes with no entry in access.ROUTES: {sorted(missing)}"
    assert len(registered) > 50 and not set(ROUTES) - registered  # the table names no route that is gone


def test_only_bearer_credentials_are_taken() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("abc") is None
    assert bearer("bearer abc") == "abc"  # the scheme is case-insensitive
    assert bearer("Bearer ") is None
    assert bearer("Basic abc") is None


def test_a_container_credential_names_its_container() -> None:
    cred = container_credential("ta-123", "s3cret")
    assert parse_container(cred) == ("ta-123", "s3cret")
    assert parse_container("ta-123.s3cret") is None
    assert parse_container("shoal-ctr.ta-123") is None


def test_a_forwarded_identity_is_taken_only_with_the_right_key() -> None:
    cred = forwarded(ME, b"key")
    assert verify_forwarded(cred, b"key") == ME
    assert verify_forwarded(cred, b"other") is None
    payload, _, mac = cred.rpartition(".")
    assert verify_forwarded(payload[:-2] + "xx." + mac, b"key") is None
    assert verify_forwarded(container_credential("ta-1", "x"), b"key") is None


def test_docs_security_lists_every_route() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    missing = [f"{m} {r}" for m, r in ROUTES if f"| `{m} {r}` |" not in doc]
    assert not missing, f"docs/security.md's table lacks: {missing}"
