"""A function whose named secret does not exist."""

import shoal as modal

app = modal.App("secrets-missing")


@app.function(secrets=[modal.Secret.from_name("shoal-test-does-not-exist")])
def f() -> int:
    return 1
