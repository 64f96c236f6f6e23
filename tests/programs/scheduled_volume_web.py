"""A scheduled function appends to a Volume; a web endpoint serves what the Volume holds.

    shoal run scheduled_volume_web.py
"""

import json
import time
import urllib.request
from datetime import datetime, timezone

import shoal as modal

image = modal.Image.debian_slim().pip_install("fastapi[standard]")
app = modal.App("program-scheduled-volume", image=image)
volume = modal.Volume.from_name("program-scheduled-volume", create_if_missing=True)


@app.function(schedule=modal.Period(seconds=1), volumes={"/data": volume})
def tick():
    with open("/data/ticks.log", "a") as f:
        f.write(datetime.now(timezone.utc).isoformat() + "\n")
    volume.commit()


@app.function(volumes={"/data": volume})
@modal.fastapi_endpoint()
def ticks():
    volume.reload()
    try:
        with open("/data/ticks.log") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    return {"count": len(lines), "last": lines[-1] if lines else None}


@app.local_entrypoint()
def main():
    url = ticks.get_web_url()
    with volume.batch_upload(force=True) as batch:  # start from an empty log
        batch.put_file(__import__("io").BytesIO(b""), "/ticks.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=60) as resp:
            got = json.loads(resp.read())
        if got["count"] >= 2:
            break
        time.sleep(0.5)
    print("ticks served", got["count"] >= 2, "timestamped", (got["last"] or "").endswith("+00:00"))
