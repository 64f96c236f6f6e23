"""Seed (web endpoints): a POST endpoint taking any JSON object as a dict."""

import shoal as modal

app = modal.App("web-endpoint-post")

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function(image=image)
@modal.fastapi_endpoint(method="POST")
def square(item: dict):
    return {"square": item['x']**2}
