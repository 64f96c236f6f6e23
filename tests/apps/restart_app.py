"""An app for control-plane restart tests."""

import time

import shoal as modal

app = modal.App("restart")


@app.function()
def slow_echo(x: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"done {x}"
