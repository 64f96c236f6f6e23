"""A slow web endpoint for the 303-to-result-URL path (a control plane with a short request timeout); calls
are counted in a Dict."""

import time

import shoal as modal

app = modal.App("web-slow")

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function(image=image)
@modal.concurrent(max_inputs=10)
@modal.fastapi_endpoint()
def slow(seconds: float, counter: str, key: str = ""):
    if key:
        d = modal.Dict.from_name(counter)
        d.put(key, d.get(key, 0) + 1)
    time.sleep(seconds)
    return {"slept": seconds, "key": key}


@app.function(image=image, max_containers=1)
@modal.fastapi_endpoint()
def one_at_a_time(seconds: float, counter: str, key: str = ""):
    """One container taking one request at a time: a second request waits in the queue."""
    if key:
        d = modal.Dict.from_name(counter)
        d.put(key, d.get(key, 0) + 1)
    time.sleep(seconds)
    return {"slept": seconds, "key": key}
