"""A module that imports fine here but fails inside containers."""

import shoal as modal

app = modal.App("broken")


@app.function()
def unreachable() -> int:
    return 1


if not modal.is_local():
    raise RuntimeError("broken at import in the container")
