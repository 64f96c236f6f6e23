"""Functions for crash and restart tests. Side effects go to files in a directory the test passes in."""

import os
import time
from pathlib import Path

import shoal as modal

app = modal.App("durable")


@app.function()
def crash_once(x: int, marker_dir: str) -> int:
    """Kills its own container the first time it sees input 7."""
    marker = Path(marker_dir) / "crashed"
    if x == 7 and not marker.exists():
        marker.write_text("1")
        os._exit(13)
    time.sleep(0.01)
    return x * 10


@app.function()
def record_pid(x: int, marker_dir: str) -> int:
    """Writes its container's pid, then works slowly enough to be killed mid-map."""
    (Path(marker_dir) / f"pid-{os.getpid()}").write_text(str(os.getpid()))
    time.sleep(0.05)
    return x + 1


@app.function()
def always_crash(x: int) -> int:
    os._exit(3)


@app.function()
def slow_echo(x: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"done {x}"
