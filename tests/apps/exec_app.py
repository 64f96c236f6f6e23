"""A function for tests/integration/test_exec_shell.py: its running containers are exec'd into, and `shoal shell`
opens a shell in a new container of it (its image, its secret)."""

import time

import shoal as modal

app = modal.App("exec-test")

SECRET_VALUE = "exec-secret-value"


@app.function(secrets=[modal.Secret.from_dict({"SOME_SECRET_ENV": SECRET_VALUE})])
def fn(seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return "slept"
