"""The functions under test.

Imported as `bench.workloads`: shoal ships the `bench` package's source to its containers, which import this
module again there, so every shoal function is at module level and the module is cheap to import.
"""

from __future__ import annotations

import shoal as modal

app = modal.App("bench")

N_COLD = 12  # never-run functions available to the cold-start section (one per repetition)


@app.function()
def noop(x):
    """(a) latency and (d) client memory."""
    return x


@app.function()
def map_noop(x):
    """(b) map throughput: its own function, so its first map includes starting containers from nothing."""
    return x


def plain_noop(x):
    """The same body for multiprocessing (which pickles it by reference) and for Ray."""
    return x


# (c) cold start: cold_0 .. cold_{N_COLD-1}, the same body as distinct functions, so each one's first call
# starts a container for a function that has never run.
def _make_cold(i: int):
    def cold(x):
        return x

    cold.__name__ = cold.__qualname__ = f"cold_{i}"
    cold.__module__ = __name__
    return app.function()(cold)


for _i in range(N_COLD):
    globals()[f"cold_{_i}"] = _make_cold(_i)
del _i


@app.function()
def container_pid() -> int:
    """The container's pid on the host (the sandbox keeps pids host-unique), for memory probes."""
    import os

    return os.getpid()
