"""A spawned call fails and nobody calls `.get()`: its traceback is in the app's log all the same."""

import time

import shoal as modal
from shoal.call_graph import InputStatus

app = modal.App("spawn-fail")


@app.function()
def broken() -> None:
    raise RuntimeError("spawned and failed")


@app.local_entrypoint()
def main() -> None:
    call = broken.spawn()
    while (graph := call.get_call_graph())[0].status == InputStatus.PENDING:
        time.sleep(0.2)
    print("status", graph[0].status.name)
