"""Three functions for a machine that holds two containers."""

import shoal as modal

app = modal.App("capacity")


@app.function()
def first() -> str:
    return "first"


@app.function()
def second() -> str:
    return "second"


@app.function()
def third() -> str:
    return "third"
