"""What code in a container may and may not do with the control plane's API (tests/integration/
test_security_credentials.py): raw requests with the container's own credential, and the SDK as user code uses it."""

import os
import urllib.error
import urllib.request

import msgpack

import shoal as modal

app = modal.App("security")
child = modal.App("security-child")  # an ephemeral app a function starts from inside its container
builder = modal.App("security-builder")
stealer = modal.App("security-stealer")
BUILD_MARK = "/tmp/shoal-security-build-ran-on-the-host"


@child.function()
def child_double(x: int) -> int:
    return 2 * x


@builder.function(image=modal.Image.debian_slim().run_commands(f"id > {BUILD_MARK}"))
def built() -> None:
    pass


@stealer.function(secrets=[modal.Secret.from_name("shoal-security-other")])
def steal() -> str:
    return os.environ.get("OTHER_SECRET", "")


registry_stealer = modal.App("security-registry-stealer")  # a pull would send the secret to that registry


@registry_stealer.function(image=modal.Image.from_registry(
    "127.0.0.1:9/planted/img:v1", secret=modal.Secret.from_name("shoal-security-other")))
def pull_with() -> None:
    pass


def _api(method: str, path: str, body: object = None, token: str | None = None) -> tuple[int, dict]:
    data = msgpack.packb(body) if body is not None else None
    request = urllib.request.Request(os.environ["SHOAL_SERVER_URL"] + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token or os.environ['SHOAL_TOKEN']}", "Content-Type": "application/msgpack"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, msgpack.unpackb(resp.read())
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        return exc.code, msgpack.unpackb(payload) if payload else {}


@app.function()
def double(x: int) -> int:
    return 2 * x


@app.function()
def credential() -> str:
    return os.environ["SHOAL_TOKEN"]


@app.function()
def forbidden(other_app_id: str, definition: dict, build_defs: list, steal_defs: list,
              registry_defs: list) -> dict:
    """Each request an attacker in a container would make, and what the control plane answered."""
    attempts = {
        "list apps": ("GET", "/v1/apps", None),
        "list secrets": ("GET", "/v1/secrets", None),
        "create a secret": ("POST", "/v1/secrets", {"name": "planted", "env": {"A": "b"}}),
        "delete a secret": ("DELETE", "/v1/secrets/shoal-security-other", None),
        "list stored objects": ("GET", "/v1/objects", None),
        "stop another app": ("POST", f"/v1/apps/{other_app_id}/stop", {}),
        "read another app's logs": ("GET", f"/v1/apps/{other_app_id}/logs?after=-1", None),
        "register in another app": ("POST", f"/v1/apps/{other_app_id}/functions", {"functions": [definition]}),
        "deploy": ("POST", "/v1/apps/deploy", {"name": "planted", "functions": [definition]}),
        "create a deployed app": ("POST", "/v1/apps", {"name": "planted", "mode": "deployed"}),
        # An app of the other app's name could take over its web labels (only a new run of an app may).
        "take another app's name": ("POST", "/v1/apps", {"name": "security-child", "mode": "ephemeral"}),
        "mint a proxy token": ("POST", "/v1/proxy-tokens", {"scope": []}),
        "list proxy tokens": ("GET", "/v1/proxy-tokens", None),
        "list containers": ("GET", "/v1/containers", None),
        "shut down": ("POST", "/v1/shutdown", {}),
    }
    out = {}
    for what, (method, path, body) in attempts.items():
        status, reply = _api(method, path, body)
        out[what] = [status, reply.get("error", "")]
    # The admin token's way of saying it, without `Bearer`: never accepted.
    request = urllib.request.Request(os.environ["SHOAL_SERVER_URL"] + "/v1/apps",
                                     headers={"Authorization": os.environ["SHOAL_TOKEN"]})
    try:
        urllib.request.urlopen(request, timeout=60)
        out["bare credential"] = [200, ""]
    except urllib.error.HTTPError as exc:
        out["bare credential"] = [exc.code, ""]
    # An ephemeral app of its own may be created (the SDK does not run one inside a container; the API allows
    # it), but not given an image to build or a secret this container does not hold.
    for what, defs in (("build an image", build_defs), ("attach a secret it does not hold", steal_defs),
                       ("pull with a secret it does not hold", registry_defs)):
        status, reply = _api("POST", "/v1/apps", {"name": "security-probe", "mode": "ephemeral"})
        assert status == 200, reply
        status, reply = _api("POST", f"/v1/apps/{reply['app_id']}/functions", {"functions": defs})
        out[what] = [status, reply.get("error", "")]
    return out


@app.function()
def allowed(dict_name: str, child_defs: list) -> dict:
    """What code in a container legitimately does: all of it must work with the container's credential."""
    out = {"nested": double.remote(21), "spawned": double.spawn(5).get(timeout=120),
           "with_options": double.with_options(timeout=77).remote(4)}
    d = modal.Dict.from_name(dict_name, create_if_missing=True)
    d["k"] = "v"
    out["dict"] = d["k"]
    with modal.Queue.ephemeral() as q:
        q.put("item")
        out["queue"] = q.get(timeout=30)
    out["lookup"] = modal.Function.from_name("security", "double").remote(1)
    status, reply = _api("POST", "/v1/apps", {"name": "security-child", "mode": "ephemeral"})
    assert status == 200, reply
    child_id = reply["app_id"]
    status, reply = _api("POST", f"/v1/apps/{child_id}/functions", {"functions": child_defs})
    assert status == 200, reply
    out["child app"] = modal.Function.from_name("security-child", "child_double").remote(8)
    out["child stopped"] = _api("POST", f"/v1/apps/{child_id}/stop", {})[0]
    return out


@app.function()
def through_another_replica(other_app: str, other_app_id: str) -> dict:
    """A function of another app, which another control plane runs: the request is forwarded there with this
    container's identity (not its credential, which only this control plane knows), and judged the same."""
    return {"call": modal.Function.from_name(other_app, "child_double").remote(21),
            "stop": _api("POST", f"/v1/apps/{other_app_id}/stop", {})[0]}
