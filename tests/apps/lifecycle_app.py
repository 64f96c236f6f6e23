"""Functions for container lifecycle tests."""

import os
import time

import shoal as modal

app = modal.App("lifecycle")


@app.function(scaledown_window=2)
def quick(x: int) -> int:
    return x + 1


@app.function()
def nested(x: int) -> int:
    """Calls another function of the same app from inside its container."""
    return quick.remote(x) * 10


@app.function(env={"GREETING": "hi"}, secrets=[modal.Secret.from_dict({"TOKEN": "s3cret"})])
def environment() -> dict:
    return dict(os.environ)


@app.function()
def sleeper(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function(single_use_containers=True)
def one_shot(x: int) -> int:
    return os.getpid()
