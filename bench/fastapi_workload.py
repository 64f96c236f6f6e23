"""Functions whose module imports FastAPI, in images that install it (bench/coldstart.py, bench/images.py).

`handler` (app `bench-fastapi`) runs on a venv image (`debian_slim`); `handler_oci` (app `bench-fastapi-oci`, an
app of its own so that running `app` never builds it) on an OCI image: the tests' small Debian image on a registry
on loopback, whose tag bench/images.py passes in SHOAL_BENCH_OCI_TAG (inside containers the variable is unset:
declaring an image reads nothing, and the function is found by its name).
"""

import os

import shoal

image = shoal.Image.debian_slim().pip_install("fastapi")
oci_image = shoal.Image.from_registry(
    os.environ.get("SHOAL_BENCH_OCI_TAG", "127.0.0.1:5000/bench/python:v1")).pip_install("fastapi")
app = shoal.App("bench-fastapi", image=image)
oci_app = shoal.App("bench-fastapi-oci", image=oci_image)

with image.imports():
    import fastapi  # noqa: F401 - the import is the point: what a cold start has to pay for


@app.function(single_use_containers=True)
def handler(x: int) -> int:
    return x


@oci_app.function(single_use_containers=True)
def handler_oci(x: int) -> int:
    return x
