"""A Volume used across a control-plane kill (tests/integration/test_volumes.py)."""

import os
import time

import shoal as modal

app = modal.App("volume-restart")
vol = modal.Volume.from_name("volume-restart-data", create_if_missing=True)


@app.function(volumes={"/data": vol})
def write_commit(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(f"/data/{path}"), exist_ok=True)
    with open(f"/data/{path}", "w") as f:
        f.write(text)
    vol.commit()


@app.function(volumes={"/data": vol})
def hold_uncommitted(path: str, outbox: modal.Queue) -> None:
    """Writes without committing, then waits: the test kills the control plane meanwhile."""
    os.makedirs(os.path.dirname(f"/data/{path}"), exist_ok=True)
    with open(f"/data/{path}", "w") as f:
        f.write("left uncommitted")
    outbox.put("written")
    time.sleep(120)
