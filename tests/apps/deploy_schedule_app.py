"""A deployed app whose schedule reports each run to a Queue."""

import time

import shoal as modal

app = modal.App("deploy-schedule")
fires = modal.Queue.from_name("deploy-schedule-fires", create_if_missing=True)


@app.function(schedule=modal.Period(seconds=2))
def tick() -> None:
    fires.put(time.time())
