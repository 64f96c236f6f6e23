"""The function of exec_app.py in an app of its own, for a second control plane (isolation=process) while
exec_app's app still runs on the first."""

import time

import shoal as modal

app = modal.App("exec-process-test")


@app.function(secrets=[modal.Secret.from_dict({"SOME_SECRET_ENV": "exec-secret-value"})])
def fn(seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return "slept"
