"""Seed (web endpoints): the simplest endpoint, `@modal.fastapi_endpoint()` returning a string."""

import shoal as modal

app = modal.App("web-simple")

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function(image=image)
@modal.fastapi_endpoint()
def f():
    return "Hello world!"
