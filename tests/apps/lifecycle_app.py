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


@app.function(max_containers=1)
@modal.concurrent(max_inputs=4)
def overlap(seconds: float) -> tuple:
    start = time.monotonic()
    time.sleep(seconds)
    return (os.getpid(), start, time.monotonic())


@app.function(max_containers=1)
@modal.concurrent(max_inputs=3)
async def overlap_async(seconds: float) -> tuple:
    import asyncio

    start = time.monotonic()
    await asyncio.sleep(seconds)
    return (os.getpid(), start, time.monotonic(), modal.current_input_id())


@app.function(max_containers=2)
@modal.concurrent(max_inputs=4)
def overlap_two(seconds: float) -> tuple:
    start = time.monotonic()
    time.sleep(seconds)
    return (os.environ["SHOAL_CONTAINER_ID"], start, time.monotonic())
