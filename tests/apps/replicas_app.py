"""Functions for tests with several control planes (replicas) on one database."""

import os
import time
from pathlib import Path

import shoal as modal

app = modal.App("replicas")


@app.function()
def square(x: int) -> int:
    return x * x


@app.function()
def slow_square(x: int, marker_dir: str) -> int:
    """Works ~20 ms, then leaves a file saying when it finished and through which control plane."""
    time.sleep(0.02)
    (Path(marker_dir) / f"{x}-{os.getpid()}").write_text(f"{time.time()} {os.environ.get('SHOAL_SERVER_URL')}")
    return x * x


@app.function()
def slow_echo(x: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"done {x}"
