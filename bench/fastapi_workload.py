"""A function whose module imports FastAPI, in an image that installs it (for bench/coldstart.py)."""

import shoal

image = shoal.Image.debian_slim().pip_install("fastapi")
app = shoal.App("bench-fastapi", image=image)

with image.imports():
    import fastapi  # noqa: F401 - the import is the point: what a cold start has to pay for


@app.function(single_use_containers=True)
def handler(x: int) -> int:
    return x
