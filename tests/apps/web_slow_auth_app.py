"""A slow web endpoint behind proxy auth: its 303 result URL must ask for the same credentials."""

import time

import shoal as modal

app = modal.App("web-slow-auth")

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function(image=image)
@modal.concurrent(max_inputs=10)
@modal.fastapi_endpoint(requires_proxy_auth=True)
def slow(seconds: float):
    time.sleep(seconds)
    return {"slept": seconds}
