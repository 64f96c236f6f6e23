"""The functions bench/ray_backend.py runs on shoal's Ray backend (imported as `bench.ray_workloads` in
containers too: keep it cheap to import)."""

from __future__ import annotations

import os
import time

import shoal as modal

app = modal.App("bench-ray")


@app.function()
def noop(x):
    return x


@app.function(min_containers=3, max_containers=3, scaledown_window=5)
def work(x, seconds: float = 0.05):
    """A bit of work per input, on three containers: one per node with Ray's SPREAD placement."""
    time.sleep(seconds)
    return x, os.environ.get("SHOAL_NODE_ID")


# First results of never-run functions: cold_0 .. cold_2, the same body as distinct functions.
def _make_cold(i: int):
    def cold(x):
        return x

    cold.__name__ = cold.__qualname__ = f"cold_{i}"
    cold.__module__ = __name__
    return app.function()(cold)


for _i in range(3):
    globals()[f"cold_{_i}"] = _make_cold(_i)
