"""Code in a container trying the control plane's image registry with its own credential
(tests/integration/test_oci_serve.py): it must be refused."""

import base64
import os
import urllib.error
import urllib.request

import shoal as modal

app = modal.App("oci-serve")


@app.function()
def try_registry(paths: list[str]) -> list[list]:
    """[status, body] per path and way of sending the credential (Bearer, then Basic)."""
    token = os.environ["SHOAL_TOKEN"]
    basic = base64.b64encode(f"shoal-node:{token}".encode()).decode()
    out = []
    for path in paths:
        for header in (f"Bearer {token}", f"Basic {basic}"):
            request = urllib.request.Request(os.environ["SHOAL_SERVER_URL"] + path,
                                             headers={"Authorization": header})
            try:
                with urllib.request.urlopen(request, timeout=60) as resp:
                    out.append([resp.status, resp.read().decode()])
            except urllib.error.HTTPError as exc:
                out.append([exc.code, exc.read().decode()])
    return out
