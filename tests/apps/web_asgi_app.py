"""Seed (web endpoints): a FastAPI app served with `@modal.asgi_app()`; the seed's `allow_concurrent_inputs=1000`
is `@modal.concurrent(max_inputs=1000)` in Modal 1.6 (the old argument raises DeprecationError)."""

import shoal as modal

app = modal.App("web-asgi")

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function(image=image)
@modal.concurrent(max_inputs=1000)
@modal.asgi_app()
def fastapi_app():
    from fastapi import FastAPI, Request

    web_app = FastAPI()


    @web_app.post("/echo")
    async def echo(request: Request):
        body = await request.json()
        return body

    return web_app
