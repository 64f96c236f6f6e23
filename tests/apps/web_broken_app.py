"""Web functions whose containers cannot serve: a web server that never listens, an ASGI app whose lifespan
startup fails."""

import shoal as modal

app = modal.App("web-broken")

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function()
@modal.web_server(8000, startup_timeout=1)
def never_listens():
    pass  # starts nothing


@app.function(image=image)
@modal.asgi_app()
def failing_lifespan():
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(app):
        raise RuntimeError("the database is unreachable")
        yield

    return FastAPI(lifespan=lifespan)
