"""Functions for tests/integration/test_ray_backend.py: each says where it ran (the Ray node, the container)."""

import os
import socket
import time

import shoal as modal

app = modal.App("ray-backend")


def _where() -> dict:
    return {"node": os.environ.get("SHOAL_NODE_ID"), "container": os.environ.get("SHOAL_CONTAINER_ID"),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(), "hostname": socket.gethostname(),
            "home_visible": os.path.exists(os.environ.get("SHOAL_HOME", "/nonexistent") + "/token")}


@app.function(min_containers=3, max_containers=3, scaledown_window=2)
def spread(x: int) -> tuple[int, str, str]:
    time.sleep(0.002)
    w = _where()
    return x * 2, w["node"], w["container"]


@app.function(max_containers=3, scaledown_window=2)
def slow(x: int, seconds: float = 0.05) -> tuple[int, str, str]:
    time.sleep(seconds)
    w = _where()
    return x, w["node"], w["container"]


@app.function(gpu="A100", scaledown_window=2)
def on_gpu() -> dict:
    return _where()


@app.function(gpu=["H100", "A100"], scaledown_window=2)
def gpu_fallback() -> dict:
    return _where()


@app.function(gpu="H100")
def no_such_gpu() -> dict:
    return _where()


@app.function(region="eu-west")
def in_region() -> dict:
    return _where()


@app.function()
def nested(x: int) -> int:
    """A call from a container on some node back through the control plane."""
    return slow.remote(x, 0.0)[0] + 1


@app.function()
def where() -> dict:
    return _where()


@app.function()
@modal.asgi_app()
def web():
    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return
        body = (os.environ.get("SHOAL_NODE_ID") or "").encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    return asgi
