"""A deployed app whose schedule records each run (and the control plane that ran it) in a Dict."""

import os
import time

import shoal as modal

app = modal.App("replicas-schedule")
fires = modal.Dict.from_name("replicas-schedule-fires", create_if_missing=True)


@app.function(schedule=modal.Period(seconds=1))
def tick() -> None:
    fires[modal.current_function_call_id() or str(time.time())] = (time.time(), os.environ.get("SHOAL_SERVER_URL"))
