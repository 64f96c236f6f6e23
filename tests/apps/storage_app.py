"""Functions that use Dicts and Queues passed in as arguments."""

import shoal as modal

app = modal.App("storage")


@app.function()
def dict_writer(d: modal.Dict, key: str, value: int) -> modal.Dict:
    d[key] = value
    return d


@app.function(max_containers=4)
def queue_taker(q: modal.Queue, timeout: float) -> int:
    return q.get(timeout=timeout)


@app.function()
def queue_feeder(q: modal.Queue, items: list) -> int:
    q.put_many(items)
    return q.len()
