"""Seed (web endpoints): query parameters become the function's arguments."""

import shoal as modal

app = modal.App("web-endpoint")

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function(image=image)
@modal.fastapi_endpoint()
def square(x: int):
    return {"square": x**2}
