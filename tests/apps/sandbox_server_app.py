"""A function that manages sandboxes with its container's own credential (tests/integration/
test_sandbox_server.py): those of its own app work, another app's are refused."""

import os
import urllib.error
import urllib.request

import msgpack

import shoal as modal

app = modal.App("sandbox-server-test")


def _api(method: str, path: str, body: object = None) -> tuple[int, dict]:
    data = msgpack.packb(body) if body is not None else None
    request = urllib.request.Request(os.environ["SHOAL_SERVER_URL"] + path, data=data, method=method, headers={
        "Authorization": f"Bearer {os.environ['SHOAL_TOKEN']}", "Content-Type": "application/msgpack"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, msgpack.unpackb(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, msgpack.unpackb(exc.read())


@app.function()
def manage(own: str, other_app_id: str, other_sandbox_id: str, secret: str, image: dict) -> dict:
    got = {}
    status, body = _api("POST", "/v1/sandboxes", {"app_id": own, "command": ["sh", "-c", "echo from-fn"]})
    got["own create"] = status
    if status == 200:
        sid = body["sandbox_id"]
        got["own wait"] = _api("GET", f"/v1/sandboxes/{sid}/wait?timeout=30")[1]
        got["own output"] = _api("GET", f"/v1/sandboxes/{sid}/output?fd=stdout&offset=0")[1].get("data")
        sid = _api("POST", "/v1/sandboxes", {"app_id": own})[1]["sandbox_id"]  # one that runs, for an exec
    got["other create"] = _api("POST", "/v1/sandboxes", {"app_id": other_app_id, "command": ["true"]})
    got["other exec"] = _api("POST", f"/v1/sandboxes/{other_sandbox_id}/exec", {"argv": ["true"]})
    got["other terminate"] = _api("POST", f"/v1/sandboxes/{other_sandbox_id}/terminate", {})
    got["other list"] = _api("GET", f"/v1/sandboxes?app_id={other_app_id}")
    got["list all"] = _api("GET", "/v1/sandboxes")
    got["secret it lacks"] = _api("POST", "/v1/sandboxes", {"app_id": own, "secret_names": [secret]})
    got["build an image"] = _api("POST", "/v1/sandboxes", {"app_id": own, "image": image})
    if status == 200:
        got["exec with a secret it lacks"] = _api("POST", f"/v1/sandboxes/{sid}/exec",
                                                  {"argv": ["env"], "secret_names": [secret]})
    return got
