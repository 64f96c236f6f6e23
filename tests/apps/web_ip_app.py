"""Seed (web endpoints): the client's IP address from `request.client.host`."""

from fastapi import Request

import shoal as modal

image = modal.Image.debian_slim().pip_install("fastapi[standard]")
app = modal.App("web-ip", image=image)


@app.function()
@modal.fastapi_endpoint()
def get_ip_address(request: Request):
    return f"Your IP address is {request.client.host}"
