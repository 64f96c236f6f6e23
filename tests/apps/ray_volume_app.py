"""A function that mounts a Volume: refused on the Ray backend (tests/integration/test_ray_backend.py)."""

import shoal as modal

app = modal.App("ray-volume")
vol = modal.Volume.from_name("ray-backend-vol", create_if_missing=True)


@app.function(volumes={"/data": vol})
def reads() -> list:
    import os

    return os.listdir("/data")
