"""A scheduled function whose module cannot be imported in its containers (only there): the schedule must say it
is failing, not only print one line per container."""

import time

import shoal as modal

if not modal.is_local():
    raise RuntimeError("this module is broken inside containers")

app = modal.App("schedule-broken")


@app.function(schedule=modal.Period(seconds=1))
def tick() -> None:
    print("tick")


@app.local_entrypoint()
def main() -> None:
    time.sleep(10)  # the schedule fires within a second; its first run fails as soon as a container starts
