"""Functions for the autoscaler tests (tests/integration/test_autoscaler.py)."""

import os
import time

import shoal as modal

app = modal.App("autoscale")


@app.function(max_containers=20, scaledown_window=2)
def slow(x: int) -> int:
    time.sleep(0.3)
    return x


@app.function(min_containers=2, scaledown_window=2)
def warm() -> int:
    return 1


@app.function(scaledown_window=2)
def tunable() -> int:
    return 1


@app.function(max_containers=3, scaledown_window=2)
def limited(x: int) -> int:
    time.sleep(0.2)
    return x


@app.function(scaledown_window=2)
def where(seconds: float) -> str:
    """Which container ran it (after sleeping)."""
    print(f"where: sleeping {seconds}s in {os.environ['SHOAL_CONTAINER_ID']}", flush=True)
    time.sleep(seconds)
    return os.environ["SHOAL_CONTAINER_ID"]
