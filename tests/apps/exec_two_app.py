"""Two functions: `shoal shell exec_two_app.py` must be told which one."""

import shoal as modal

app = modal.App("exec-two")


@app.function()
def first() -> None:
    pass


@app.function()
def second() -> None:
    pass
