"""A detached scheduled app that survives a control-plane restart."""

import time

import shoal as modal

app = modal.App("schedules-restart")
fires = modal.Queue.from_name("schedule-restart-fires", create_if_missing=True)


@app.function(schedule=modal.Period(seconds=2))
def tick() -> None:
    fires.put(time.time())
