"""A web endpoint fans out with .map and .starmap and answers with the results.

    shoal run map_in_web.py
"""

import json
import urllib.request

import shoal as modal

image = modal.Image.debian_slim().pip_install("fastapi[standard]")
app = modal.App("program-map-in-web", image=image)


@app.function()
def square(x: int) -> int:
    return x * x


@app.function()
def power(x: int, p: int) -> int:
    if p < 0:
        raise ValueError(f"negative power {p}")
    return x**p


@app.function()
@modal.fastapi_endpoint()
def table(n: int = 5):
    squares = list(square.map(range(n)))
    cubes = list(power.starmap([(x, 3) for x in range(n)]))
    errors = [type(r).__name__ for r in power.map([2, 2], [1, -1], return_exceptions=True)]
    return {"squares": squares, "cubes": cubes, "errors": errors}


@app.local_entrypoint()
def main():
    with urllib.request.urlopen(table.get_web_url() + "?n=6", timeout=120) as resp:
        got = json.loads(resp.read())
    print("squares", got["squares"])
    print("cubes", got["cubes"])
    print("errors", got["errors"])
