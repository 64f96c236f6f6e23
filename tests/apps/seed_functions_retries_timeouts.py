"""Seed snippets: retries=3, modal.Retries(...), timeout= and startup_timeout= (near-verbatim)."""

import shoal as modal
from shoal import Retries

app = modal.App()


@app.function(retries=3)
def flaky_api_call():
    # This will retry up to 3 times on failure
    pass


@app.function(
    retries=Retries(
        max_retries=5,
        initial_delay=1.0,
        backoff_coefficient=2.0
    )
)
def resilient_function():
    pass


@app.function(timeout=300)  # 5 minutes
def long_running_task():
    pass


@app.function(
    timeout=600,        # Execution timeout
    startup_timeout=120  # Startup timeout
)
def slow_startup_function():
    pass


@app.function(timeout=30)   # Quick API calls
def api_call():
    pass


@app.function(timeout=3600)  # Long-running batch jobs
def batch_process():
    pass


with app.run():
    for f in (flaky_api_call, resilient_function, long_running_task, slow_startup_function, api_call,
              batch_process):
        print(f"{f.tag}: {f.remote()!r}")
