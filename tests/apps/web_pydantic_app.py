"""Seed (web endpoints): a Pydantic model for the body and an HTMLResponse, with boto3 in the image."""

from fastapi.responses import HTMLResponse
from pydantic import BaseModel

import shoal as modal

image = modal.Image.debian_slim().pip_install("fastapi[standard]", "boto3")
app = modal.App("web-demo", image=image)


class Item(BaseModel):
    name: str
    qty: int = 42


@app.function()
@modal.fastapi_endpoint(method="POST")
def f(item: Item):
    import boto3  # noqa: F401
    # do things with boto3...
    return HTMLResponse(f"<html>Hello, {item.name}!</html>")
