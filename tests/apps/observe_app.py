"""Functions for the observability tests (tests/integration/test_metrics.py, test_dashboard.py)."""

import time

import shoal as modal

app = modal.App("observe")


@app.function()
def square(x: int) -> int:
    return x * x


@app.function()
def fail_on_negative(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative input {x} refused")
    return x


@app.function(scaledown_window=600)  # (the dashboard test watches its container's log)
def say(line: str) -> str:
    print(line, flush=True)
    return line


@app.function()
def slow(x: float) -> float:
    time.sleep(x)
    return x
