"""A web endpoint behind proxy auth (`Modal-Key` / `Modal-Secret` headers)."""

from fastapi import Request

import shoal as modal

app = modal.App("web-proxy-auth")

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function(image=image)
@modal.fastapi_endpoint(requires_proxy_auth=True)
def private(request: Request):
    # The proxy strips its own credentials: the function never sees them.
    return {"ok": True, "saw_secret": "modal-secret" in request.headers}

