"""Seed (web endpoints): a Flask app served with `@modal.wsgi_app()` (concurrency as in Modal 1.6)."""

import shoal as modal

app = modal.App("web-wsgi")

image = modal.Image.debian_slim().pip_install("flask")


@app.function(image=image)
@modal.concurrent(max_inputs=1000)
@modal.wsgi_app()
def flask_app():
    from flask import Flask, request

    web_app = Flask(__name__)


    @web_app.post("/echo")
    def echo():
        return request.json

    return web_app
