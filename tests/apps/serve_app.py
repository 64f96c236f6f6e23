"""`shoal serve` test app: tests copy it to a temporary directory and rewrite `f`'s return value there."""

import shoal as modal

app = modal.App("serve-app")


@app.function()
def f() -> str:
    return "v1"
