"""A warm pool (min_containers=1) whose containers can never start: the autoscaler must back off and say why."""

import shoal as modal

app = modal.App("autoscale-broken")


@app.function(min_containers=1)
def never() -> int:
    return 1


if not modal.is_local():
    raise RuntimeError("autoscale_broken_app cannot start in a container")
