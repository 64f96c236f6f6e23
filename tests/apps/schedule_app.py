"""Scheduled functions that report each run to a Queue."""

import time

import shoal as modal

app = modal.App("schedules")
runs = modal.Queue.from_name("schedule-test-runs", create_if_missing=True)


@app.function(schedule=modal.Period(seconds=1))
def every_second() -> None:
    runs.put(("tick", time.time()), partition="tick")


@app.function(schedule=modal.Period(seconds=1))
def slow_every_second() -> None:
    """Takes longer than its period: runs must not overlap."""
    runs.put(("start", time.time()), partition="slow")
    time.sleep(2.5)
    runs.put(("end", time.time()), partition="slow")
