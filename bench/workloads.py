"""The shoal functions under test. Imported as `bench.workloads`: shoal ships this package's source to the
containers, which import it again there, so everything here is at module level and cheap to import."""

from __future__ import annotations

import shoal as modal

app = modal.App("bench")

N_COLD = 12  # distinct never-run functions available to the cold-start section


@app.function()
def noop(x):
    return x


def _cold(x):
    return x


# cold_0 .. cold_{N_COLD-1}: same body, distinct functions, so each gets its own pool and its first call
# starts a container from nothing.
for _i in range(N_COLD):
    _f = lambda x: x  # noqa: E731
    _f.__name__ = _f.__qualname__ = f"cold_{_i}"
    globals()[f"cold_{_i}"] = app.function()(_f)
del _i, _f
